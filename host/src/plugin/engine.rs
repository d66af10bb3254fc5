//! The process's one wasmtime `Engine`: pooling allocator, copy-on-write memory images, epoch
//! interruption for time limits, and compiled components cached by content hash so that a
//! reload recompiles only modules that changed.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::host::{CallState, PluginWorld, PluginWorldPre};

/// One epoch tick: the granularity of plugin time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The largest linear memory a plugin may have, whatever its `memory_limit`.
pub const MAX_MEMORY: usize = 256 * 1024 * 1024;
/// Plugin instances (pooled or per request) alive at once, process-wide.
const MAX_INSTANCES: u32 = 2000;

pub struct PluginEngine {
    pub engine: Engine,
    linker: Linker<CallState>,
    /// Compiled components by SHA-256 of their bytes.
    compiled: Mutex<HashMap<[u8; 32], PluginWorldPre<CallState>>>,
}

impl PluginEngine {
    /// The engine, created (and its epoch ticker started) on first use: a gateway without
    /// plugins pays nothing for them.
    pub fn get() -> Result<&'static PluginEngine, String> {
        static ENGINE: OnceLock<Result<PluginEngine, String>> = OnceLock::new();
        ENGINE
            .get_or_init(PluginEngine::new)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn new() -> Result<PluginEngine, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 4)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 4)
            .max_memory_size(MAX_MEMORY);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(|err| format!("cannot start the WebAssembly engine: {err:#}"))?;
        let mut linker = Linker::new(&engine);
        add_wasi(&mut linker).map_err(|err| format!("cannot link WASI: {err:#}"))?;
        PluginWorld::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| format!("cannot link the plugin API: {err:#}"))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|err| format!("cannot start the plugin timer: {err}"))?;
        Ok(PluginEngine {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// Compiles (or finds in the cache) a plugin component and links it.
    pub fn load(&self, bytes: &[u8]) -> Result<PluginWorldPre<CallState>, String> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(pre) = self.compiled.lock().get(&hash) {
            return Ok(pre.clone());
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|err| format!("not a valid plugin component: {err:#}"))?;
        // WASI functions the gateway does not offer (streams, files, sockets) trap when called:
        // that fails the one request, never the gateway.
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|err| format!("cannot link the plugin: {err:#}"))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|err| {
            format!("the plugin needs imports the gateway does not offer: {err:#}")
        })?;
        let pre = PluginWorldPre::new(instance_pre).map_err(|err| {
            format!("the plugin does not export the wasmgate plugin world: {err:#}")
        })?;
        self.compiled.lock().insert(hash, pre.clone());
        Ok(pre)
    }
}

/// The part of WASI a plugin gets: clocks, random numbers, exit, and empty environment and
/// standard streams. Calls that would block (stream writes, polling) are left out on purpose:
/// plugins run on the gateway's worker threads and must not block them; they trap instead,
/// failing that one request. Plugins log through the plugin API.
fn add_wasi(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::WasiView;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    clocks::wall_clock::add_to_linker::<CallState, WasiClocks>(linker, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<CallState, WasiClocks>(linker, |t| t.clocks())?;
    random::random::add_to_linker::<CallState, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<CallState, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<CallState, WasiRandom>(linker, |t| {
        t.ctx().ctx.random()
    })?;
    cli::exit::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    cli::environment::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    cli::stdin::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    cli::stdout::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    cli::stderr::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    Ok(())
}

/// Ticks for a time limit (at least one).
pub fn ticks(limit: Duration) -> u64 {
    (limit.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}
