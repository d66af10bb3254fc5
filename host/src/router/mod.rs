//! Request routing: host, then path (matchit), then methods and header predicates.
//!
//! Routes are grouped by host (exact names, then `*.suffix` wildcards longest first, then routes
//! without a host). Inside a group matchit finds the most specific path pattern. Several routes
//! may share a pattern and differ in methods or headers; those with more predicates are tried
//! first, then file order. When no route of the matched pattern accepts the request, less
//! specific patterns that also match the path are tried (so `GET`-only `/api/users` does not
//! hide `/api/{*rest}` from a `POST`).

pub mod rewrite;

use std::collections::{HashMap, HashSet};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// What a route matches on, besides its path.
#[derive(Debug, Clone, Default)]
pub struct Predicates {
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Predicates {
    fn accepts(&self, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    fn specificity(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len()
    }
}

/// One route as the router sees it.
pub struct RouteSpec<T> {
    pub host: Option<String>,
    pub path: String,
    pub predicates: Predicates,
    pub value: T,
}

/// A found route and the parameters its path captured.
pub struct Match<'r, 'p, T> {
    pub value: &'r T,
    pub params: matchit::Params<'r, 'p>,
}

pub struct Router<T> {
    exact_hosts: HashMap<String, PathTable<T>>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard_hosts: Vec<(String, PathTable<T>)>,
    any_host: PathTable<T>,
    len: usize,
}

struct PathTable<T> {
    matcher: matchit::Router<usize>,
    patterns: Vec<Pattern<T>>,
}

struct Pattern<T> {
    text: String,
    /// A router holding only this pattern, to test it as a fallback and capture its params.
    alone: matchit::Router<()>,
    routes: Vec<(Predicates, T)>,
    /// Other patterns of the table that may match the same paths, most specific first.
    fallbacks: Vec<usize>,
}

/// A route that could not be added, by its index in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub index: usize,
    pub message: String,
}

impl<T> Router<T> {
    pub fn build(specs: Vec<RouteSpec<T>>) -> Result<Self, Vec<RouteError>> {
        let len = specs.len();
        let mut errors = Vec::new();
        let mut exact: HashMap<String, TableBuilder<T>> = HashMap::new();
        let mut wildcard: HashMap<String, TableBuilder<T>> = HashMap::new();
        let mut any = TableBuilder::default();
        for (index, spec) in specs.into_iter().enumerate() {
            if let Err(message) = check_pattern(&spec.path) {
                errors.push(RouteError { index, message });
                continue;
            }
            let table = match spec.host.as_deref().map(str::to_ascii_lowercase) {
                None => &mut any,
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_default(),
                    None => exact.entry(host).or_default(),
                },
            };
            table.add(index, spec.path, spec.predicates, spec.value);
        }
        let mut finish = |builder: TableBuilder<T>| builder.finish(&mut errors);
        let exact_hosts = exact.into_iter().map(|(h, b)| (h, finish(b))).collect();
        let mut wildcard_hosts: Vec<(String, PathTable<T>)> =
            wildcard.into_iter().map(|(h, b)| (h, finish(b))).collect();
        wildcard_hosts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let any_host = finish(any);
        if errors.is_empty() {
            Ok(Router {
                exact_hosts,
                wildcard_hosts,
                any_host,
                len,
            })
        } else {
            errors.sort_by_key(|e| e.index);
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds the route for a request. `host` is the request's host without port.
    pub fn find<'r, 'p>(
        &'r self,
        host: Option<&str>,
        method: &Method,
        path: &'p str,
        headers: &HeaderMap,
    ) -> Option<Match<'r, 'p, T>> {
        if let Some(host) = host {
            // Hosts are case-insensitive; avoid allocating for the common lowercase case.
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(table) = self.exact_hosts.get(host)
                && let Some(found) = table.find(method, path, headers)
            {
                return Some(found);
            }
            for (suffix, table) in &self.wildcard_hosts {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(found) = table.find(method, path, headers)
                {
                    return Some(found);
                }
            }
        }
        self.any_host.find(method, path, headers)
    }
}

impl<T> PathTable<T> {
    fn find<'r, 'p>(
        &'r self,
        method: &Method,
        path: &'p str,
        headers: &HeaderMap,
    ) -> Option<Match<'r, 'p, T>> {
        let matched = self.matcher.at(path).ok()?;
        let pattern = &self.patterns[*matched.value];
        if let Some(value) = pattern.accepting(method, headers) {
            return Some(Match {
                value,
                params: matched.params,
            });
        }
        for &other in &pattern.fallbacks {
            let candidate = &self.patterns[other];
            if let Some(value) = candidate.accepting(method, headers)
                && let Ok(found) = candidate.alone.at(path)
            {
                return Some(Match {
                    value,
                    params: found.params,
                });
            }
        }
        None
    }
}

impl<T> Pattern<T> {
    fn accepting(&self, method: &Method, headers: &HeaderMap) -> Option<&T> {
        self.routes
            .iter()
            .find(|(predicates, _)| predicates.accepts(method, headers))
            .map(|(_, value)| value)
    }
}

/// A route waiting to be placed: its index in the input, predicates and value.
type PendingRoute<T> = (usize, Predicates, T);

struct TableBuilder<T> {
    /// Pattern texts in first-seen order, each with its routes.
    patterns: Vec<(String, Vec<PendingRoute<T>>)>,
    by_text: HashMap<String, usize>,
}

impl<T> Default for TableBuilder<T> {
    fn default() -> Self {
        TableBuilder {
            patterns: Vec::new(),
            by_text: HashMap::new(),
        }
    }
}

impl<T> TableBuilder<T> {
    fn add(&mut self, index: usize, path: String, predicates: Predicates, value: T) {
        let slot = *self.by_text.entry(path.clone()).or_insert_with(|| {
            self.patterns.push((path, Vec::new()));
            self.patterns.len() - 1
        });
        self.patterns[slot].1.push((index, predicates, value));
    }

    fn finish(self, errors: &mut Vec<RouteError>) -> PathTable<T> {
        let mut matcher = matchit::Router::new();
        let mut patterns = Vec::with_capacity(self.patterns.len());
        for (text, mut routes) in self.patterns {
            let first_index = routes[0].0;
            if let Err(err) = matcher.insert(text.as_str(), patterns.len()) {
                errors.push(RouteError {
                    index: first_index,
                    message: format!("path `{text}` cannot be routed: {err}"),
                });
                continue;
            }
            let mut alone = matchit::Router::new();
            // Cannot fail: the same pattern was just accepted by `matcher`.
            let _ = alone.insert(text.as_str(), ());
            // Most predicates first; the sort is stable, so file order breaks ties.
            routes.sort_by_key(|route| std::cmp::Reverse(route.1.specificity()));
            patterns.push(Pattern {
                text,
                alone,
                routes: routes.into_iter().map(|(_, p, v)| (p, v)).collect(),
                fallbacks: Vec::new(),
            });
        }
        // `/api/{*rest}` also takes `/api/` (matchit's catch-all needs at least one character,
        // but users expect `/{*rest}` to cover `/`), unless a route claims that path itself.
        let texts: HashSet<&str> = patterns.iter().map(|p| p.text.as_str()).collect();
        let aliases: Vec<(usize, String)> = patterns
            .iter()
            .enumerate()
            .filter_map(|(index, pattern)| {
                let prefix = catch_all_prefix(&pattern.text)?;
                (!texts.contains(prefix)).then(|| (index, prefix.to_owned()))
            })
            .collect();
        drop(texts);
        for (index, prefix) in aliases {
            if matcher.insert(prefix.as_str(), index).is_ok() {
                let _ = patterns[index].alone.insert(prefix, ());
            }
        }
        let fallbacks = fallback_orders(&patterns);
        for (pattern, fallbacks) in patterns.iter_mut().zip(fallbacks) {
            pattern.fallbacks = fallbacks;
        }
        PathTable { matcher, patterns }
    }
}

/// For each pattern, the dynamic patterns whose static prefix is compatible with its own: they
/// might match the same paths (checked exactly at request time), ordered most specific first.
///
/// A pattern with a route that has no predicates accepts every request it matches, so its
/// fallbacks would never be tried: it gets none. The others find theirs in the dynamic patterns
/// sorted by static prefix (a binary search per prefix length), not by comparing every pair:
/// with 10,000 routes the pairwise scan took most of the config's load time.
fn fallback_orders<T>(patterns: &[Pattern<T>]) -> Vec<Vec<usize>> {
    let mut dynamic: Vec<(&str, usize)> = patterns
        .iter()
        .enumerate()
        .filter(|(_, pattern)| pattern.text.contains('{'))
        .map(|(j, pattern)| (static_prefix(&pattern.text), j))
        .collect();
    dynamic.sort_unstable();
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| {
            if pattern.routes.iter().any(|(p, _)| p.specificity() == 0) {
                return Vec::new();
            }
            let own = static_prefix(&pattern.text);
            // Longer (or equal) prefixes, then each shorter prefix of `own` exactly.
            let mut found = Vec::new();
            push_starting_with(&dynamic, own, false, &mut found);
            for (end, _) in own.char_indices() {
                push_starting_with(&dynamic, &own[..end], true, &mut found);
            }
            found.retain(|&j| j != i);
            sort_most_specific_first(patterns, &mut found);
            found
        })
        .collect()
}

/// Pushes the patterns of `dynamic` (sorted by static prefix) whose static prefix starts with
/// `prefix` (`exact`: equals it).
fn push_starting_with(
    dynamic: &[(&str, usize)],
    prefix: &str,
    exact: bool,
    found: &mut Vec<usize>,
) {
    let start = dynamic.partition_point(|(other, _)| *other < prefix);
    found.extend(
        dynamic[start..]
            .iter()
            .take_while(|(other, _)| {
                if exact {
                    *other == prefix
                } else {
                    other.starts_with(prefix)
                }
            })
            .map(|&(_, j)| j),
    );
}

fn sort_most_specific_first<T>(patterns: &[Pattern<T>], found: &mut [usize]) {
    found.sort_by_key(|&j| {
        let text = &patterns[j].text;
        (
            text.contains("{*"),
            std::cmp::Reverse(static_prefix(text).len()),
            text.matches('{').count(),
            j,
        )
    });
}

/// `/api/` for `/api/{*rest}`.
fn catch_all_prefix(pattern: &str) -> Option<&str> {
    let start = pattern.rfind("{*")?;
    (pattern.ends_with('}') && pattern[..start].ends_with('/')).then(|| &pattern[..start])
}

fn static_prefix(pattern: &str) -> &str {
    pattern.find('{').map_or(pattern, |i| &pattern[..i])
}

fn check_pattern(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` must start with `/`"));
    }
    Ok(())
}

/// Validates a `host` predicate: a DNS name or `*.suffix`.
pub fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid && !name.contains('*') {
        Ok(())
    } else {
        Err(format!(
            "host `{host}` must be a DNS name such as `api.example.com` or a wildcard such as `*.example.com`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        host: Option<&str>,
        path: &str,
        methods: Option<&[Method]>,
        value: &'static str,
    ) -> RouteSpec<&'static str> {
        RouteSpec {
            host: host.map(str::to_owned),
            path: path.to_owned(),
            predicates: Predicates {
                methods: methods.map(<[Method]>::to_vec),
                headers: Vec::new(),
            },
            value,
        }
    }

    fn find(
        router: &Router<&'static str>,
        host: &str,
        method: Method,
        path: &str,
    ) -> Option<&'static str> {
        router
            .find(Some(host), &method, path, &HeaderMap::new())
            .map(|m| *m.value)
    }

    #[test]
    fn host_then_path_then_method() {
        let router = Router::build(vec![
            spec(None, "/api/{*rest}", None, "any-api"),
            spec(
                Some("api.example.com"),
                "/api/users",
                Some(&[Method::GET]),
                "exact-users-get",
            ),
            spec(Some("*.example.com"), "/api/{*rest}", None, "wild-api"),
            spec(None, "/api/users", Some(&[Method::GET]), "users-get"),
        ])
        .unwrap();
        assert_eq!(
            find(&router, "api.example.com", Method::GET, "/api/users"),
            Some("exact-users-get")
        );
        assert_eq!(
            find(&router, "API.example.com", Method::GET, "/api/users"),
            Some("exact-users-get")
        );
        // The exact host's GET-only route does not take a POST; the wildcard host does.
        assert_eq!(
            find(&router, "api.example.com", Method::POST, "/api/users"),
            Some("wild-api")
        );
        assert_eq!(
            find(&router, "x.y.example.com", Method::GET, "/api/x"),
            Some("wild-api")
        );
        assert_eq!(
            find(&router, "example.com", Method::GET, "/api/users"),
            Some("users-get")
        );
        // Method mismatch on the static pattern falls back to the catch-all.
        assert_eq!(
            find(&router, "other.org", Method::POST, "/api/users"),
            Some("any-api")
        );
        assert_eq!(find(&router, "other.org", Method::GET, "/nothing"), None);
        // A catch-all also takes its bare prefix.
        assert_eq!(
            find(&router, "other.org", Method::GET, "/api/"),
            Some("any-api")
        );
    }

    #[test]
    fn header_predicates_win_over_plain_routes() {
        let mut canary = spec(None, "/svc", None, "canary");
        canary.predicates.headers = vec![(
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        )];
        let router = Router::build(vec![spec(None, "/svc", None, "stable"), canary]).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(
            router
                .find(None, &Method::GET, "/svc", &headers)
                .map(|m| *m.value),
            Some("stable")
        );
        headers.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(
            router
                .find(None, &Method::GET, "/svc", &headers)
                .map(|m| *m.value),
            Some("canary")
        );
    }

    #[test]
    fn restricted_patterns_fall_back_by_static_prefix() {
        let router = Router::build(vec![
            spec(None, "/{*all}", None, "all"),
            spec(None, "/api/{*rest}", Some(&[Method::POST]), "api-post"),
            spec(None, "/api/v1/{id}", Some(&[Method::GET]), "v1-get"),
            spec(None, "/api/v10/{id}", None, "v10"),
            spec(None, "/apis/{x}", Some(&[Method::GET]), "apis-get"),
        ])
        .unwrap();
        assert_eq!(find(&router, "h", Method::GET, "/api/v1/7"), Some("v1-get"));
        // Longest static prefix first, the catch-all of everything last.
        assert_eq!(
            find(&router, "h", Method::POST, "/api/v1/7"),
            Some("api-post")
        );
        assert_eq!(find(&router, "h", Method::PUT, "/api/v1/7"), Some("all"));
        assert_eq!(find(&router, "h", Method::PUT, "/api/x"), Some("all"));
        assert_eq!(find(&router, "h", Method::POST, "/apis/x"), Some("all"));
        assert_eq!(find(&router, "h", Method::POST, "/api/v10/7"), Some("v10"));
    }

    #[test]
    fn first_in_file_wins_ties() {
        let router = Router::build(vec![
            spec(None, "/a", None, "first"),
            spec(None, "/a", None, "second"),
        ])
        .unwrap();
        assert_eq!(find(&router, "h", Method::GET, "/a"), Some("first"));
    }

    #[test]
    fn conflicting_patterns_are_errors() {
        let errors = Router::build(vec![
            spec(None, "/u/{id}", None, "a"),
            spec(None, "/u/{name}", None, "b"),
        ])
        .err()
        .unwrap();
        assert_eq!(errors[0].index, 1);
        assert!(Router::build(vec![spec(None, "nope", None, "a")]).is_err());
    }

    #[test]
    fn hosts_are_checked() {
        assert!(check_host("api.example.com").is_ok());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("a*.example.com").is_err());
        assert!(check_host("").is_err());
    }
}
