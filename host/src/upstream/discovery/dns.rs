//! DNS discovery: the A and AAAA records of a name (each address with the configured port), or
//! the SRV records of a name that starts with `_` (each target's addresses with the record's
//! port, weight and priority).
//!
//! The provider asks again every `refresh`, or when the answer's TTL runs out if that is
//! sooner. It asks the name servers each time: every refresh has a new resolver, with an empty
//! cache, so a changed record shows on the next one even when its TTL is longer than `refresh`
//! (and changes to /etc/resolv.conf and /etc/hosts apply too). An answer without a usable
//! target (NXDOMAIN, no records, only SRV targets without addresses) counts as a failure like a
//! timeout does: the last list keeps serving.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, join, join_all};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use serde_json::{Value, json};

use super::{Endpoint, Feed, Provider};
use crate::config::{DnsDiscoveryConfig, Spanned};

/// The shortest wait that a short TTL can cause. dnsmasq, for one, answers from its hosts files
/// with TTL 0 ("do not cache"); following that literally would query in a loop.
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);

/// Below this, `refresh` would flood the name servers.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// How long one query to a configured name server may take (per try; the resolver tries
/// twice more). The system's resolv.conf sets its own.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Follows one DNS name.
#[derive(Debug)]
pub struct DnsProvider {
    /// As written in the config.
    name: String,
    query: Name,
    records: Records,
    refresh: Duration,
    /// `None`: the system's resolver configuration (/etc/resolv.conf).
    servers: Option<Vec<SocketAddr>>,
}

/// Which records the name has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// A and AAAA, each address with this port.
    Address { port: u16 },
    /// SRV: ports, weights and priorities from the records.
    Srv,
}

/// What one refresh found.
#[derive(Debug)]
struct Found {
    endpoints: Vec<Endpoint>,
    /// When the first of the records it came from expires.
    valid_until: Instant,
}

/// The addresses of one name and when they expire.
#[derive(Debug)]
struct Addresses {
    ips: Vec<IpAddr>,
    valid_until: Instant,
}

/// One SRV record, as far as discovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Service {
    target: Name,
    port: u16,
    weight: u16,
    priority: u16,
}

type ConfigError = (Range<usize>, String);

impl DnsProvider {
    /// Checks `discovery.dns` and builds the provider; errors point at the offending value.
    pub fn from_config(config: &Spanned<DnsDiscoveryConfig>) -> Result<DnsProvider, ConfigError> {
        let table = config.span();
        let config = config.get_ref();
        let name = config.name.get_ref().trim();
        if name.is_empty() {
            return Err((config.name.span(), "`name` is empty".into()));
        }
        let query = Name::from_str(name).map_err(|error| {
            (
                config.name.span(),
                format!("`{name}` is not a DNS name: {error}"),
            )
        })?;
        let records = match (name.starts_with('_'), &config.port) {
            (true, None) => Records::Srv,
            (true, Some(port)) => {
                return Err((
                    port.span(),
                    "SRV records carry their own ports: remove `port` (or name an A/AAAA \
                     name, without the leading `_`)"
                        .into(),
                ));
            }
            (false, Some(port)) if *port.get_ref() == 0 => {
                return Err((port.span(), "`port` must be at least 1".into()));
            }
            (false, Some(port)) => Records::Address {
                port: *port.get_ref(),
            },
            (false, None) => {
                return Err((
                    table,
                    format!(
                        "A/AAAA discovery needs `port` (the records have none); for SRV \
                         records, name the service (`_http._tcp.{name}`)"
                    ),
                ));
            }
        };
        let refresh = config.refresh.get();
        if refresh < MIN_REFRESH {
            return Err((
                table,
                format!(
                    "`refresh` must be at least {}",
                    humantime::format_duration(MIN_REFRESH)
                ),
            ));
        }
        let servers = match &config.servers {
            Some(servers) => Some(parse_servers(servers, table)?),
            None => None,
        };
        Ok(DnsProvider {
            name: name.to_owned(),
            query,
            records,
            refresh,
            servers,
        })
    }

    async fn follow(self: Arc<Self>, feed: Feed) {
        loop {
            let result = tokio::select! {
                result = self.look_up() => result,
                () = feed.stopped() => return,
            };
            let wait = match result {
                Ok(found) => {
                    if !feed.update(found.endpoints) {
                        return;
                    }
                    next_refresh(
                        self.refresh,
                        found.valid_until.saturating_duration_since(Instant::now()),
                    )
                }
                Err(error) => {
                    if !feed.failed(error) {
                        return;
                    }
                    self.refresh
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = feed.stopped() => return,
            }
        }
    }

    /// One refresh, with a new resolver: a cached answer would hide a change until its TTL
    /// ran out. (A system configuration that cannot be read is a failure of this refresh.)
    async fn look_up(&self) -> Result<Found, String> {
        let resolver = self.resolver()?;
        match self.records {
            Records::Address { port } => {
                let addresses = addresses(&resolver, &self.query)
                    .await
                    .map_err(NoAddresses::into_message)?;
                Ok(Found {
                    endpoints: address_endpoints(&addresses.ips, port),
                    valid_until: addresses.valid_until,
                })
            }
            Records::Srv => self.services(&resolver).await,
        }
    }

    /// The SRV records and their targets' addresses.
    async fn services(&self, resolver: &TokioResolver) -> Result<Found, String> {
        let lookup = resolver
            .srv_lookup(self.query.clone())
            .await
            .map_err(|error| describe_error(&self.name, "SRV", error))?;
        let services = services(&lookup);
        let mut targets: Vec<&Name> = services.iter().map(|s| &s.target).collect();
        targets.sort();
        targets.dedup();
        let answers = join_all(targets.iter().map(|target| addresses(resolver, target))).await;
        let mut valid_until = lookup.valid_until();
        let mut resolved = HashMap::new();
        for (target, answer) in targets.into_iter().zip(answers) {
            // A target without addresses serves nobody; the others still count. A target that
            // could not be looked up makes the whole answer unknown.
            match answer {
                Ok(addresses) => {
                    valid_until = valid_until.min(addresses.valid_until);
                    resolved.insert(target.clone(), addresses.ips);
                }
                Err(NoAddresses::Missing(why)) => {
                    tracing::debug!(name = %self.name, "dns discovery: SRV target skipped: {why}");
                }
                Err(NoAddresses::Failed(why)) => return Err(why),
            }
        }
        let endpoints = srv_endpoints(&services, &resolved);
        if endpoints.is_empty() {
            return Err(format!(
                "{}: no SRV record has a target with an address",
                self.name
            ));
        }
        Ok(Found {
            endpoints,
            valid_until,
        })
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let builder = match &self.servers {
            Some(servers) => {
                let name_servers = servers.iter().map(|&server| name_server(server)).collect();
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(name_servers),
                    TokioRuntimeProvider::default(),
                );
                let options = builder.options_mut();
                // Only the servers asked for: not /etc/hosts.
                options.use_hosts_file = ResolveHosts::Never;
                options.timeout = QUERY_TIMEOUT;
                builder
            }
            None => TokioResolver::builder_tokio().map_err(|error| {
                format!("cannot read the system's resolver configuration: {error}")
            })?,
        };
        builder
            .build()
            .map_err(|error| format!("cannot set up the DNS resolver: {error}"))
    }
}

fn parse_servers(
    servers: &[Spanned<String>],
    table: Range<usize>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    if servers.is_empty() {
        return Err((
            table,
            "`servers` is empty: list name servers (\"ip:port\"), or leave it out for the \
             system's"
                .into(),
        ));
    }
    servers
        .iter()
        .map(|server| {
            server.get_ref().trim().parse().map_err(|_| {
                (
                    server.span(),
                    format!(
                        "`{}` is not a name server address `ip:port` (e.g. \"127.0.0.1:53\")",
                        server.get_ref()
                    ),
                )
            })
        })
        .collect()
}

/// A name server asked over UDP, and over TCP for answers too long for UDP.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

/// Why a name gave no addresses.
#[derive(Debug)]
enum NoAddresses {
    /// The name server says so: NXDOMAIN, or neither A nor AAAA records.
    Missing(String),
    /// A question went unanswered (or was answered with an error): nothing is known.
    Failed(String),
}

impl NoAddresses {
    fn into_message(self) -> String {
        match self {
            NoAddresses::Missing(message) | NoAddresses::Failed(message) => message,
        }
    }
}

/// The A and AAAA records of `name`, asked together. Either family may be missing; a family
/// whose question failed fails the whole, since a list without it would drop its targets for
/// no reason.
async fn addresses(resolver: &TokioResolver, name: &Name) -> Result<Addresses, NoAddresses> {
    let (v4, v6) = join(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name.clone()),
    )
    .await;
    let mut lookups = Vec::with_capacity(2);
    let mut missing = None;
    for (result, kind) in [(v4, "A"), (v6, "AAAA")] {
        match result {
            Ok(lookup) => lookups.push(lookup),
            Err(error) if no_records(&error) => missing = Some(error),
            Err(error) => return Err(NoAddresses::Failed(describe_error(name, kind, error))),
        }
    }
    let ips: Vec<IpAddr> = lookups
        .iter()
        .flat_map(|lookup| lookup.answers())
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None, // the CNAMEs on the way
        })
        .collect();
    match lookups.iter().map(Lookup::valid_until).min() {
        Some(valid_until) if !ips.is_empty() => Ok(Addresses { ips, valid_until }),
        _ => Err(NoAddresses::Missing(match missing {
            Some(error) => describe_error(name, "A or AAAA", error),
            None => format!("{name}: no A or AAAA records"),
        })),
    }
}

/// NXDOMAIN, or a name without records of the type asked.
fn no_records(error: &NetError) -> bool {
    matches!(error, NetError::Dns(DnsError::NoRecordsFound(_)))
}

/// A short message for `GET /upstreams` and the log (hickory's own spells out the whole query).
fn describe_error(name: &impl Display, kind: &str, error: NetError) -> String {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            format!("{name}: no such name (NXDOMAIN)")
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => format!("{name}: no {kind} records"),
        NetError::Timeout => format!("{name}: {kind} query timed out"),
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("{name}: {kind} query answered with {code}")
        }
        other => format!("{name}: {kind} query failed: {other}"),
    }
}

/// The SRV records of an answer that offer the service: a target of "." says it is not offered
/// at this name (RFC 2782), and port 0 reaches nothing.
fn services(lookup: &Lookup) -> Vec<Service> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) if srv.target.is_root() || srv.port == 0 => None,
            RData::SRV(srv) => Some(Service {
                target: srv.target.clone(),
                port: srv.port,
                weight: srv.weight,
                priority: srv.priority,
            }),
            _ => None,
        })
        .collect()
}

/// One endpoint per address, all alike.
fn address_endpoints(ips: &[IpAddr], port: u16) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = ips
        .iter()
        .map(|&ip| Endpoint::new(SocketAddr::new(ip, port).to_string(), 1))
        .collect();
    sort(&mut endpoints);
    endpoints
}

/// One endpoint per address of each SRV record's target. Every address of a target gets the
/// record's weight (weight 0, "no preference", counts as 1) and its priority. A target missing
/// from `resolved` has no address and gives nothing.
fn srv_endpoints(services: &[Service], resolved: &HashMap<Name, Vec<IpAddr>>) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = services
        .iter()
        .flat_map(|service| {
            let ips = resolved.get(&service.target).map_or(&[][..], Vec::as_slice);
            ips.iter().map(|&ip| Endpoint {
                addr: SocketAddr::new(ip, service.port).to_string(),
                weight: u32::from(service.weight.max(1)),
                priority: u32::from(service.priority),
            })
        })
        .collect();
    sort(&mut endpoints);
    endpoints
}

/// The same records in another order (servers rotate them) make the same list; when two
/// records name one address, the preferred priority comes first and so counts.
fn sort(endpoints: &mut [Endpoint]) {
    endpoints.sort_by(|a, b| (a.priority, &a.addr).cmp(&(b.priority, &b.addr)));
}

/// How long to wait before the next refresh: `refresh`, or less when the records expire
/// sooner, but not less than [`MIN_TTL_WAIT`].
fn next_refresh(refresh: Duration, ttl_left: Duration) -> Duration {
    refresh.min(ttl_left.max(MIN_TTL_WAIT))
}

impl Provider for DnsProvider {
    fn describe(&self) -> Value {
        let (record, port) = match self.records {
            Records::Address { port } => ("A/AAAA", Some(port)),
            Records::Srv => ("SRV", None),
        };
        json!({
            "kind": "dns",
            "name": self.name,
            "records": record,
            "port": port,
            "refresh": humantime::format_duration(self.refresh).to_string(),
            "servers": self.servers.as_ref().map(|servers| {
                servers.iter().map(ToString::to_string).collect::<Vec<_>>()
            }),
        })
    }

    fn run(self: Arc<Self>, feed: Feed) -> BoxFuture<'static, ()> {
        Box::pin(self.follow(feed))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::proto::rr::{Record, RecordType};

    use super::*;
    use crate::config::load_str;

    /// The provider for `discovery = { dns = TABLE }`, or its error as `line:col: message`.
    fn from_toml(table: &str) -> Result<DnsProvider, String> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.app]\ndiscovery = {{ dns = {table} }}\n"
        );
        let loaded = load_str(Path::new("gw.toml"), text).unwrap();
        let discovery = loaded.config.upstreams["app"].get_ref().discovery.clone();
        let dns = discovery.unwrap().into_inner().dns.unwrap();
        DnsProvider::from_config(&dns).map_err(|(span, message)| {
            let (line, col) = loaded.source.line_col(span.start);
            format!("{line}:{col}: {message}")
        })
    }

    fn error(table: &str) -> String {
        from_toml(table).unwrap_err()
    }

    #[test]
    fn a_name_with_a_port_asks_for_addresses_through_the_given_servers() {
        let provider = from_toml(
            r#"{ name = "users.internal", port = 9001, refresh = "2s", servers = ["127.0.0.1:5353", "[::1]:53"] }"#,
        )
        .unwrap();
        assert_eq!(provider.records, Records::Address { port: 9001 });
        assert_eq!(provider.refresh, Duration::from_secs(2));
        assert_eq!(
            provider.servers,
            Some(vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ])
        );
        assert_eq!(
            provider.describe(),
            json!({"kind": "dns", "name": "users.internal", "records": "A/AAAA", "port": 9001,
                   "refresh": "2s", "servers": ["127.0.0.1:5353", "[::1]:53"]})
        );
    }

    #[test]
    fn a_name_with_a_leading_underscore_asks_for_srv_records_through_the_system_resolver() {
        let provider = from_toml(r#"{ name = "_http._tcp.users.internal" }"#).unwrap();
        assert_eq!(provider.records, Records::Srv);
        assert_eq!(provider.refresh, Duration::from_secs(5), "the default");
        assert_eq!(provider.servers, None);
        assert_eq!(provider.describe()["port"], Value::Null);
        assert_eq!(provider.describe()["records"], "SRV");
    }

    #[test]
    fn config_errors_point_at_the_value() {
        // Line 5 is `discovery = { dns = ... }`; the dns table starts at column 21.
        let missing_port = error(r#"{ name = "users.internal" }"#);
        assert!(
            missing_port.starts_with("5:21: A/AAAA discovery needs `port`"),
            "{missing_port}"
        );
        let srv_port = error(r#"{ name = "_http._tcp.users.internal", port = 80 }"#);
        assert!(
            srv_port.starts_with("5:66: SRV records carry their own ports"),
            "{srv_port}"
        );
        let bad_server =
            error(r#"{ name = "u.internal", port = 1, servers = ["127.0.0.1:53", "ns1"] }"#);
        assert!(
            bad_server.starts_with("5:81: `ns1` is not a name server address `ip:port`"),
            "{bad_server}"
        );
        let no_port = error(r#"{ name = "u.internal", port = 1, servers = ["127.0.0.1"] }"#);
        assert!(no_port.starts_with("5:65: `127.0.0.1` is not"), "{no_port}");
        assert!(
            error(r#"{ name = "u.internal", port = 1, servers = [] }"#)
                .starts_with("5:21: `servers` is empty")
        );
        assert!(error(r#"{ name = " ", port = 1 }"#).starts_with("5:30: `name` is empty"));
        assert!(
            error(r#"{ name = "a..b", port = 1 }"#).starts_with("5:30: `a..b` is not a DNS name")
        );
        assert!(
            error(r#"{ name = "u.internal", port = 0 }"#)
                .starts_with("5:51: `port` must be at least 1")
        );
        assert!(
            error(r#"{ name = "u.internal", port = 1, refresh = "10ms" }"#)
                .starts_with("5:21: `refresh` must be at least 100ms")
        );
    }

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn service(target: &str, port: u16, priority: u16, weight: u16) -> Service {
        Service {
            target: name(target),
            port,
            weight,
            priority,
        }
    }

    fn endpoint(addr: &str, weight: u32, priority: u32) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            weight,
            priority,
        }
    }

    #[test]
    fn srv_records_become_one_endpoint_per_target_address() {
        let services = [
            service("backup.internal.", 9003, 20, 0),
            service("a.internal.", 9001, 10, 3),
            service("b.internal.", 9002, 10, 1),
            // A target without addresses: nothing.
            service("gone.internal.", 9005, 0, 5),
        ];
        let resolved = HashMap::from([
            (
                name("a.internal."),
                vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            ),
            (name("b.internal."), vec!["10.0.0.2".parse().unwrap()]),
            (name("backup.internal."), vec!["10.0.0.3".parse().unwrap()]),
        ]);
        assert_eq!(
            srv_endpoints(&services, &resolved),
            [
                endpoint("10.0.0.1:9001", 3, 10),
                endpoint("10.0.0.2:9002", 1, 10),
                endpoint("[fd00::1]:9001", 3, 10),
                endpoint("10.0.0.3:9003", 1, 20), // weight 0 counts as 1
            ]
        );
    }

    #[test]
    fn srv_records_that_offer_nothing_are_left_out() {
        let srv = |target: &str, port| {
            let rdata = RData::SRV(SRV::new(10, 1, port, name(target)));
            Record::from_rdata(name("_http._tcp.u.internal."), 0, rdata)
        };
        let query = Query::query(name("_http._tcp.u.internal."), RecordType::SRV);
        let lookup = Lookup::new_with_max_ttl(
            query,
            [srv("a.internal.", 80), srv(".", 80), srv("b.internal.", 0)],
        );
        assert_eq!(services(&lookup), [service("a.internal.", 80, 10, 1)]);
    }

    #[test]
    fn the_order_of_the_records_does_not_change_the_list() {
        let resolved = HashMap::from([
            (name("a."), vec!["10.0.0.1".parse().unwrap()]),
            (name("b."), vec!["10.0.0.2".parse().unwrap()]),
        ]);
        let one = [service("a.", 1, 0, 1), service("b.", 1, 0, 1)];
        let other = [service("b.", 1, 0, 1), service("a.", 1, 0, 1)];
        assert_eq!(
            srv_endpoints(&one, &resolved),
            srv_endpoints(&other, &resolved)
        );
        let ips: Vec<IpAddr> = vec!["::1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        assert_eq!(
            address_endpoints(&ips, 8080),
            [
                endpoint("127.0.0.2:8080", 1, 0),
                endpoint("[::1]:8080", 1, 0)
            ]
        );
    }

    #[test]
    fn the_next_refresh_comes_sooner_when_the_records_expire_but_not_in_a_loop() {
        let refresh = Duration::from_secs(5);
        assert_eq!(next_refresh(refresh, Duration::from_secs(300)), refresh);
        assert_eq!(
            next_refresh(refresh, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(next_refresh(refresh, Duration::ZERO), MIN_TTL_WAIT);
        // A refresh shorter than the floor is what the config asked for.
        let quick = Duration::from_millis(200);
        assert_eq!(next_refresh(quick, Duration::ZERO), quick);
    }
}
