//! etcd discovery: every key under a prefix holds one target, `{"addr": "host:port", "weight": N}`.
//!
//! The provider reads the whole prefix once (a Range, which also gives the store's revision),
//! then watches the prefix from the next revision on and applies each change to its copy. When
//! the connection or the watch breaks it reconnects, to the next member, backing off, and
//! resumes the watch from the revision after the last change it applied: etcd replays what
//! happened meanwhile, so no change is missed and none is applied twice. Only when that
//! revision has been compacted away does it read the prefix again.

mod client;
mod proto;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::Authority;
use parking_lot::Mutex;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use self::client::{Connection, Watch};
use self::proto::{Event, EventType, RangeResponse, WatchResponse};
use super::{Endpoint, Feed, Provider};
use crate::config::{EtcdDiscoveryConfig, Spanned};

/// Builds the provider for `discovery.etcd`, or says what is wrong with the table.
pub fn provider(
    config: &Spanned<EtcdDiscoveryConfig>,
) -> Result<Arc<dyn Provider>, (Range<usize>, String)> {
    let table = config.get_ref();
    if table.endpoints.get_ref().is_empty() {
        return Err((
            table.endpoints.span(),
            "etcd `endpoints` is empty: list at least one `host:port`".into(),
        ));
    }
    let endpoints = table
        .endpoints
        .get_ref()
        .iter()
        .map(|endpoint| parse_endpoint(endpoint))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| (table.endpoints.span(), message))?;
    let prefix = table.prefix.get_ref();
    if prefix.is_empty() {
        return Err((
            table.prefix.span(),
            "etcd `prefix` is empty: name the folder of the service's keys, e.g. \"/services/users/\""
                .into(),
        ));
    }
    Ok(Arc::new(Etcd {
        endpoints,
        prefix: prefix.clone(),
        range_end: prefix_end(prefix.as_bytes()),
        timeout: table.timeout.get(),
        status: Mutex::new(Status::default()),
    }))
}

/// `host:port` or `http://host:port`, as `host:port`.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let address = match endpoint.split_once("://") {
        None => endpoint,
        Some(("http", address)) => address.trim_end_matches('/'),
        Some(("https", _)) => {
            return Err(format!(
                "etcd endpoint `{endpoint}`: TLS to etcd is not supported in this build; use http://"
            ));
        }
        Some((scheme, _)) => {
            return Err(format!(
                "etcd endpoint `{endpoint}`: unknown scheme `{scheme}`; give `host:port`"
            ));
        }
    };
    match address.parse::<Authority>() {
        Ok(authority) if authority.port_u16().is_some() && !address.contains('@') => {
            Ok(address.to_owned())
        }
        _ => Err(format!("etcd endpoint `{endpoint}` is not `host:port`")),
    }
}

/// The end of the key range that holds every key starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff increased.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: "\0" means every key from `prefix` on.
    vec![0]
}

struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    range_end: Vec<u8>,
    timeout: Duration,
    status: Mutex<Status>,
}

/// What `GET /upstreams` shows of the provider's own state.
#[derive(Default)]
struct Status {
    /// The member the watch runs on, while it runs.
    member: Option<String>,
    /// The revision the reported list is current at.
    revision: i64,
    /// Keys left out of the list, with why.
    skipped: Vec<(String, String)>,
}

/// How a session with one member ended.
enum Ended {
    /// The upstream is gone: the provider ends.
    Gone,
    /// The connection or the watch broke: another member (or the same one) is tried next.
    Broken(String),
}

impl Provider for Etcd {
    fn describe(&self) -> Value {
        let status = self.status.lock();
        let skipped: Vec<Value> = status
            .skipped
            .iter()
            .map(|(key, error)| json!({ "key": key, "error": error }))
            .collect();
        json!({
            "kind": "etcd",
            "endpoints": self.endpoints,
            "prefix": self.prefix,
            "member": status.member,
            "revision": status.revision,
            "skipped": skipped,
        })
    }

    fn run(self: Arc<Self>, feed: Feed) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tokio::select! {
                () = feed.stopped() => {}
                () = self.follow(&feed) => {}
            }
        })
    }
}

impl Etcd {
    /// Sessions with the members in turn, until the upstream is gone.
    async fn follow(&self, feed: &Feed) {
        // `None` until the prefix has been read, and again after the watch's revision was
        // compacted; kept across sessions so that a new one resumes where the last one was.
        let mut view: Option<View> = None;
        let mut backoff = Backoff::default();
        for member in self.endpoints.iter().cycle() {
            let error = match self.session(member, feed, &mut view, &mut backoff).await {
                Ended::Gone => return,
                Ended::Broken(error) => error,
            };
            self.status.lock().member = None;
            if !feed.failed(format!("etcd {member}: {error}")) {
                return;
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    /// One connection to `member`: reads the prefix if `view` has nothing to resume from, then
    /// follows the watch until something breaks.
    async fn session(
        &self,
        member: &str,
        feed: &Feed,
        view: &mut Option<View>,
        backoff: &mut Backoff,
    ) -> Ended {
        let mut connection = match Connection::open(member, self.timeout).await {
            Ok(connection) => connection,
            Err(error) => return Ended::Broken(error),
        };
        loop {
            let current = match view {
                Some(current) => current,
                None => {
                    let read = match self.read_prefix(&mut connection).await {
                        Ok(read) => read,
                        Err(error) => return Ended::Broken(error),
                    };
                    if !self.report(feed, &read) {
                        return Ended::Gone;
                    }
                    view.insert(read)
                }
            };
            let watch = connection
                .watch(
                    self.prefix.as_bytes(),
                    &self.range_end,
                    current.revision + 1,
                )
                .await;
            let ended = match watch {
                Ok(watch) => {
                    self.follow_watch(member, watch, feed, current, backoff)
                        .await
                }
                Err(error) => return Ended::Broken(error),
            };
            match ended {
                WatchEnded::Compacted { oldest } => {
                    tracing::info!(
                        upstream = feed.upstream_name().as_deref(),
                        revision = current.revision,
                        oldest,
                        "etcd discovery: the watch's revision was compacted; reading the prefix again"
                    );
                    *view = None;
                }
                WatchEnded::Other(ended) => return ended,
            }
        }
    }

    async fn read_prefix(&self, connection: &mut Connection) -> Result<View, String> {
        let response = connection
            .range(self.prefix.as_bytes(), &self.range_end)
            .await?;
        View::from_range(response)
    }

    /// Applies the watch's responses to `view` and reports each changed list.
    async fn follow_watch(
        &self,
        member: &str,
        mut watch: Watch,
        feed: &Feed,
        view: &mut View,
        backoff: &mut Backoff,
    ) -> WatchEnded {
        loop {
            let response = match watch.next().await {
                Ok(response) => response,
                Err(error) => return WatchEnded::Other(Ended::Broken(error)),
            };
            let changed = match classify(&response) {
                WatchStep::Created => {
                    // Readable again: the report clears the source's error even when nothing
                    // changed while it was away.
                    backoff.reset();
                    self.status.lock().member = Some(member.to_owned());
                    true
                }
                WatchStep::Events => view.apply(&response.events),
                WatchStep::Compacted { oldest } => return WatchEnded::Compacted { oldest },
                WatchStep::Canceled(reason) => {
                    return WatchEnded::Other(Ended::Broken(format!("watch canceled: {reason}")));
                }
            };
            if changed && !self.report(feed, view) {
                return WatchEnded::Other(Ended::Gone);
            }
        }
    }

    /// Reports `view`'s list; false when the upstream is gone.
    fn report(&self, feed: &Feed, view: &View) -> bool {
        {
            let mut status = self.status.lock();
            status.revision = view.revision;
            status.skipped = view.skipped();
        }
        feed.update(view.endpoints())
    }
}

enum WatchEnded {
    /// The revision to resume from is gone: the prefix must be read again.
    Compacted {
        oldest: i64,
    },
    Other(Ended),
}

/// What one watch response means for the provider.
#[derive(Debug, PartialEq)]
enum WatchStep {
    /// The watch is in place (no events yet).
    Created,
    /// Changes (or, with no events, a progress notice, which changes nothing).
    Events,
    /// Canceled because the start revision was compacted; `oldest` is the oldest one left.
    Compacted { oldest: i64 },
    /// Canceled for another reason (permissions, the member shutting down).
    Canceled(String),
}

fn classify(response: &WatchResponse) -> WatchStep {
    // A cancel can come with `created` set (a watch refused at once), so it is looked at first.
    if response.canceled || response.compact_revision > 0 {
        if response.compact_revision > 0 {
            return WatchStep::Compacted {
                oldest: response.compact_revision,
            };
        }
        return WatchStep::Canceled(if response.cancel_reason.is_empty() {
            "no reason given".into()
        } else {
            response.cancel_reason.clone()
        });
    }
    if response.created {
        WatchStep::Created
    } else {
        WatchStep::Events
    }
}

/// The provider's copy of the prefix: each key's target (or why it has none), current at
/// `revision`.
#[derive(Debug, Default)]
struct View {
    entries: BTreeMap<Vec<u8>, Result<Endpoint, String>>,
    /// The Range's revision, then that of the last event applied.
    revision: i64,
}

impl View {
    fn from_range(response: RangeResponse) -> Result<View, String> {
        let revision = response
            .header
            .map(|header| header.revision)
            .filter(|&revision| revision > 0)
            .ok_or("range: the response has no revision")?;
        let entries = response
            .kvs
            .into_iter()
            .map(|kv| {
                let entry = parse_entry(&kv.key, &kv.value);
                (kv.key, entry)
            })
            .collect();
        Ok(View { entries, revision })
    }

    /// Applies one watch response's events; returns whether any was new.
    ///
    /// An event at or below `revision` is in the view already (the Range or an earlier watch
    /// saw it), so it is passed over: replaying a watch from an older revision changes
    /// nothing. `revision` moves only after the whole response, because the events of one
    /// transaction share a revision and arrive together.
    fn apply(&mut self, events: &[Event]) -> bool {
        let seen = self.revision;
        let mut applied = false;
        for event in events {
            let Some(kv) = &event.kv else { continue };
            if kv.mod_revision <= seen {
                continue;
            }
            match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => {
                    self.entries
                        .insert(kv.key.clone(), parse_entry(&kv.key, &kv.value));
                }
                Ok(EventType::Delete) => {
                    self.entries.remove(&kv.key);
                }
                // A kind of event from a newer etcd: nothing this view can apply.
                Err(_) => continue,
            }
            self.revision = self.revision.max(kv.mod_revision);
            applied = true;
        }
        applied
    }

    /// The targets, in key order.
    fn endpoints(&self) -> Vec<Endpoint> {
        self.entries
            .values()
            .filter_map(|entry| entry.as_ref().ok().cloned())
            .collect()
    }

    fn skipped(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| {
                let error = entry.as_ref().err()?;
                Some((String::from_utf8_lossy(key).into_owned(), error.clone()))
            })
            .collect()
    }
}

/// A key's value as a target. A bad value costs only its own key (kept in the view, and shown
/// by `GET /upstreams`, with the reason), never the whole list.
fn parse_entry(key: &[u8], value: &[u8]) -> Result<Endpoint, String> {
    let parsed = parse_value(value);
    if let Err(error) = &parsed {
        tracing::debug!(
            key = %String::from_utf8_lossy(key),
            "etcd discovery: key skipped: {error}"
        );
    }
    parsed
}

fn parse_value(value: &[u8]) -> Result<Endpoint, String> {
    #[derive(Deserialize)]
    struct Entry {
        addr: String,
        #[serde(default = "one")]
        weight: u32,
    }
    fn one() -> u32 {
        1
    }
    let entry: Entry = serde_json::from_slice(value)
        .map_err(|err| format!("not {{\"addr\": \"host:port\", \"weight\": N}}: {err}"))?;
    if entry.weight == 0 {
        return Err("weight must be at least 1".into());
    }
    Ok(Endpoint::new(entry.addr, entry.weight))
}

/// Pauses between attempts: 100 ms doubling up to 5 s, ±20 % so that the gateways of a fleet
/// do not all come back to a restarted etcd at the same moment.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        pause.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{KeyValue, ResponseHeader};
    use super::*;

    fn put(key: &str, value: &str, revision: i64) -> Event {
        event(EventType::Put, key, value, revision)
    }

    fn delete(key: &str, revision: i64) -> Event {
        event(EventType::Delete, key, "", revision)
    }

    fn event(kind: EventType, key: &str, value: &str, revision: i64) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: revision,
                value: value.into(),
            }),
        }
    }

    fn range(revision: i64, kvs: &[(&str, &str)]) -> RangeResponse {
        RangeResponse {
            header: Some(ResponseHeader { revision }),
            kvs: kvs
                .iter()
                .map(|(key, value)| KeyValue {
                    key: (*key).into(),
                    mod_revision: revision,
                    value: (*value).into(),
                })
                .collect(),
        }
    }

    fn addrs(view: &View) -> Vec<(String, u32)> {
        view.endpoints()
            .into_iter()
            .map(|endpoint| (endpoint.addr, endpoint.weight))
            .collect()
    }

    #[test]
    fn values_parse_with_a_default_weight_and_extra_fields_ignored() {
        assert_eq!(
            parse_value(br#"{"addr": "10.0.0.1:80", "weight": 3}"#),
            Ok(Endpoint::new("10.0.0.1:80", 3))
        );
        assert_eq!(
            parse_value(br#"{"addr": "a:1", "zone": "eu"}"#),
            Ok(Endpoint::new("a:1", 1))
        );
    }

    #[test]
    fn bad_values_are_errors_that_say_why() {
        for (value, expected) in [
            (&b"10.0.0.1:80"[..], "not {\"addr\""),
            (br#"{"weight": 2}"#, "missing field `addr`"),
            (br#"{"addr": 80}"#, "invalid type"),
            (br#"{"addr": "a:1", "weight": -1}"#, "invalid value"),
            (br#"{"addr": "a:1", "weight": 0}"#, "at least 1"),
        ] {
            let error = parse_value(value).unwrap_err();
            assert!(error.contains(expected), "{value:?}: {error}");
        }
    }

    #[test]
    fn a_bad_value_skips_its_key_only() {
        let view = View::from_range(range(
            7,
            &[
                ("/s/a", r#"{"addr": "a:1"}"#),
                ("/s/b", "garbage"),
                ("/s/c", r#"{"addr": "c:1", "weight": 2}"#),
            ],
        ))
        .unwrap();
        assert_eq!(view.revision, 7);
        assert_eq!(addrs(&view), [("a:1".into(), 1), ("c:1".into(), 2)]);
        let skipped = view.skipped();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, "/s/b");
    }

    #[test]
    fn a_range_without_a_revision_is_an_error() {
        let mut response = range(0, &[]);
        assert!(View::from_range(response.clone()).is_err());
        response.header = None;
        assert!(View::from_range(response).is_err());
    }

    #[test]
    fn events_put_replace_and_delete_keys() {
        let mut view = View::from_range(range(10, &[("/s/a", r#"{"addr": "a:1"}"#)])).unwrap();
        assert!(view.apply(&[put("/s/b", r#"{"addr": "b:1"}"#, 11)]));
        assert_eq!(addrs(&view), [("a:1".into(), 1), ("b:1".into(), 1)]);
        assert!(view.apply(&[
            put("/s/a", r#"{"addr": "a:1", "weight": 5}"#, 12),
            delete("/s/b", 13),
        ]));
        assert_eq!(addrs(&view), [("a:1".into(), 5)]);
        assert_eq!(view.revision, 13);
        // A key fixed later comes back into the list.
        assert!(view.apply(&[put("/s/a", "oops", 14)]));
        assert!(view.endpoints().is_empty());
        assert!(view.apply(&[put("/s/a", r#"{"addr": "a:2"}"#, 15)]));
        assert_eq!(addrs(&view), [("a:2".into(), 1)]);
        assert!(view.skipped().is_empty());
    }

    #[test]
    fn replayed_events_are_not_applied_twice() {
        let mut view = View::from_range(range(10, &[("/s/a", r#"{"addr": "a:1"}"#)])).unwrap();
        // Already in the Range: a watch from an older revision replays it.
        assert!(!view.apply(&[delete("/s/a", 9), delete("/s/a", 10)]));
        assert_eq!(addrs(&view), [("a:1".into(), 1)]);
        assert!(view.apply(&[delete("/s/a", 11)]));
        // The same delete, and a stale put, again: nothing changes.
        assert!(!view.apply(&[delete("/s/a", 11), put("/s/a", r#"{"addr": "a:1"}"#, 11)]));
        assert!(view.endpoints().is_empty());
        assert_eq!(view.revision, 11);
    }

    #[test]
    fn the_events_of_one_transaction_share_a_revision_and_all_apply() {
        let mut view = View::from_range(range(3, &[])).unwrap();
        assert!(view.apply(&[
            put("/s/a", r#"{"addr": "a:1"}"#, 4),
            put("/s/b", r#"{"addr": "b:1"}"#, 4),
        ]));
        assert_eq!(addrs(&view), [("a:1".into(), 1), ("b:1".into(), 1)]);
        assert_eq!(view.revision, 4);
    }

    #[test]
    fn watch_responses_are_classified_cancels_first() {
        let response = |created, canceled, compact_revision, reason: &str| WatchResponse {
            header: None,
            created,
            canceled,
            compact_revision,
            cancel_reason: reason.into(),
            events: Vec::new(),
        };
        assert_eq!(classify(&response(true, false, 0, "")), WatchStep::Created);
        assert_eq!(classify(&response(false, false, 0, "")), WatchStep::Events);
        assert_eq!(
            classify(&response(false, true, 42, "")),
            WatchStep::Compacted { oldest: 42 }
        );
        assert_eq!(
            classify(&response(true, true, 0, "permission denied")),
            WatchStep::Canceled("permission denied".into())
        );
    }

    #[test]
    fn the_range_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/services/user/"), b"/services/user0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn endpoints_are_host_port_or_plain_http() {
        assert_eq!(parse_endpoint("127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(
            parse_endpoint("http://etcd-0.etcd:2379/").unwrap(),
            "etcd-0.etcd:2379"
        );
        assert_eq!(parse_endpoint("[::1]:2379").unwrap(), "[::1]:2379");
        for bad in ["127.0.0.1", "https://etcd:2379", "unix://x:1", "u@h:1", ""] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause()).collect();
        let nominal = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for (pause, nominal) in pauses.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *pause >= nominal.mul_f64(0.8) && *pause <= nominal.mul_f64(1.2),
                "{pause:?} vs {nominal:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(120));
    }
}
