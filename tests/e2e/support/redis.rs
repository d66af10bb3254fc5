//! A real `redis-server` per test, on a free port, that the test can kill and start again on
//! the same port (the shared rate-limit tests).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to fail, instead of skip, the tests that need `redis-server`.
const REQUIRE: &str = "WASMGATE_REQUIRE_REDIS";

pub struct Redis {
    port: u16,
    child: Option<Child>,
    /// Its working folder, so nothing it might write lands in the repository.
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server` and waits until it answers. Without `redis-server` installed it
    /// says so on the terminal and returns `None` (the test then returns), or fails the test
    /// when `WASMGATE_REQUIRE_REDIS=1`.
    pub fn start() -> Option<Redis> {
        if !super::installed(&["redis-server"], REQUIRE, "redis-server") {
            return None;
        }
        let port = super::free_port();
        let mut redis = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        Some(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: no goodbye to its clients).
    pub fn stop(&mut self) {
        super::kill_server(&mut self.child);
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with a
    /// Redis that hangs.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts the server (again) on its port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut connection) = self.try_connection()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited with {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// A connection for looking at what the gateways stored.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection().unwrap()
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
