//! End-to-end tests: the real `wasmgate` binary, real sockets, in-process hyper upstreams that
//! can be told to fail, hang, reset or die.

mod support;

mod access_log;
mod admin;
mod balancing;
mod cli;
mod discovery_consul;
mod discovery_dns;
mod discovery_etcd;
mod first_party;
mod forwarding;
mod grpc;
mod limits;
mod metrics;
mod plugin_cache;
mod plugins;
mod rate_limit;
mod reload;
mod resilience;
mod server_http1;
mod shared_rate_limit;
mod tls;
mod upgrade;
mod upstream_http1;
