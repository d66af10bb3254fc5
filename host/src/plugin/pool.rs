//! Instances of one plugin module with one route's config.
//!
//! `isolation = "pooled"` (the default) keeps initialised instances and reuses them, one
//! request at a time each: a call into a warm instance costs about a microsecond, a fresh
//! instance tens. An instance that trapped is dropped, never reused. `isolation =
//! "per-request"` instantiates (and initialises) a fresh instance for every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::Store;

use super::deadline::NEXT_EPOCH;
use super::engine::PluginEngine;
use super::host::{
    CallState, Context, PluginWorld, PluginWorldPre, RequestInfo, RequestView, ResponseView,
};
use super::loan::{Borrowed, Message};
use super::{PluginFailure, PluginSpec};
use crate::config::Isolation;
use crate::telemetry::metrics::{Phase, PluginErrorKind, PluginMetrics, metrics};

/// Idle instances kept per pool; more concurrent requests instantiate extra ones.
const MAX_IDLE: usize = 64;
/// Time allowed for a plugin's `init` (config parsing), whatever its `time_limit`.
const INIT_TIME_LIMIT: Duration = Duration::from_secs(2);

/// The body capabilities a plugin declared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub request_body: bool,
    pub response_body: bool,
}

pub struct InstancePool {
    engine: &'static PluginEngine,
    pub spec: Arc<PluginSpec>,
    pre: PluginWorldPre<CallState>,
    config_json: String,
    pub needs: Needs,
    idle: Mutex<Vec<Instance>>,
    metrics: PluginMetrics,
}

struct Instance {
    store: Store<CallState>,
    world: PluginWorld,
}

/// What every plugin of a request's chain shares: the context values and the request's
/// identity, lent to each call (`loan.rs`).
pub struct Shared<'a> {
    pub ctx: &'a mut Context,
    pub info: Option<&'a RequestInfo>,
}

impl<'a> Shared<'a> {
    fn lend(self, message: Message<'a>) -> Borrowed<'a> {
        Borrowed {
            message,
            ctx: self.ctx,
            info: self.info,
        }
    }
}

/// With `isolation = "per-request"`, the request's own instance, kept from `on-request` to
/// `on-response` so that the plugin sees one request in one instance.
#[derive(Default)]
pub struct Held(Option<Instance>);

impl InstancePool {
    /// Creates the pool and its first instance, running the plugin's `init` with `config_json`:
    /// a plugin that rejects its config fails here (and so `check` and reloads report it).
    pub fn new(
        spec: Arc<PluginSpec>,
        pre: PluginWorldPre<CallState>,
        config_json: String,
    ) -> Result<Self, String> {
        let mut pool = InstancePool {
            engine: PluginEngine::get()?,
            metrics: metrics().plugin(&spec.name),
            spec,
            pre,
            config_json,
            needs: Needs::default(),
            idle: Mutex::new(Vec::new()),
        };
        let (instance, needs) = pool.instantiate().map_err(|failure| failure.message)?;
        pool.needs = needs;
        if pool.spec.isolation == Isolation::Pooled {
            pool.idle.lock().push(instance);
        }
        Ok(pool)
    }

    fn instantiate(&self) -> Result<(Instance, Needs), PluginFailure> {
        let mut store = Store::new(
            &self.engine.engine,
            CallState::new(self.spec.name.clone(), self.spec.memory_limit),
        );
        store.limiter(CallState::limiter);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().deadline.on_expiry()));
        let due = store
            .data_mut()
            .deadline
            .begin(INIT_TIME_LIMIT, Instant::now());
        store.set_epoch_deadline(NEXT_EPOCH);
        let _watched = self.engine.watch(due, INIT_TIME_LIMIT);
        let world = match self.pre.instantiate(&mut store) {
            Ok(world) => world,
            Err(err) => return Err(self.trap_failure("instantiation failed", &err, &mut store)),
        };
        let capabilities = match world
            .wasmgate_plugin_handler()
            .call_init(&mut store, &self.config_json)
        {
            Ok(Ok(capabilities)) => capabilities,
            Ok(Err(message)) => {
                return Err(self.failure(
                    PluginErrorKind::trap,
                    format!("plugin `{}` rejected its config: {message}", self.spec.name),
                ));
            }
            Err(err) => return Err(self.trap_failure("init failed", &err, &mut store)),
        };
        let needs = Needs {
            request_body: capabilities.request_body,
            response_body: capabilities.response_body,
        };
        Ok((Instance { store, world }, needs))
    }

    /// An idle instance, or a new one; with the time the call may count from (the new
    /// instance's `init` does not count against the call's time limit).
    fn checkout(&self, started: Instant) -> Result<(Instance, Instant), PluginFailure> {
        if self.spec.isolation == Isolation::Pooled
            && let Some(instance) = self.idle.lock().pop()
        {
            return Ok((instance, started));
        }
        self.instantiate()
            .map(|(instance, _)| (instance, Instant::now()))
            .map_err(|failure| PluginFailure {
                kind: PluginErrorKind::instantiate,
                ..failure
            })
    }

    fn checkin(&self, instance: Instance) {
        if self.spec.isolation == Isolation::Pooled {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(instance);
            }
        }
    }

    /// Runs `on-request`; a plugin that answers leaves its reply in `view.reply`. The view
    /// and context are lent to the store for the call only; a trapped instance is dropped.
    pub fn on_request(
        &self,
        view: &mut RequestView,
        shared: Shared<'_>,
        held: &mut Held,
    ) -> Result<(), PluginFailure> {
        let started = Instant::now();
        let result = self.run_on_request(view, shared, held, started);
        self.count(Phase::on_request, started, &result);
        result
    }

    fn run_on_request(
        &self,
        view: &mut RequestView,
        shared: Shared<'_>,
        held: &mut Held,
        started: Instant,
    ) -> Result<(), PluginFailure> {
        let (instance, began) = self.checkout(started)?;
        let ((), instance) = self.call(
            instance,
            began,
            "on-request",
            shared.lend(Message::Request(view)),
            |instance| {
                instance
                    .world
                    .wasmgate_plugin_handler()
                    .call_on_request(&mut instance.store)
            },
        )?;
        match self.spec.isolation {
            Isolation::PerRequest => held.0 = Some(instance),
            Isolation::Pooled => self.checkin(instance),
        }
        Ok(())
    }

    /// Runs `on-response`, like [`InstancePool::on_request`], in the request's own instance
    /// when it has one.
    pub fn on_response(
        &self,
        view: &mut ResponseView,
        shared: Shared<'_>,
        held: &mut Held,
    ) -> Result<(), PluginFailure> {
        let started = Instant::now();
        let result = self.run_on_response(view, shared, held, started);
        self.count(Phase::on_response, started, &result);
        result
    }

    fn run_on_response(
        &self,
        view: &mut ResponseView,
        shared: Shared<'_>,
        held: &mut Held,
        started: Instant,
    ) -> Result<(), PluginFailure> {
        let (instance, began) = match held.0.take() {
            Some(instance) => (instance, started),
            None => self.checkout(started)?,
        };
        let ((), instance) = self.call(
            instance,
            began,
            "on-response",
            shared.lend(Message::Response(view)),
            |instance| {
                instance
                    .world
                    .wasmgate_plugin_handler()
                    .call_on_response(&mut instance.store)
            },
        )?;
        self.checkin(instance);
        Ok(())
    }

    /// One call into an instance: lend it what the call borrows, and run `invoke` within the
    /// time limit, counted from `began`. The instance comes back only if the call did not
    /// trap; a trapped one is dropped.
    fn call<R>(
        &self,
        mut instance: Instance,
        began: Instant,
        what: &str,
        borrowed: Borrowed<'_>,
        invoke: impl FnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<(R, Instance), PluginFailure> {
        let state = instance.store.data_mut();
        // SAFETY: the loan ends below, before this function returns and so before the borrows
        // do, and nothing here touches the borrowed data meanwhile. If `invoke` unwinds, the
        // instance, which this function owns, is dropped with the loan unused.
        unsafe { state.begin_call(borrowed) };
        let due = state.deadline.begin(self.spec.time_limit, began);
        instance.store.set_epoch_deadline(NEXT_EPOCH);
        let result = {
            let _watched = self.engine.watch(due, self.spec.time_limit);
            invoke(&mut instance)
        };
        instance.store.data_mut().end_call();
        match result {
            Ok(value) => Ok((value, instance)),
            Err(err) => {
                Err(self.trap_failure(&format!("{what} failed"), &err, &mut instance.store))
            }
        }
    }

    /// Counts a call, its time, and its failure if it failed.
    fn count<T>(&self, phase: Phase, started: Instant, result: &Result<T, PluginFailure>) {
        self.metrics.call_done(phase, started.elapsed());
        if let Err(failure) = result {
            self.metrics.failed(failure.kind);
        }
    }

    fn failure(&self, kind: PluginErrorKind, message: String) -> PluginFailure {
        PluginFailure {
            plugin: self.spec.name.clone(),
            kind,
            message,
        }
    }

    /// Names the usual causes of a trap so that logs and metrics say what went wrong.
    fn trap_failure(
        &self,
        what: &str,
        err: &wasmtime::Error,
        store: &mut Store<CallState>,
    ) -> PluginFailure {
        let (kind, cause) = match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => (
                PluginErrorKind::time_limit,
                format!("exceeded its time limit of {:?}", self.spec.time_limit),
            ),
            // A Rust plugin refused memory aborts, whatever trap that becomes.
            _ if store.data_mut().take_memory_refused() => (
                PluginErrorKind::memory_limit,
                format!(
                    "exceeded its memory limit of {} bytes ({})",
                    self.spec.memory_limit,
                    err.root_cause()
                ),
            ),
            Some(wasmtime::Trap::UnreachableCodeReached) => (
                PluginErrorKind::trap,
                "trapped (a panic or abort in the plugin)".to_owned(),
            ),
            Some(trap) => (PluginErrorKind::trap, format!("trapped: {trap}")),
            // Not a wasm trap: a host call refused (a WASI function plugins do not get, say).
            None => (PluginErrorKind::trap, err.root_cause().to_string()),
        };
        self.failure(kind, format!("plugin `{}` {what}: {cause}", self.spec.name))
    }
}
