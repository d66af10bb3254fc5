//! The real `wasmgate` binary, started with a config written to a temporary folder.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const BINARY: &str = env!("CARGO_BIN_EXE_wasmgate");
/// Where the gateway keeps compiled plugins (`docs/config.md`).
pub const PLUGIN_CACHE_ENV: &str = "WASMGATE_PLUGIN_CACHE";

/// The compiled-plugin cache the tests' gateways share (in the target directory, not the
/// user's `~/.cache`), so that a plugin is compiled once per build.
pub fn plugin_cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Lines of a child's output, collected by a thread.
fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().push(line);
        }
    });
    lines
}

impl GatewayProcess {
    /// Writes `config` as gateway.toml in a new temporary folder and runs the gateway on it.
    pub fn start(config: &str) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> GatewayProcess {
        Self::start_with_env(dir, config, &[])
    }

    /// Like [`GatewayProcess::start_in`], with more environment variables.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &Path)],
    ) -> GatewayProcess {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&path)
            .env("WASMGATE_LOG", "info")
            .env(PLUGIN_CACHE_ENV, plugin_cache())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        let expects_tls = config.contains("[server.tls]");
        loop {
            let (plain, tls) = listening(&stderr.lock());
            if let Some(addr) = plain
                && (!expects_tls || tls.is_some())
            {
                return GatewayProcess {
                    child,
                    addr,
                    tls_addr: tls,
                    dir,
                    stdout,
                    stderr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "gateway exited with {status} before listening:\n{}",
                    stderr.lock().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                stderr.lock().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The admin API's address (from the "admin API on" log line), once it is listening.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.stderr.lock().iter().find_map(|line| {
                let at = line.find("admin API on http://")?;
                line[at + "admin API on http://".len()..]
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no admin listener:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// Replaces a file the way editors do: write a new file, rename it over the old one.
    pub fn replace_file(&self, name: &str, contents: &[u8]) {
        let path = self.dir.path().join(name);
        let temporary = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&temporary, contents).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().join("\n")
    }

    /// Waits until the gateway has logged `n` applied reloads in all.
    pub fn wait_for_reloads(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stderr().matches("reloaded").count() < n {
            assert!(Instant::now() < deadline, "no reload: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Access-log lines (JSON) written so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until the access log has at least `n` entries.
    pub fn wait_access_log(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.access_log();
            if log.len() >= n || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(lines: &[String]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let find = |prefix: &str| {
        lines.iter().find_map(|line| {
            let at = line.find(prefix)?;
            line[at + prefix.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    (find("listening on http://"), find("listening on https://"))
}

/// Runs `wasmgate check -c path`; returns (success, stdout, stderr).
pub fn check(path: &Path) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(path)
        .env(PLUGIN_CACHE_ENV, plugin_cache())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
