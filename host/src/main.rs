//! The `wasmgate` command: `run`, `check` and `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The global allocator (mimalloc) and its memory-saving defaults.
mod alloc;

use wasmgate::config::{self, LoadedConfig};
use wasmgate::error::ConfigErrors;
use wasmgate::gateway::{self, Gateway};
use wasmgate::snapshot::Snapshot;

#[derive(Parser)]
#[command(name = "wasmgate", version, about = "A programmable API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file; SIGHUP reloads it, SIGTERM drains and exits.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file: every problem as `file:line:col: message`; exit 1 if any.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run on an embedded config with two in-process demo upstreams.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Compiles one plugin (the wasm on standard input) for the gateway, which runs this
    /// itself: see `plugin::compile`.
    #[command(name = wasmgate::plugin::COMPILE_SUBCOMMAND, hide = true)]
    CompilePlugin {
        #[arg(long)]
        out: PathBuf,
        /// The gateway's engine compatibility hash, which this binary's must equal.
        #[arg(long)]
        engine: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::CompilePlugin { .. }) {
        set_compiler();
    }
    match cli.command {
        Command::CompilePlugin { out, engine } => {
            wasmgate::plugin::compile_process_main(&out, &engine)
        }
        Command::Check { config } => check(&config),
        Command::Run { config } => match config::load_file(&config) {
            Ok(loaded) => run(loaded, Some(config)),
            Err(errors) => print_errors(&ConfigErrors(errors)),
        },
        Command::Demo { listen } => demo(&listen),
    }
}

/// Plugins are compiled by this binary run again (`wasmgate __compile-plugin`), so that the
/// compiler's code and memory stay out of the gateway's process. `/proc/self/exe` is this very
/// binary even after an upgrade replaced or removed its file; `current_exe()` elsewhere.
fn set_compiler() {
    let exe = PathBuf::from("/proc/self/exe");
    let exe = if exe.exists() {
        exe
    } else {
        match std::env::current_exe() {
            Ok(exe) => exe,
            // Plugins are then compiled in this process.
            Err(_) => return,
        }
    };
    wasmgate::plugin::set_compiler(exe);
}

fn print_errors(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::FAILURE
}

fn check(path: &std::path::Path) -> ExitCode {
    wasmgate::telemetry::init_diagnostics("warn");
    let loaded = match config::load_file(path) {
        Ok(loaded) => loaded,
        Err(errors) => return print_errors(&ConfigErrors(errors)),
    };
    // The same build as `run` (plugins compiled, their init run), without sockets.
    match Snapshot::build(&loaded, None) {
        Ok(snapshot) => {
            println!(
                "{}: ok ({} routes, {} upstreams)",
                path.display(),
                snapshot.router.len(),
                snapshot.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => print_errors(&errors),
    }
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker: a single-threaded runtime does the same work without the work-stealing
    // scheduler's synchronisation.
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().thread_name("wasmgate-worker").build()
}

fn run(loaded: LoadedConfig, path: Option<PathBuf>) -> ExitCode {
    let _log_guard = wasmgate::telemetry::init();
    let runtime = match runtime(loaded.config.server.workers) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Built before the runtime runs anything: compiling plugins blocks.
    let snapshot = match Snapshot::build(&loaded, None) {
        Ok(snapshot) => snapshot,
        Err(errors) => return print_errors(&errors),
    };
    runtime.block_on(async move {
        let mut gateway = match Gateway::bind(snapshot).await {
            Ok(gateway) => gateway,
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = path {
            gateway.reload_from(path);
        }
        gateway.serve(gateway::shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn demo(listen: &str) -> ExitCode {
    let _log_guard = wasmgate::telemetry::init();
    let runtime = match runtime(None) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let demo = match wasmgate::demo::start(listen).await {
            Ok(demo) => demo,
            Err(err) => {
                eprintln!("cannot start the demo: {err}");
                return ExitCode::FAILURE;
            }
        };
        let snapshot = match Snapshot::build(&demo.config, None) {
            Ok(snapshot) => snapshot,
            Err(errors) => return print_errors(&errors),
        };
        let gateway = match Gateway::bind(snapshot).await {
            Ok(gateway) => gateway,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        };
        let (plain, _) = gateway.addresses();
        if let Some(addr) = plain.first() {
            println!("{}", wasmgate::demo::instructions(*addr));
        }
        gateway.serve(gateway::shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}
