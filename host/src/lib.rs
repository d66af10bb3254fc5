//! wasmgate: a programmable API gateway.
//!
//! The file tree follows a request: [`server`] accepts it, [`proxy`] checks and routes it
//! ([`router`]) on the current [`snapshot`], picks a target of an [`upstream`], forwards it with
//! retries and shapes the response; [`telemetry`] writes the access log. [`config`] turns the TOML
//! file into the types the snapshot is built from; [`gateway`] ties them into a running process.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod hex;
pub mod http1;
pub mod limit;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
