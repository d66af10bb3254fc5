//! Shared pieces of the end-to-end tests.

pub mod client;
pub mod consul;
pub mod dnsmasq;
pub mod etcd;
pub mod gateway;
pub mod load;
pub mod redis;
pub mod upstream;

use std::io::Write;
use std::process::{Child, Command, Stdio};

pub use client::{HttpClient, raw_exchange, raw_status};
pub use gateway::GatewayProcess;
pub use upstream::{Behaviour, TestUpstream};

/// The `[server]` table most tests use: an OS-chosen port on loopback.
pub const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

/// The path of a plugin module built by the host's build script (`first_plugin`, `jwt`, ...).
pub fn wasm(name: &str) -> String {
    format!("{}/{name}.wasm", env!("WASMGATE_PLUGIN_DIR"))
}

/// `[upstreams.NAME]` with the given targets (`addr`, weight) and extra lines.
pub fn upstream_table(name: &str, targets: &[(std::net::SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(addr, weight)| format!("{{ addr = \"{addr}\", weight = {weight} }}"))
        .collect();
    format!(
        "\n[upstreams.{name}]\ntargets = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// The value of one series on the gateway's `GET /metrics`.
pub async fn metric(client: &HttpClient, gateway: &GatewayProcess, series: &str) -> Option<f64> {
    let text = client.get(&gateway.admin_url("/metrics")).await.text();
    series_value(&text, series)
}

/// The value of the series `series` (name and labels exactly as exposed) in a scrape.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

/// Scrapes until `series` has the value `want`, for up to 10 s.
pub async fn wait_for_metric(gateway: &GatewayProcess, series: &str, want: f64) {
    let client = HttpClient::http1();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = client.get(&gateway.admin_url("/metrics")).await.text();
        if series_value(&text, series) == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is not {want} in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether the external `programs` a test needs are installed. When one is missing it says so
/// on the terminal and returns false (the test then returns), or fails the test when the
/// environment variable `require` is 1 (CI sets it).
pub fn installed(programs: &[&str], require: &str, package: &str) -> bool {
    let missing = programs.iter().find(|program| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    });
    let Some(missing) = missing else { return true };
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{missing} not found, and {require}=1 requires it (apt-get install {package})"
    );
    // Straight to the terminal: the test harness swallows eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** skipped: {missing} not found (apt-get install {package}; \
         {require}=1 makes this a failure) ***\n"
    );
    false
}

/// A loopback TCP port nothing listens on now, for a server process a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a server process a test started (as a crash would: no goodbye to its clients) and
/// reaps it.
pub fn kill_server(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
