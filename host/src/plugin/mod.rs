//! WebAssembly plugins: per-route request and response policies, sandboxed.
//!
//! [`engine`] owns the one wasmtime engine and the compiled-module cache; [`compile`] compiles
//! modules in a separate process and keeps the results on disk; [`host`] is the
//! gateway's side of the plugin world (what a plugin may call); [`pool`] keeps instances of
//! one module with one route's config. A route's [`PluginChain`] runs `on-request` in order and
//! `on-response` in reverse. Everything a plugin can do to a request goes through this module,
//! so a second ABI (proxy-wasm) could sit beside it later.

mod compile;
mod config;
mod deadline;
mod engine;
mod host;
mod loan;
mod pool;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use compile::{
    CACHE_ENV as PLUGIN_CACHE_ENV, SUBCOMMAND as COMPILE_SUBCOMMAND, compile_process_main,
    set_compiler,
};
pub use config::resolve_config;
pub use host::reserved as reserved_header;
pub use host::{Context, Reply, RequestInfo, RequestView, ResponseView};
use pool::{InstancePool, Shared};

use crate::config::{Diagnostics, Isolation, OnError, PluginConfig, Size, Spanned};
use crate::telemetry::metrics::PluginErrorKind;

/// Default `memory_limit`.
const DEFAULT_MEMORY_LIMIT: Size = Size::mib(16);
/// Default `time_limit`, per call.
const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(5);

/// A `[plugins.NAME]` entry, loaded and compiled.
pub struct PluginSpec {
    pub name: Arc<str>,
    pub memory_limit: usize,
    pub time_limit: Duration,
    pub on_error: OnError,
    pub isolation: Isolation,
}

/// A plugin that failed (trap, time limit, memory limit, rejected config).
#[derive(Debug, Clone)]
pub struct PluginFailure {
    pub plugin: Arc<str>,
    pub kind: PluginErrorKind,
    pub message: String,
}

/// The compiled plugins of one config, by name.
pub type Plugins = BTreeMap<String, (Arc<PluginSpec>, host::PluginWorldPre<host::CallState>)>;

/// Compiles every `[plugins.NAME]` (cached by content, so unchanged modules are not compiled
/// again on reload), reporting problems to `diagnostics`.
pub fn load_plugins(
    configs: &BTreeMap<String, Spanned<PluginConfig>>,
    diagnostics: &mut Diagnostics,
) -> Plugins {
    let mut plugins = Plugins::new();
    for (name, config) in configs {
        let span = config.span();
        let config = config.get_ref();
        let path = diagnostics.input(config.path.get_ref());
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => {
                diagnostics.error(
                    config.path.span(),
                    format!("plugins.{name}: cannot read {}: {err}", path.display()),
                );
                continue;
            }
        };
        let engine = match engine::PluginEngine::get() {
            Ok(engine) => engine,
            Err(message) => {
                diagnostics.error(span, message);
                continue;
            }
        };
        let started = std::time::Instant::now();
        let pre = match engine.load(&bytes) {
            Ok((pre, origin)) => {
                log_origin(name, origin, started.elapsed());
                pre
            }
            Err(message) => {
                diagnostics.error(
                    config.path.span(),
                    format!("plugins.{name}: {}: {message}", path.display()),
                );
                continue;
            }
        };
        let memory_limit = config
            .memory_limit
            .unwrap_or(DEFAULT_MEMORY_LIMIT)
            .as_usize();
        if memory_limit > engine::MAX_MEMORY {
            diagnostics.error(
                span.clone(),
                format!(
                    "plugins.{name}.memory_limit: at most {} MiB",
                    engine::MAX_MEMORY >> 20
                ),
            );
        }
        let spec = PluginSpec {
            name: Arc::from(name.as_str()),
            memory_limit: memory_limit.min(engine::MAX_MEMORY),
            time_limit: config.time_limit.map_or(DEFAULT_TIME_LIMIT, |t| t.get()),
            on_error: config.on_error,
            isolation: config.isolation,
        };
        plugins.insert(name.clone(), (Arc::new(spec), pre));
    }
    plugins
}

/// Says where a plugin module came from when it was not in memory already.
fn log_origin(name: &str, origin: Option<compile::Origin>, took: Duration) {
    let millis = took.as_millis();
    match origin {
        None => {}
        Some(compile::Origin::DiskCache) => {
            tracing::info!("plugin {name}: loaded from the compile cache in {millis} ms")
        }
        Some(compile::Origin::CompileProcess) => {
            tracing::info!("plugin {name}: compiled in {millis} ms (in a compile process)")
        }
        Some(compile::Origin::InProcess) => {
            tracing::info!("plugin {name}: compiled in {millis} ms (in the gateway's process)")
        }
    }
}

/// One plugin in a route's chain: the module with this route's config.
pub struct ChainLink {
    pool: InstancePool,
}

/// A route's plugins, in order.
#[derive(Default)]
pub struct PluginChain {
    links: Vec<ChainLink>,
    request_body: bool,
    response_body: bool,
    /// Some plugin has `isolation = "per-request"`: a request holds its instances.
    holds_instances: bool,
}

/// One request's passage through a chain: the request's identity, and per-request instances
/// between the request and the response phase. A route without plugins uses the default.
#[derive(Default)]
pub struct ChainCall {
    /// By link; empty (no allocation) when no plugin of the chain holds instances.
    held: Vec<pool::Held>,
    info: Option<RequestInfo>,
}

/// How the request phase ended.
pub enum RequestOutcome {
    /// Every plugin let the request through.
    Continue,
    /// Plugin number `ran - 1` answered; plugins `0..ran` get `on-response`.
    Respond { reply: Reply, ran: usize },
}

impl ChainCall {
    /// The request as the client sent it, before the plugins changed it.
    pub fn info(&self) -> Option<&RequestInfo> {
        self.info.as_ref()
    }
}

impl PluginChain {
    /// Instantiates each plugin with its config (running `init`, which may reject it).
    pub fn build(
        uses: Vec<(
            Arc<PluginSpec>,
            host::PluginWorldPre<host::CallState>,
            String,
        )>,
    ) -> Result<Self, (usize, String)> {
        let mut chain = PluginChain::default();
        for (index, (spec, pre, config_json)) in uses.into_iter().enumerate() {
            let pool =
                InstancePool::new(spec, pre, config_json).map_err(|message| (index, message))?;
            chain.request_body |= pool.needs.request_body;
            chain.response_body |= pool.needs.response_body;
            chain.holds_instances |= pool.spec.isolation == Isolation::PerRequest;
            chain.links.push(ChainLink { pool });
        }
        Ok(chain)
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Starts a request's passage through the chain.
    pub fn begin(&self, info: RequestInfo) -> ChainCall {
        ChainCall {
            held: if self.holds_instances {
                self.links.iter().map(|_| pool::Held::default()).collect()
            } else {
                Vec::new()
            },
            info: Some(info),
        }
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Some plugin reads or replaces the request body: it must be buffered.
    pub fn needs_request_body(&self) -> bool {
        self.request_body
    }

    pub fn needs_response_body(&self) -> bool {
        self.response_body
    }

    /// Runs `on-request` of each plugin in order. A failing plugin with `on_error = "allow"`
    /// is skipped (and logged); with `"deny"` its failure ends the request.
    pub fn on_request(
        &self,
        call: &mut ChainCall,
        view: &mut RequestView,
        ctx: &mut Context,
    ) -> Result<RequestOutcome, PluginFailure> {
        for (index, link) in self.links.iter().enumerate() {
            let mut none = pool::Held::default();
            let held = call.held.get_mut(index).unwrap_or(&mut none);
            view.body_visible = link.pool.needs.request_body;
            let shared = Shared {
                ctx,
                info: call.info.as_ref(),
            };
            let result = link.pool.on_request(view, shared, held);
            // A reply stands only from a call that succeeded.
            let reply = view.reply.take();
            match result {
                Ok(()) => {
                    if let Some(reply) = reply {
                        return Ok(RequestOutcome::Respond {
                            reply,
                            ran: index + 1,
                        });
                    }
                }
                Err(failure) => link.failed(failure)?,
            }
        }
        Ok(RequestOutcome::Continue)
    }

    /// Runs `on-response` of the first `ran` plugins, in reverse order.
    pub fn on_response(
        &self,
        call: &mut ChainCall,
        ran: usize,
        view: &mut ResponseView,
        ctx: &mut Context,
    ) -> Result<(), PluginFailure> {
        let ran = ran.min(self.links.len());
        for (index, link) in self.links[..ran].iter().enumerate().rev() {
            let mut none = pool::Held::default();
            let held = call.held.get_mut(index).unwrap_or(&mut none);
            view.body_visible = link.pool.needs.response_body;
            let shared = Shared {
                ctx,
                info: call.info.as_ref(),
            };
            if let Err(failure) = link.pool.on_response(view, shared, held) {
                link.failed(failure)?;
            }
        }
        Ok(())
    }
}

impl ChainLink {
    fn failed(&self, failure: PluginFailure) -> Result<(), PluginFailure> {
        match self.pool.spec.on_error {
            OnError::Allow => {
                tracing::warn!(plugin = %failure.plugin, "skipped (on_error = \"allow\"): {}", failure.message);
                Ok(())
            }
            OnError::Deny => Err(failure),
        }
    }
}
