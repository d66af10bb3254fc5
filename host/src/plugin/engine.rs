//! The process's one wasmtime `Engine`: pooling allocator, copy-on-write memory images, epoch
//! interruption for time limits (driven by `watchdog.rs`), and compiled components cached by
//! content hash so that a reload recompiles only modules that changed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::compile::{self, Origin};
use super::host::{self, CallState, PluginWorld, PluginWorldPre};
use super::watchdog::{Watchdog, Watched, now_nanos};

/// The largest linear memory a plugin may have, whatever its `memory_limit`.
pub const MAX_MEMORY: usize = 256 * 1024 * 1024;
/// Compiled modules remembered for reuse across reloads.
const MAX_CACHED_MODULES: usize = 64;
/// Plugin instances (pooled or per request) alive at once, process-wide.
const MAX_INSTANCES: u32 = 2000;
/// Dirty linear-memory bytes of a dropped instance that are reset in place (copied back from
/// the module's image) rather than given back to the kernel. A Rust plugin dirties a handful
/// of pages per request (its stack top, statics, a few heap pages), so this covers it whole.
const MEMORY_KEEP_RESIDENT: usize = 2 * 1024 * 1024;
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;

pub struct PluginEngine {
    pub engine: Engine,
    linker: Linker<CallState>,
    /// Compiled components by SHA-256 of their bytes.
    compiled: Mutex<HashMap<[u8; 32], PluginWorldPre<CallState>>>,
    watchdog: Arc<Watchdog>,
}

/// The settings that decide what compiled code looks like and whether it loads: the gateway's
/// engine adds its instance allocator to these, and the compile process
/// (`wasmgate __compile-plugin`) uses them as they are, so that what one compiles the other
/// loads (their `Engine::precompile_compatibility_hash` agree: a unit test in `compile.rs`
/// checks it).
pub(super) fn compile_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true);
    config
}

impl PluginEngine {
    /// The engine, created (and its watchdog started) on first use: a gateway without
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
            .max_memory_size(MAX_MEMORY)
            // Per-request isolation drops an instance per request. By default its pages go back
            // to the kernel (`madvise`), and the next instance in the slot faults them in again:
            // most of that mode's cost. With Linux's PAGEMAP_SCAN (6.7+) wasmtime finds the
            // pages the instance actually wrote and restores just those in place. Without it,
            // keep-resident would `memset` the whole prefix, slower than the faults (measured:
            // see docs/benchmarks.md), so it is only turned on together with the scan.
            .pagemap_scan(Enabled::Auto);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
                .table_keep_resident(TABLE_KEEP_RESIDENT);
        }
        let mut config = compile_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(|err| format!("cannot start the WebAssembly engine: {err:#}"))?;
        let mut linker = Linker::new(&engine);
        add_wasi(&mut linker).map_err(|err| format!("cannot link WASI: {err:#}"))?;
        PluginWorld::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| format!("cannot link the plugin API: {err:#}"))?;
        let watchdog = Watchdog::start(&engine)?;
        Ok(PluginEngine {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            watchdog,
        })
    }

    /// Marks plugin code running on this thread (a call or an instantiation), due at
    /// `deadline` (`watchdog::now_nanos`) with a time limit of `limit`, until the guard is
    /// dropped: the watchdog stops it if it runs past.
    pub fn watch(&self, deadline: u64, limit: Duration) -> Watched {
        self.watchdog.watch(deadline, limit)
    }

    /// Compiles (or finds in the caches, in memory or on disk) a plugin component and links
    /// it; `None` for the origin when it was already loaded in this process.
    pub fn load(
        &self,
        bytes: &[u8],
    ) -> Result<(PluginWorldPre<CallState>, Option<Origin>), String> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(pre) = self.compiled.lock().get(&hash) {
            return Ok((pre.clone(), None));
        }
        let (component, origin) = compile::load_component(&self.engine, &hash, bytes)?;
        check_world_version(&self.engine, &component)?;
        // WASI functions the gateway does not offer (streams, files, sockets) trap when called:
        // that fails the one request, never the gateway.
        let mut linker = self.linker.clone();
        stub_unavailable(&mut linker, &self.engine, &component)
            .map_err(|err| format!("cannot link the plugin: {err:#}"))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|err| {
            format!("the plugin needs imports the gateway does not offer: {err:#}")
        })?;
        let pre = PluginWorldPre::new(instance_pre).map_err(|err| {
            format!("the plugin does not export the wasmgate plugin world: {err:#}")
        })?;
        let mut compiled = self.compiled.lock();
        if compiled.len() >= MAX_CACHED_MODULES {
            // Modules still in use stay alive through the snapshots that hold them; the cache
            // only saves recompiling, so forgetting some is harmless.
            compiled.clear();
        }
        compiled.insert(hash, pre.clone());
        Ok((pre, Some(origin)))
    }
}

/// WASI interfaces plugins get for real (version-independent names). Everything else a
/// component imports is stubbed by [`stub_unavailable`], which also serves the monotonic
/// clock's readings.
const PROVIDED: &[&str] = &[
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasmgate:plugin/request",
    "wasmgate:plugin/response",
    "wasmgate:plugin/host",
];

/// The part of WASI a plugin gets: wall and monotonic clocks, random numbers, an empty
/// environment, and exit. No files, no network, no standard streams: those calls would
/// block a worker thread (and wasmtime-wasi's blocking calls cannot run on one), so they trap
/// instead, failing that one request. Plugins log through the plugin API.
fn add_wasi(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::WasiView;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    clocks::wall_clock::add_to_linker::<CallState, WasiClocks>(linker, |t| t.clocks())?;
    random::random::add_to_linker::<CallState, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<CallState, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<CallState, WasiRandom>(linker, |t| {
        t.ctx().ctx.random()
    })?;
    cli::exit::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    cli::environment::add_to_linker::<CallState, WasiCli>(linker, |t| t.cli())?;
    Ok(())
}

/// Refuses a plugin built against another version of the plugin world, with a message that
/// says so, rather than leaving it to a failing link (or, worse, to traps at run time).
fn check_world_version(engine: &Engine, component: &Component) -> Result<(), String> {
    for (import, _) in component.component_type().imports(engine) {
        if let Some(theirs) = foreign_world_version(import) {
            return Err(format!(
                "the plugin was built for wasmgate:plugin@{theirs}, this gateway runs \
                 wasmgate:plugin@{}: rebuild it with this version's wasmgate-sdk",
                host::WORLD_VERSION
            ));
        }
    }
    Ok(())
}

/// The version of the plugin world an import belongs to, when it is not this gateway's.
fn foreign_world_version(import: &str) -> Option<&str> {
    let interface = import.strip_prefix("wasmgate:plugin/")?;
    match interface.split_once('@') {
        Some((_, version)) if version == host::WORLD_VERSION => None,
        Some((_, version)) => Some(version),
        None => Some("(no version)"),
    }
}

/// Defines every import of `component` that the gateway does not provide as a function that
/// traps (and resources that cannot be created). wasmtime's own
/// `define_unknown_imports_as_traps` would also shadow provided interfaces whose version
/// differs from the one the plugin was built against (0.2.6 vs 0.2.12), so this skips
/// provided interfaces by name, whatever their version.
fn stub_unavailable(
    linker: &mut Linker<CallState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    use wasmtime::component::{ResourceType, Val};

    struct Unavailable;

    for (import, item) in component.component_type().imports(engine) {
        let unversioned = import.split('@').next().unwrap_or(import);
        if PROVIDED.contains(&unversioned) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut defined = linker.instance(import)?;
        for (name, export) in instance.exports(engine) {
            match export.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{import}#{name}");
                    let monotonic = unversioned == "wasi:clocks/monotonic-clock";
                    defined.func_new(name, move |_, _, _, results: &mut [Val]| {
                        // The monotonic clock's `now` and `resolution` are real; waiting on it
                        // (`subscribe-*`) is not offered.
                        if monotonic && what.ends_with("#now") {
                            results[0] = Val::U64(now_nanos());
                            return Ok(());
                        }
                        if monotonic && what.ends_with("#resolution") {
                            results[0] = Val::U64(1);
                            return Ok(());
                        }
                        wasmtime::bail!("`{what}` is not available to plugins")
                    })?;
                }
                ComponentItem::Resource(_) => {
                    defined.resource(name, ResourceType::host::<Unavailable>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Compiling a component allocates and frees tens of MiB on wasmtime's compile threads
/// (rayon's global pool), and mimalloc keeps the freed pages in each thread's own heap until
/// that thread allocates again, which an idle compile thread never does: ask each of them,
/// and this thread, to give them back. (Only when the gateway compiles in its own process.)
pub(super) fn release_compiler_memory() {
    // Links mimalloc into every binary of this crate (the gateway's allocator is set in the
    // binary; unit tests run on the system allocator, where this call frees nothing).
    extern crate mimalloc as _;
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mimalloc's `mi_collect` only returns the calling thread's free memory.
    rayon::broadcast(|_| unsafe { mi_collect(true) });
    // SAFETY: as above.
    unsafe { mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_of_another_world_version_are_told_apart() {
        assert_eq!(
            foreign_world_version("wasmgate:plugin/http@0.1.0"),
            Some("0.1.0")
        );
        assert_eq!(
            foreign_world_version("wasmgate:plugin/request"),
            Some("(no version)")
        );
        let ours = format!("wasmgate:plugin/request@{}", host::WORLD_VERSION);
        assert_eq!(foreign_world_version(&ours), None);
        assert_eq!(foreign_world_version("wasi:random/random@0.2.6"), None);
    }
}
