//! A real single-member `etcd` per test, on free loopback ports, that the test can kill and
//! start again on the same data (the etcd discovery tests). Keys are written with `etcdctl`:
//! another client than the gateway, as in production.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to fail, instead of skip, the tests that need etcd.
const REQUIRE: &str = "WASMGATE_REQUIRE_ETCD";

pub struct Etcd {
    /// The client port the gateways are configured with.
    home_port: u16,
    /// The client port it listens on now (another one while hidden from the gateways).
    port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Data (kept across restarts) and the server's log.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` and waits until it answers. Without `etcd` and `etcdctl` installed it says
    /// so on the terminal and returns `None` (the test then returns), or fails the test when
    /// `WASMGATE_REQUIRE_ETCD=1`.
    pub fn start() -> Option<Etcd> {
        if !super::installed(&["etcd", "etcdctl"], REQUIRE, "etcd-server etcd-client") {
            return None;
        }
        let home_port = super::free_port();
        let mut etcd = Etcd {
            home_port,
            port: home_port,
            peer_port: super::free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        etcd.restart();
        Some(etcd)
    }

    /// `127.0.0.1:PORT`, the address to configure gateways with.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.home_port)
    }

    /// Kills the server (as a crash would: no goodbye to its clients).
    pub fn stop(&mut self) {
        super::kill_server(&mut self.child);
    }

    /// Starts the server (again) on its own ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.start_on(self.home_port);
    }

    /// Starts the server on its data but on another client port, where the gateways do not
    /// reach it: what the test writes then is what changed while they were cut off.
    pub fn restart_hidden(&mut self) {
        self.start_on(super::free_port());
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key, value]);
    }

    pub fn delete(&self, key: &str) {
        self.etcdctl(&["del", "--", key]);
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let output = self.etcdctl(&["get", "--write-out=json", "--", "/"]);
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        reply["header"]["revision"].as_i64().unwrap()
    }

    /// Discards the history before `revision`: a watch cannot resume from an older one.
    pub fn compact(&self, revision: i64) {
        self.etcdctl(&["compact", &revision.to_string()]);
    }

    fn start_on(&mut self, port: u16) {
        self.stop();
        self.port = port;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_etcdctl(&["endpoint", "health"]).status.success() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd on port {port} is not healthy after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        let output = self.try_etcdctl(args);
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn try_etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.port))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
