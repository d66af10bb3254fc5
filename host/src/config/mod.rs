//! The configuration file: serde types that mirror `CONFIG.md` one to one, loading with
//! `file:line:col` diagnostics, and validation of everything that can be checked before the
//! runtime snapshot is built.
//!
//! Values that later checks may need to point at are wrapped in [`Spanned`], so an error about
//! them carries the position of the value in the file.

mod checks;
mod load;
mod units;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
pub use toml::Spanned;

pub use load::{ConfigError, Diagnostics, LoadedConfig, SourceFile, load_file, load_str};
pub use units::{Duration, Size, parse_duration};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub plugins: BTreeMap<String, Spanned<PluginConfig>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
}

/// A string or an array of strings (`listen = "a"` or `listen = ["a", "b"]`), with the span of
/// the whole value for error messages.
#[derive(Debug, Clone)]
pub struct OneOrMany(pub Spanned<Vec<String>>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Spanned::<StringList>::deserialize(deserializer).map(|spanned| {
            let span = spanned.span();
            OneOrMany(Spanned::new(span, spanned.into_inner().0))
        })
    }
}

struct StringList(Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: OneOrMany,
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Request line plus headers, per request (431 past it).
    #[serde(
        default = "defaults::max_header_bytes",
        deserialize_with = "checks::header_size"
    )]
    pub max_header_bytes: Size,
    /// Time allowed for a request head to arrive (slowloris).
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A connection without a byte either way for this long is closed gracefully (a request
    /// still in flight finishes first).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Request bodies larger than this get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: Size,
    /// Open client connections; further clients wait in the listen backlog.
    #[serde(
        default = "defaults::max_connections",
        deserialize_with = "checks::at_least_one_usize"
    )]
    pub max_connections: usize,
    /// Runtime worker threads; defaults to the number of CPUs.
    #[serde(default, deserialize_with = "checks::workers")]
    pub workers: Option<usize>,
    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// Where the JSON access log goes: "stdout" (default), "off", or a file path.
    pub access_log: Option<Spanned<String>>,
    pub tls: Option<TlsListenerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: OneOrMany,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[plugins.NAME]`: parsed and validated here; run by the plugin runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub path: Spanned<String>,
    pub memory_limit: Option<Size>,
    pub time_limit: Option<Duration>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub isolation: Isolation,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    #[default]
    Pooled,
    PerRequest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub targets: Option<Vec<TargetConfig>>,
    pub discovery: Option<Spanned<DiscoveryConfig>>,
    #[serde(default = "defaults::balance")]
    pub balance: Spanned<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// The whole exchange up to the response head, retries included.
    #[serde(default = "defaults::upstream_timeout")]
    pub timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierConfig>,
    pub retry: Option<RetryConfig>,
    pub tls: Option<UpstreamTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub addr: Spanned<String>,
    #[serde(default = "defaults::weight")]
    pub weight: Spanned<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
    Https,
    H2,
}

impl Protocol {
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::H2)
    }
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
    pub fn scheme(self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }
}

/// Extra settings for `https` / `h2` upstreams.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of CA certificates to trust instead of the public web roots.
    pub ca: Option<String>,
}

/// `[upstreams.NAME.discovery]`: exactly one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub dns: Option<Spanned<DnsDiscoveryConfig>>,
    pub etcd: Option<Spanned<EtcdDiscoveryConfig>>,
    pub consul: Option<Spanned<ConsulDiscoveryConfig>>,
}

/// `discovery.dns`: A/AAAA records of `name` (with `port`), or SRV records when `name` starts
/// with `_` (`_http._tcp.users.internal`), which carry their own ports, priorities and weights.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscoveryConfig {
    pub name: Spanned<String>,
    pub port: Option<Spanned<u16>>,
    /// How often to look again (sooner when the records' TTL runs out first).
    #[serde(default = "defaults::dns_refresh")]
    pub refresh: Duration,
    /// **Extension.** Name servers (`ip:port`) to ask instead of the system's resolv.conf.
    pub servers: Option<Vec<Spanned<String>>>,
}

/// `discovery.etcd`: every key under `prefix` holds `{"addr": "host:port", "weight": N}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscoveryConfig {
    /// Cluster members, `host:port` (or `http://host:port`); the next is tried when one fails.
    pub endpoints: Spanned<Vec<String>>,
    pub prefix: Spanned<String>,
    /// **Extension.** How long connecting, reading the prefix and opening the watch may take.
    #[serde(default = "defaults::etcd_timeout")]
    pub timeout: Duration,
}

/// `discovery.consul`: the passing instances of `service` (with `tag`), by blocking queries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulDiscoveryConfig {
    /// The Consul agent's HTTP API, `host:port`.
    pub addr: Spanned<String>,
    pub service: Spanned<String>,
    pub tag: Option<Spanned<String>>,
    /// **Extension.** The datacenter to ask about (default: the agent's).
    pub datacenter: Option<Spanned<String>>,
    /// **Extension.** How long one blocking query may wait for a change.
    #[serde(default = "defaults::consul_wait")]
    pub wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: Spanned<String>,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    #[serde(
        default = "defaults::unhealthy_threshold",
        deserialize_with = "checks::at_least_one_u32"
    )]
    pub unhealthy_threshold: u32,
    #[serde(
        default = "defaults::healthy_threshold",
        deserialize_with = "checks::at_least_one_u32"
    )]
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(
        default = "defaults::consecutive_failures",
        deserialize_with = "checks::at_least_one_u32"
    )]
    pub consecutive_failures: u32,
    #[serde(default = "defaults::eject")]
    pub eject: Duration,
    /// Cap on the doubled ejection time.
    #[serde(default = "defaults::max_eject")]
    pub max_eject: Duration,
    #[serde(
        default = "defaults::max_ejected_percent",
        deserialize_with = "checks::percent"
    )]
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(
        default = "defaults::retry_attempts",
        deserialize_with = "checks::retry_attempts"
    )]
    pub attempts: u32,
    #[serde(default = "defaults::retry_on")]
    pub on: Vec<Spanned<String>>,
    #[serde(default = "defaults::retry_methods")]
    pub methods: Vec<Spanned<String>>,
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "defaults::backoff")]
    pub backoff: Duration,
    #[serde(default = "defaults::budget", deserialize_with = "checks::fraction")]
    pub budget: f64,
    /// A request body is kept for replay up to this size; a larger one is not retried.
    #[serde(default = "defaults::max_replay_body")]
    pub max_replay_body: Size,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Option<String>,
    pub host: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub split: Option<Vec<SplitConfig>>,
    pub rewrite: Option<Spanned<String>>,
    pub host_rewrite: Option<Spanned<String>>,
    pub timeout: Option<Duration>,
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    #[serde(default)]
    pub plugins: Vec<Spanned<PluginUse>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub upstream: Spanned<String>,
    pub weight: Spanned<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub rate: Spanned<String>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default = "defaults::rate_limit_key")]
    pub key: Spanned<String>,
    /// `redis://HOST:PORT[/DB]`: the buckets live in Redis, shared by every gateway using it.
    pub store: Option<Spanned<String>>,
    /// How long a check waits for the store before the local limiter decides.
    pub store_timeout: Option<Spanned<Duration>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUse {
    #[serde(rename = "use")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub config: toml::Table,
}

/// Parses a `trusted_proxies` entry: a CIDR block or a single address.
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR block"))
}

mod defaults {
    use super::{Duration, Size, Spanned};

    pub fn dns_refresh() -> Duration {
        Duration::from_secs(5)
    }

    pub fn consul_wait() -> Duration {
        Duration::from_secs(300)
    }

    pub fn etcd_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn max_header_bytes() -> Size {
        Size::kib(64)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_body_bytes() -> Size {
        Size::mib(16)
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn balance() -> Spanned<String> {
        Spanned::new(0..0, "round_robin".to_owned())
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn upstream_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn weight() -> Spanned<u32> {
        Spanned::new(0..0, 1)
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn eject() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_eject() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ejected_percent() -> u32 {
        50
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    fn spanned_list(items: &[&str]) -> Vec<Spanned<String>> {
        items
            .iter()
            .map(|s| Spanned::new(0..0, (*s).to_owned()))
            .collect()
    }
    pub fn retry_on() -> Vec<Spanned<String>> {
        spanned_list(&["connect-failure", "reset", "502", "503", "504"])
    }
    pub fn retry_methods() -> Vec<Spanned<String>> {
        spanned_list(&["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
    }
    pub fn backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn budget() -> f64 {
        0.2
    }
    pub fn max_replay_body() -> Size {
        Size::kib(64)
    }
    pub fn rate_limit_key() -> Spanned<String> {
        Spanned::new(0..0, "client_ip".to_owned())
    }
}
