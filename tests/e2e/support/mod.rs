//! Shared pieces of the end-to-end tests.

pub mod client;
pub mod consul;
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
