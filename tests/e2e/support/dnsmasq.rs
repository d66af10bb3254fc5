//! A real dnsmasq per test, on a free loopback port, serving records the test rewrites (the
//! DNS discovery tests). It answers for the `test` domain only: unknown names there get
//! NXDOMAIN, names of other domains REFUSED.

use std::fmt::Write as _;
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to fail, instead of skip, the tests that need dnsmasq.
const REQUIRE: &str = "WASMGATE_REQUIRE_DNSMASQ";

/// The records dnsmasq serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    hosts: Vec<(IpAddr, String)>,
    srv: Vec<String>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// An A (IPv4) or AAAA (IPv6) record.
    pub fn host(mut self, name: &str, ip: &str) -> Zone {
        self.hosts.push((ip.parse().unwrap(), name.to_owned()));
        self
    }

    /// An SRV record of `service` (`_http._tcp.app.test`).
    pub fn srv(
        mut self,
        service: &str,
        target: &str,
        port: u16,
        priority: u16,
        weight: u16,
    ) -> Zone {
        // dnsmasq's order, not BIND's: port, priority, weight.
        self.srv
            .push(format!("{service},{target},{port},{priority},{weight}"));
        self
    }
}

pub struct Dnsmasq {
    port: u16,
    zone: Zone,
    /// TTL of every answer (dnsmasq's `--local-ttl`; it answers 0 by default).
    ttl: u32,
    child: Option<Child>,
    /// Its hosts file, config file and log.
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq serving `zone` with TTL `ttl`, and waits until it answers. Without dnsmasq
    /// installed it says so on the terminal and returns `None` (the test then returns), or
    /// fails the test when `WASMGATE_REQUIRE_DNSMASQ=1`.
    pub fn start(zone: &Zone, ttl: u32) -> Option<Dnsmasq> {
        if !super::installed(&["dnsmasq"], REQUIRE, "dnsmasq-base") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq started as root drops to its own user, which must still read the hosts file
        // when it reloads.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut dnsmasq = Dnsmasq {
            port: free_port(),
            zone: zone.clone(),
            ttl,
            child: None,
            dir,
        };
        dnsmasq.start_again();
        Some(dnsmasq)
    }

    /// `127.0.0.1:PORT`, for `servers`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves `zone` from now on (when stopped: once started again). The hosts file is re-read
    /// on SIGHUP; the SRV records, in the config file that dnsmasq reads only at its start,
    /// take a restart.
    pub fn serve(&mut self, zone: &Zone) {
        let restart = zone.srv != self.zone.srv;
        self.zone = zone.clone();
        self.write_files();
        let Some(child) = &self.child else {
            return;
        };
        if restart {
            self.start_again();
        } else {
            let pid = child.id();
            let status = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Kills dnsmasq: queries go unanswered.
    pub fn stop(&mut self) {
        super::kill_server(&mut self.child);
    }

    /// Starts dnsmasq (again) on its port with its current zone, and waits until it listens.
    pub fn start_again(&mut self) {
        self.stop();
        self.write_files();
        let log = std::fs::File::create(self.path("log")).unwrap();
        let mut child = Command::new("dnsmasq")
            .arg("--no-daemon")
            .arg(format!(
                "--conf-file={}",
                self.path("dnsmasq.conf").display()
            ))
            .arg(format!("--port={}", self.port))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            // Nothing from this machine: no resolv.conf, no /etc/hosts, no pid file.
            .args(["--no-resolv", "--no-hosts", "--pid-file="])
            .arg(format!("--addn-hosts={}", self.path("hosts").display()))
            .arg("--local=/test/")
            .arg(format!("--local-ttl={}", self.ttl))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dnsmasq exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not listen on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// What dnsmasq wrote to its stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_files(&self) {
        let mut hosts = String::new();
        for (ip, name) in &self.zone.hosts {
            writeln!(hosts, "{ip} {name}").unwrap();
        }
        let mut conf = String::new();
        for srv in &self.zone.srv {
            writeln!(conf, "srv-host={srv}").unwrap();
        }
        for (name, text) in [("hosts", hosts), ("dnsmasq.conf", conf)] {
            let path = self.path(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free for both TCP and UDP (dnsmasq listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
