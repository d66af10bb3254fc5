//! Shared pieces of the end-to-end tests.

pub mod client;
pub mod dnsmasq;
pub mod gateway;
pub mod redis;
pub mod upstream;

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
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether `program` (from the Debian package `package`) is installed, for the tests that
/// start it. When it is not, the test is skipped with a note on the terminal, or fails when the
/// environment variable `require` is 1 (as in CI).
pub fn installed(program: &str, package: &str, require: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{program} not found, and {require}=1 requires it (apt-get install {package})"
        );
        // Straight to the terminal: the test harness swallows eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** skipped: {program} not found (apt-get install {package}; {require}=1 makes \
             this a failure) ***\n"
        );
    }
    found
}
