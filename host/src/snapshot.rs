//! The runtime form of a config: built once per load, read-only afterwards. A request loads
//! the current snapshot once and keeps it to its end, so a reload never changes a request
//! half-way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{
    Config, Diagnostics, LoadedConfig, OneOrMany, RouteConfig, Spanned, UpstreamConfig,
    parse_trusted_proxy,
};
use crate::error::ConfigErrors;
use crate::limit::redis::Store;
use crate::limit::{self, KeyKind, Rate, RateLimit};
use crate::plugin;
use crate::router::rewrite::{RewriteTemplate, captured_params};
use crate::router::{self, Predicates, RouteSpec, Router};
use crate::server::tls;
use crate::telemetry::access_log::{AccessLog, Destination};
use crate::telemetry::metrics::{RouteMetrics, metrics};
use crate::upstream::{SmoothRoundRobin, TransportCache, Upstream};

pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Per upstream, what its definition was built from: an upstream whose fingerprint did not
    /// change is carried over by a reload, with its connection pools and health state.
    fingerprints: BTreeMap<String, [u8; 32]>,
    /// The config file and every file it names (plugin modules, `@file:`s, certificates).
    pub inputs: Vec<PathBuf>,
    /// Rate limits by route and definition: a reload that keeps a route's limit as it was
    /// keeps its buckets.
    limits: BTreeMap<String, Arc<RateLimit>>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: u64,
    pub listeners: ListenerSettings,
    pub access_log: Destination,
}

/// Where the admin API listens when `server.admin` is not set: loopback only, since it has no
/// authentication.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

/// The admin API's address, and whether the config wrote it: a default address that is taken
/// (a second gateway on the host) only costs that gateway its admin API, while a written one
/// that cannot be bound stops the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen {
    pub addr: SocketAddr,
    pub written: bool,
}

/// What the listeners need; changing these needs new sockets.
#[derive(Clone)]
pub struct ListenerSettings {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin API's listener (`server.admin`); `None` when it is `"off"`.
    pub admin: Option<AdminListen>,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub workers: Option<usize>,
    pub drain_timeout: Duration,
}

pub struct Route {
    /// The route's `name`, or `#N` (its 1-based position in the file).
    pub name: Arc<str>,
    pub backend: Backend,
    pub rewrite: Option<RewriteTemplate>,
    pub host_rewrite: Option<HeaderValue>,
    pub timeout: Option<Duration>,
    /// The route's plugins, request phase in order, response phase in reverse.
    pub plugins: plugin::PluginChain,
    pub rate_limit: Option<Arc<RateLimit>>,
    /// The route's request counts and latency (its name goes to the access log from here).
    pub metrics: Arc<RouteMetrics>,
}

/// The rate limits of the previous snapshot (on a reload) and of the one being built, by
/// route label and definition.
struct LimitRegistry<'a> {
    previous: Option<&'a BTreeMap<String, Arc<RateLimit>>>,
    built: BTreeMap<String, Arc<RateLimit>>,
}

pub enum Backend {
    Upstream(Arc<Upstream>),
    /// Weighted split across upstreams (canary): smooth round robin over the weights, so a
    /// 90/10 split is exact over every 100 requests.
    Split {
        members: Vec<(Arc<Upstream>, u32)>,
        turn: SmoothRoundRobin,
    },
}

impl Backend {
    pub fn choose(&self) -> &Arc<Upstream> {
        match self {
            Backend::Upstream(upstream) => upstream,
            Backend::Split { members, turn } => {
                let index = turn
                    .pick_by_weight(members.len(), &|i| members[i].1, &|_| true)
                    .unwrap_or(0);
                &members[index].0
            }
        }
    }
}

impl Snapshot {
    /// Builds everything, or reports every problem found. With the `previous` snapshot (a
    /// reload), upstreams whose definition did not change are carried over as they are.
    pub fn build(
        loaded: &LoadedConfig,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut diagnostics = Diagnostics::new(loaded.source.clone());
        let config = &loaded.config;
        let listeners = listener_settings(config, &mut diagnostics);
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|entry| {
                parse_trusted_proxy(entry.get_ref())
                    .map_err(|message| {
                        diagnostics
                            .error(entry.span(), format!("server.trusted_proxies: {message}"))
                    })
                    .ok()
            })
            .collect();
        let access_log = access_log_destination(config, &mut diagnostics);
        let plugins = plugin::load_plugins(&config.plugins, &mut diagnostics);

        let mut transports = TransportCache::default();
        let mut upstreams = BTreeMap::new();
        let mut fingerprints = BTreeMap::new();
        let raw = toml::from_str::<toml::Table>(&loaded.source.text).unwrap_or_default();
        for (name, upstream) in &config.upstreams {
            let Some(built) = Upstream::build(name, upstream, &mut diagnostics, &mut transports)
            else {
                continue;
            };
            let fingerprint = upstream_fingerprint(&raw, name, upstream.get_ref(), &diagnostics);
            let kept = previous
                .filter(|previous| previous.fingerprints.get(name) == Some(&fingerprint))
                .and_then(|previous| previous.upstreams.get(name));
            let upstream = match kept {
                Some(kept) => kept.clone(),
                None => Arc::new(built),
            };
            upstreams.insert(name.clone(), upstream);
            fingerprints.insert(name.clone(), fingerprint);
        }

        let mut specs = Vec::new();
        let mut spans = Vec::new();
        let mut limits = LimitRegistry {
            previous: previous.map(|previous| &previous.limits),
            built: BTreeMap::new(),
        };
        for (index, route) in config.routes.iter().enumerate() {
            if let Some(spec) = build_route(
                index,
                route.get_ref(),
                config,
                &upstreams,
                &plugins,
                &mut limits,
                &mut diagnostics,
            ) {
                specs.push(spec);
                spans.push(route.get_ref().path.span());
            }
        }
        let router = match Router::build(specs) {
            Ok(router) => Some(router),
            Err(errors) => {
                for error in errors {
                    diagnostics.error(
                        spans[error.index].clone(),
                        format!("routes: {}", error.message),
                    );
                }
                None
            }
        };
        if config.routes.is_empty() {
            diagnostics.error(
                0..0,
                "no [[routes]]: the gateway would answer every request with 404",
            );
        }
        match (router, listeners) {
            (Some(router), Some(listeners)) if !diagnostics.has_errors() => Ok(Snapshot {
                router,
                upstreams,
                fingerprints,
                inputs: diagnostics.inputs().to_vec(),
                limits: limits.built,
                trusted_proxies,
                max_body_bytes: config.server.max_body_bytes.bytes(),
                listeners,
                access_log,
            }),
            _ => Err(ConfigErrors(diagnostics.into_errors())),
        }
    }

    /// Starts background work (health checks, rate-limit stores connecting) of everything in
    /// the snapshot, and sends the access log where this config says.
    pub fn start(&self) {
        AccessLog::direct(&self.access_log);
        for upstream in self.upstreams.values() {
            upstream.start();
        }
        for limit in self.limits.values() {
            limit.start();
        }
    }
}

/// `server.access_log`: "stdout", "off" or a file, which must be writable (or creatable) now,
/// so that a typo fails `check` and a reload rather than losing the log.
fn access_log_destination(config: &Config, diagnostics: &mut Diagnostics) -> Destination {
    let Some(value) = &config.server.access_log else {
        return Destination::Stdout;
    };
    match value.get_ref().as_str() {
        "stdout" => Destination::Stdout,
        "off" => Destination::Off,
        "" => {
            diagnostics.error(
                value.span(),
                "server.access_log: use \"stdout\", \"off\" or a file path",
            );
            Destination::Off
        }
        path => {
            let path = diagnostics.source().resolve(path);
            let problem = if path.exists() {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .err()
                    .map(|err| format!("cannot write {}: {err}", path.display()))
            } else {
                match path.parent() {
                    Some(folder) if folder.as_os_str().is_empty() || folder.is_dir() => None,
                    _ => Some(format!("the folder of {} does not exist", path.display())),
                }
            };
            if let Some(problem) = problem {
                diagnostics.error(value.span(), format!("server.access_log: {problem}"));
            }
            Destination::File(path)
        }
    }
}

/// What an upstream is built from: its table as written (whatever its position in the file)
/// and the CA file it names.
fn upstream_fingerprint(
    raw: &toml::Table,
    name: &str,
    config: &UpstreamConfig,
    diagnostics: &Diagnostics,
) -> [u8; 32] {
    let mut hash = Sha256::new();
    if let Some(table) = raw
        .get("upstreams")
        .and_then(|upstreams| upstreams.get(name))
    {
        hash.update(table.to_string());
    }
    if let Some(ca) = config.tls.as_ref().and_then(|tls| tls.ca.as_deref()) {
        // An unreadable CA was reported by the build; hashing nothing then is harmless.
        hash.update(std::fs::read(diagnostics.source().resolve(ca)).unwrap_or_default());
    }
    hash.finalize().into()
}

fn parse_listen(list: &OneOrMany, key: &str, diagnostics: &mut Diagnostics) -> Vec<SocketAddr> {
    let span = list.0.span();
    if list.0.get_ref().is_empty() {
        diagnostics.error(span.clone(), format!("{key}: needs at least one address"));
    }
    list.0
        .get_ref()
        .iter()
        .filter_map(|addr| {
            addr.parse::<SocketAddr>()
                .map_err(|_| {
                    diagnostics.error(
                        span.clone(),
                        format!("{key}: `{addr}` is not an `ip:port` address"),
                    )
                })
                .ok()
        })
        .collect()
}

fn listener_settings(config: &Config, diagnostics: &mut Diagnostics) -> Option<ListenerSettings> {
    let server = &config.server;
    let listen = parse_listen(&server.listen, "server.listen", diagnostics);
    let (tls_listen, tls) = match &server.tls {
        Some(tls_config) => {
            let addrs = parse_listen(&tls_config.listen, "server.tls.listen", diagnostics);
            let cert = diagnostics.input(tls_config.cert.get_ref());
            let key = diagnostics.input(tls_config.key.get_ref());
            let built = tls::server_config(&cert, &key)
                .map_err(|message| {
                    diagnostics.error(tls_config.cert.span(), format!("server.tls: {message}"))
                })
                .ok();
            (addrs, built)
        }
        None => (Vec::new(), None),
    };
    let admin = match &server.admin {
        None => Some(AdminListen {
            addr: DEFAULT_ADMIN,
            written: false,
        }),
        Some(admin) if admin.get_ref() == "off" => None,
        Some(admin) => admin
            .get_ref()
            .parse::<SocketAddr>()
            .map(|addr| AdminListen {
                addr,
                written: true,
            })
            .map_err(|_| {
                diagnostics.error(
                    admin.span(),
                    format!(
                        "server.admin: `{}` is not an `ip:port` address (or \"off\")",
                        admin.get_ref()
                    ),
                )
            })
            .ok(),
    };
    if server.tls.is_some() && tls.is_none() {
        return None;
    }
    Some(ListenerSettings {
        listen,
        tls_listen,
        tls,
        admin,
        max_header_bytes: server.max_header_bytes.as_usize(),
        header_read_timeout: server.header_read_timeout.get(),
        idle_timeout: server.idle_timeout.get(),
        max_connections: server.max_connections,
        workers: server.workers,
        drain_timeout: server.drain_timeout.get(),
    })
}

fn build_route(
    index: usize,
    route: &RouteConfig,
    config: &Config,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    plugins: &plugin::Plugins,
    limits: &mut LimitRegistry<'_>,
    diagnostics: &mut Diagnostics,
) -> Option<RouteSpec<Arc<Route>>> {
    let errors_before = diagnostics.error_count();
    let label = route
        .name
        .clone()
        .unwrap_or_else(|| format!("#{}", index + 1));
    let error = |diagnostics: &mut Diagnostics, span: std::ops::Range<usize>, message: String| {
        diagnostics.error(span, format!("route {label}: {message}"));
    };
    let path = route.path.get_ref();

    let lookup = |name: &Spanned<String>, diagnostics: &mut Diagnostics| -> Option<Arc<Upstream>> {
        match upstreams.get(name.get_ref()) {
            Some(upstream) => Some(upstream.clone()),
            None => {
                // An upstream that exists but failed to build has its own error already.
                if !config.upstreams.contains_key(name.get_ref()) {
                    let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
                    diagnostics.error(
                        name.span(),
                        format!(
                            "route {label}: unknown upstream `{}` (defined: {})",
                            name.get_ref(),
                            known.join(", ")
                        ),
                    );
                }
                None
            }
        }
    };
    let backend = match (&route.upstream, &route.split) {
        (Some(name), None) => lookup(name, diagnostics).map(Backend::Upstream),
        (None, Some(split)) if !split.is_empty() => {
            let mut members = Vec::new();
            for member in split {
                if *member.weight.get_ref() == 0 {
                    error(
                        diagnostics,
                        member.weight.span(),
                        "split weight must be at least 1".into(),
                    );
                }
                if let Some(upstream) = lookup(&member.upstream, diagnostics) {
                    members.push((upstream, *member.weight.get_ref()));
                }
            }
            (members.len() == split.len()).then(|| Backend::Split {
                turn: SmoothRoundRobin::new(members.len()),
                members,
            })
        }
        (None, Some(_)) => {
            error(diagnostics, route.path.span(), "`split` is empty".into());
            None
        }
        (Some(name), Some(_)) => {
            error(
                diagnostics,
                name.span(),
                "give either `upstream` or `split`, not both".into(),
            );
            None
        }
        (None, None) => {
            error(
                diagnostics,
                route.path.span(),
                "needs `upstream` or `split`".into(),
            );
            None
        }
    };

    if let Some(host) = &route.host
        && let Err(message) = router::check_host(host.get_ref())
    {
        error(diagnostics, host.span(), message);
    }
    let methods = route.methods.as_ref().map(|methods| {
        methods
            .iter()
            .filter_map(|m| {
                Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        error(
                            diagnostics,
                            m.span(),
                            format!("`{}` is not an HTTP method", m.get_ref()),
                        )
                    })
                    .ok()
            })
            .collect::<Vec<_>>()
    });
    let mut headers = Vec::new();
    for (name, value) in &route.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.get_ref()),
        ) {
            (Ok(name), Ok(value)) => headers.push((name, value)),
            (Err(_), _) => error(
                diagnostics,
                value.span(),
                format!("`{name}` is not a valid header name"),
            ),
            (_, Err(_)) => error(
                diagnostics,
                value.span(),
                format!("`{}` is not a valid header value", value.get_ref()),
            ),
        }
    }
    let rewrite = route.rewrite.as_ref().and_then(|template| {
        RewriteTemplate::parse(template.get_ref(), &captured_params(path))
            .map_err(|message| error(diagnostics, template.span(), message))
            .ok()
    });
    let host_rewrite = route.host_rewrite.as_ref().and_then(|host| {
        HeaderValue::from_str(host.get_ref())
            .ok()
            .filter(|_| !host.get_ref().is_empty())
            .or_else(|| {
                error(
                    diagnostics,
                    host.span(),
                    format!("`{}` is not a valid host", host.get_ref()),
                );
                None
            })
    });
    let rate_limit = route.rate_limit.as_ref().and_then(|limit| {
        let config = limit.get_ref();
        let store = config.store.as_ref().and_then(|store| {
            Store::get(store.get_ref())
                .map_err(|message| {
                    error(
                        diagnostics,
                        store.span(),
                        format!("rate_limit.store: {message}"),
                    )
                })
                .ok()
        });
        let store_timeout = match &config.store_timeout {
            Some(timeout) if config.store.is_none() => {
                error(
                    diagnostics,
                    timeout.span(),
                    "rate_limit.store_timeout: only a limit with `store` waits for one".into(),
                );
                None
            }
            Some(timeout) if timeout.get_ref().get().is_zero() => {
                error(
                    diagnostics,
                    timeout.span(),
                    "rate_limit.store_timeout: must be more than 0".into(),
                );
                None
            }
            Some(timeout) => Some(timeout.get_ref().get()),
            None => Some(limit::redis::DEFAULT_TIMEOUT),
        };
        let rate = Rate::parse(config.rate.get_ref())
            .map_err(|message| {
                error(
                    diagnostics,
                    config.rate.span(),
                    format!("rate_limit.rate: {message}"),
                )
            })
            .ok();
        let key = KeyKind::parse(config.key.get_ref())
            .map_err(|message| {
                error(
                    diagnostics,
                    config.key.span(),
                    format!("rate_limit.key: {message}"),
                )
            })
            .ok();
        let identity = format!(
            "{label}\n{}\n{:?}\n{}\n{:?}\n{store_timeout:?}",
            config.rate.get_ref(),
            config.burst,
            config.key.get_ref(),
            config.store.as_ref().map(Spanned::get_ref),
        );
        if let Some(kept) = limits.previous.and_then(|previous| previous.get(&identity)) {
            limits.built.insert(identity, kept.clone());
            return Some(kept.clone());
        }
        let built = RateLimit::new(key?, rate?, config.burst)
            .map_err(|message| error(diagnostics, limit.span(), format!("rate_limit: {message}")))
            .ok()?;
        // A store that failed to parse was reported, and fails the whole build.
        let built = match store {
            Some(store) => built.with_store(store, &label, store_timeout?),
            None => built,
        };
        let built = Arc::new(built);
        limits.built.insert(identity, built.clone());
        Some(built)
    });
    // Each plugin of the route with this route's config; `init` runs now, so a config the
    // plugin rejects is reported like any other config error.
    let mut uses = Vec::new();
    let mut use_spans = Vec::new();
    for plugin_use in &route.plugins {
        let plugin_use = plugin_use.get_ref();
        let name = plugin_use.name.get_ref();
        let Some((spec, pre)) = plugins.get(name) else {
            if !config.plugins.contains_key(name) {
                error(
                    diagnostics,
                    plugin_use.name.span(),
                    format!("unknown plugin `{name}`"),
                );
            }
            continue;
        };
        match plugin::resolve_config(&plugin_use.config, diagnostics) {
            Ok(json) => {
                uses.push((spec.clone(), pre.clone(), json));
                use_spans.push(plugin_use.name.span());
            }
            Err(message) => error(
                diagnostics,
                plugin_use.name.span(),
                format!("plugin `{name}` config: {message}"),
            ),
        }
    }
    let plugins = if diagnostics.error_count() > errors_before {
        None
    } else {
        match plugin::PluginChain::build(uses) {
            Ok(chain) => Some(chain),
            Err((index, message)) => {
                error(diagnostics, use_spans[index].clone(), message);
                None
            }
        }
    };
    let (backend, plugins) = (backend?, plugins?);
    if diagnostics.error_count() > errors_before {
        return None;
    }
    let name: Arc<str> = Arc::from(label.as_str());
    Some(RouteSpec {
        host: route.host.as_ref().map(|h| h.get_ref().clone()),
        path: path.clone(),
        predicates: Predicates { methods, headers },
        value: Arc::new(Route {
            metrics: Arc::new(metrics().route(Arc::clone(&name))),
            name,
            backend,
            rewrite,
            host_rewrite,
            timeout: route.timeout.map(|t| t.get()),
            plugins,
            rate_limit,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn build(limit: &str, previous: Option<&Snapshot>) -> Snapshot {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.app]\n\
             targets = [{{ addr = \"127.0.0.1:9\" }}]\n\n\
             [[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n\
             rate_limit = {{ rate = \"1/m\", {limit} }}\n"
        );
        let loaded = crate::config::load_str(Path::new("gw.toml"), text).unwrap();
        Snapshot::build(&loaded, previous).unwrap_or_else(|errors| panic!("{errors}"))
    }

    fn limit(snapshot: &Snapshot) -> &Arc<RateLimit> {
        snapshot.limits.values().next().unwrap()
    }

    #[tokio::test]
    async fn a_reload_keeps_a_shared_limit_only_with_the_same_store() {
        let store = "store = \"redis://127.0.0.1:1\"";
        let first = build(store, None);
        let same = build(store, Some(&first));
        assert!(Arc::ptr_eq(limit(&first), limit(&same)));
        let other_store = build("store = \"redis://127.0.0.1:1/1\"", Some(&same));
        assert!(!Arc::ptr_eq(limit(&same), limit(&other_store)));
        let other_timeout = build(
            "store = \"redis://127.0.0.1:1/1\", store_timeout = \"10ms\"",
            Some(&other_store),
        );
        assert!(!Arc::ptr_eq(limit(&other_store), limit(&other_timeout)));
        let local = build("key = \"client_ip\"", Some(&other_timeout));
        assert!(!Arc::ptr_eq(limit(&other_timeout), limit(&local)));
    }
}
