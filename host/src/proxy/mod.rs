//! The request's way through the gateway, in phases (after Pingora's `ProxyHttp`):
//! check the request, route it, prepare the upstream request, forward it (retrying as the
//! policy allows), then shape the response. One function per phase; errors of every phase are
//! [`ProxyError`]s, turned into a response in one place.

pub mod body;
pub mod headers;
mod plugins;
pub mod retry;
pub mod trace;
mod upgrade;

pub use upgrade::is_upgrade_request;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;

use crate::error::{ErrorKind, ProxyError, Side};
use crate::limit::{RateLimit, Verdict};
use crate::plugin::{ChainCall, RequestInfo, RequestView};
use crate::server::ConnInfo;
use crate::server::h1::ClientUpgrade;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::AccessRecord;
use crate::upstream::{Lease, Upstream, UpstreamBody};
use body::{ClientBody, LimitedIncoming, ReplayBody, RequestBody, ResponseBody};
use plugins::RequestPhaseEnd;

/// Serves one request on `snapshot`; never fails: errors become responses.
/// `head_error` is the connection's verdict on this request's HTTP/1 head, its framing and its
/// `Host` (see `server::h1::parse`): such a request is refused before anything else.
pub async fn serve(
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    mut request: Request<ClientBody>,
    head_error: Option<&'static str>,
) -> Response<ResponseBody> {
    // Room for what the gateway adds at once, rather than growing the map, and rehashing
    // it, while adding them (HTTP/1.1 requests come with the room already).
    request.headers_mut().reserve(headers::ADDED_REQUEST_FIELDS);
    let client_ip =
        headers::client_ip(conn.peer.ip(), request.headers(), &snapshot.trusted_proxies);
    let request_id = headers::ensure_request_id(request.headers_mut());
    let trace_id = trace::ensure_traceparent(request.headers_mut());
    // The client is the peer unless a trusted proxy named it.
    let client_text = if client_ip == conn.peer.ip() {
        conn.peer_text.clone()
    } else {
        headers::ip_header_value(client_ip)
    };
    let mut record = AccessRecord::new(client_text, &request, request_id.clone(), trace_id);
    let mut quota_headers = None;
    let result = match head_error {
        Some(reason) => Err(ProxyError::new(ErrorKind::BadRequest, reason)),
        None => {
            proxy(
                &snapshot,
                &conn,
                client_ip,
                request,
                &mut record,
                &mut quota_headers,
            )
            .await
        }
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            // Bad requests and unknown paths are the client's business; the rest is ours.
            match error.kind {
                ErrorKind::BadRequest
                | ErrorKind::BodyTooLarge
                | ErrorKind::ClientBody
                | ErrorKind::NoRoute
                | ErrorKind::RateLimited => {
                    tracing::debug!(request_id = ?request_id, "{error}")
                }
                _ => {
                    tracing::warn!(request_id = ?request_id, trace_id = trace_id.as_str(), route = record.route.as_ref().map_or("-", |route| &**route.name()), "{error}")
                }
            }
            if error.kind == ErrorKind::RateLimited
                && let Some(route) = &record.route
            {
                route.rate_limited();
            }
            record.error = Some(error.kind.code());
            let mut response: Response<ResponseBody> = error.to_response();
            if error.kind == ErrorKind::BadRequest {
                // The framing of this connection cannot be trusted any more.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    if let Some(quota) = quota_headers {
        // An allowed request learns what is left of its quota.
        response.headers_mut().extend(quota);
    }
    record.status = response.status().as_u16();
    response.body_mut().set_on_end(Box::new(record));
    response
}

async fn proxy(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    client_ip: IpAddr,
    mut request: Request<ClientBody>,
    record: &mut AccessRecord,
    quota_headers: &mut Option<http::HeaderMap>,
) -> Result<Response<ResponseBody>, ProxyError> {
    check_framing(&request, snapshot.max_body_bytes)?;
    let (route, rewritten_path) = find_route(snapshot, &request)?;
    record.route = Some(route.metrics.clone());
    // A limit keyed by a context value waits for the plugins that set it; the others run
    // first, so a limited client costs no plugin work.
    let (limit_now, limit_after_plugins) = match &route.rate_limit {
        Some(limit) if limit.key_kind().needs_plugins() => (None, Some(limit)),
        Some(limit) => (Some(limit), None),
        None => (None, None),
    };
    if let Some(limit) = limit_now {
        *quota_headers = Some(enforce(limit, client_ip, request.headers(), &record.ctx).await?);
    }
    let upstream = route.backend.choose().clone();
    let client_upgrade = if upgrade::is_upgrade_request(&request) {
        request.extensions_mut().remove::<ClientUpgrade>()
    } else {
        None
    };
    let (parts, incoming) = request.into_parts();

    let mut call = ChainCall::default();
    // The exchange ends with a response and the number of plugins that see it: a plugin's
    // answer (the plugins up to it) or the upstream's (all of them).
    let (mut response, ran) = 'exchange: {
        // Request phase of the route's plugins (they see the client's request as received).
        let (mut parts, buffered, incoming, rewritten_path) = if route.plugins.is_empty() {
            (parts, None, Some(incoming), rewritten_path)
        } else {
            let (body, incoming) = if route.plugins.needs_request_body() {
                let body = plugins::buffer_request(incoming, snapshot.max_body_bytes).await?;
                (Some(body), None)
            } else {
                (None, Some(incoming))
            };
            call = route.plugins.begin(RequestInfo::new(
                client_ip,
                route.name.clone(),
                record.request_id().clone(),
                &parts,
            ));
            let mut view = RequestView::new(parts, body);
            match plugins::request_phase(&route.plugins, &mut call, &mut view, &mut record.ctx)? {
                RequestPhaseEnd::Respond { response, ran } => break 'exchange (*response, ran),
                RequestPhaseEnd::Forward { path_changed } => {
                    if let Some(limit) = limit_after_plugins {
                        *quota_headers = Some(
                            enforce(limit, client_ip, &view.parts.headers, &record.ctx).await?,
                        );
                    }
                    // A plugin that set the path decides it; the route's rewrite no longer applies.
                    let rewritten_path = if path_changed { None } else { rewritten_path };
                    (view.parts, view.body, incoming, rewritten_path)
                }
            }
        };

        prepare_upstream_request(
            &mut parts,
            conn,
            &snapshot.trusted_proxies,
            &route,
            &upstream,
            rewritten_path,
            client_upgrade.is_some(),
        )?;
        let body = match (buffered, incoming) {
            (Some(bytes), _) => RequestBody::Full(Some(bytes)),
            (None, Some(incoming)) if !incoming.is_end_stream() => {
                let cap = if upstream.retry.may_replay(&parts.method) {
                    upstream.retry.max_replay_body
                } else {
                    0
                };
                RequestBody::Replay(ReplayBody::new(
                    LimitedIncoming::new(incoming, snapshot.max_body_bytes),
                    cap,
                ))
            }
            (None, _) => RequestBody::Empty,
        };
        // The whole exchange, retries and the response body included, ends by this deadline.
        let deadline = Instant::now() + route.timeout.unwrap_or(upstream.timeout);
        let (mut response, lease) = forward(&upstream, parts, body, deadline, record).await?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match client_upgrade {
                Some(client_upgrade) => Ok(upgrade::tunnel(client_upgrade, response, &conn.tasks)),
                None => Err(ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    "upstream switched protocols without being asked",
                )),
            };
        }
        headers::strip_hop_by_hop(response.headers_mut(), false, false);
        let (parts, body) = response.into_parts();
        let response = Response::from_parts(
            parts,
            ResponseBody::upstream(body)
                .with_deadline(deadline)
                .with_lease(lease),
        );
        if route.plugins.is_empty() {
            return Ok(response);
        }
        // Every plugin let the request through, so every one sees the response.
        (response, route.plugins.len())
    };

    // Response phase. Inline rather than an async helper: this runs on every request of a
    // route with plugins, and a chain that reads no body then makes no future for it.
    if ran == 0 {
        return Ok(response);
    }
    // Taken before a buffering consumes the body; merged into the map only if a plugin needs
    // them there (see `plugin::host::ResponseView`).
    let received = response.body_mut().take_received_fields();
    let buffered = if route.plugins.needs_response_body() {
        Some(plugins::buffer_response(&mut response, snapshot.max_body_bytes).await?)
    } else {
        None
    };
    plugins::response_phase(
        &route.plugins,
        &mut call,
        ran,
        &mut response,
        received,
        buffered,
        &mut record.ctx,
    )?;
    Ok(response)
}

/// Rejects requests whose framing is ambiguous (request smuggling) or too large up front.
fn check_framing(request: &Request<ClientBody>, max_body_bytes: u64) -> Result<(), ProxyError> {
    let headers = request.headers();
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first_length = lengths.next();
    if lengths.next().is_some() {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "more than one Content-Length header",
        ));
    }
    if first_length.is_some() && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if let Some(length) = first_length {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ProxyError::new(ErrorKind::BadRequest, "invalid Content-Length"))?;
        if length > max_body_bytes {
            return Err(ProxyError::new(
                ErrorKind::BodyTooLarge,
                format!("request body of {length} bytes exceeds the limit of {max_body_bytes}"),
            ));
        }
    }
    Ok(())
}

/// The request's host without port: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(request: &Request<ClientBody>) -> Option<&str> {
    let raw = match request.uri().host() {
        Some(host) => host,
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

fn find_route(
    snapshot: &Snapshot,
    request: &Request<ClientBody>,
) -> Result<(Arc<Route>, Option<String>), ProxyError> {
    let host = request_host(request);
    let path = request.uri().path();
    let found = snapshot
        .router
        .find(host, request.method(), path, request.headers())
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute, "no route matches this request"))?;
    let rewritten = found
        .value
        .rewrite
        .as_ref()
        .map(|template| template.render(&found.params));
    Ok((found.value.clone(), rewritten))
}

/// Turns the client's request head into the upstream's: hop-by-hop headers out,
/// `X-Forwarded-*` in, path rewritten, `Host` kept or rewritten, HTTP version of the upstream.
fn prepare_upstream_request(
    parts: &mut Parts,
    conn: &ConnInfo,
    trusted_proxies: &[ipnet::IpNet],
    route: &Route,
    upstream: &Upstream,
    rewritten_path: Option<String>,
    is_upgrade: bool,
) -> Result<(), ProxyError> {
    let http2_upstream = upstream.protocol.is_http2();
    headers::strip_hop_by_hop(&mut parts.headers, is_upgrade, http2_upstream);
    // HTTP/2 clients name the host in :authority; HTTP/1.1 upstreams need it in Host.
    let (original_host, host_in_place) = match parts.headers.get(header::HOST) {
        // The HTTP/1 server refuses a request with more than one Host (plugins cannot add
        // one): the field can stay as it is. Over HTTP/2 it is set again, as one field.
        Some(host) => (Some(host.clone()), parts.version != Version::HTTP_2),
        None => (
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            false,
        ),
    };
    let peer_trusted = headers::is_trusted(conn.peer.ip(), trusted_proxies);
    headers::set_forwarded(
        &mut parts.headers,
        &conn.peer_text,
        peer_trusted,
        if conn.tls { "https" } else { "http" },
        original_host.as_ref(),
    );
    match (&route.host_rewrite, original_host) {
        (Some(rewrite), _) => {
            parts.headers.insert(header::HOST, rewrite.clone());
        }
        (None, Some(host)) if !host_in_place => {
            parts.headers.insert(header::HOST, host);
        }
        _ => {}
    }
    let path_and_query = match rewritten_path {
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(path) => {
            let full = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            PathAndQuery::try_from(full).map_err(|_| {
                ProxyError::new(
                    ErrorKind::BadRequest,
                    "rewritten path is not a valid URI path",
                )
            })?
        }
    };
    // The transport completes the URI and sets the version for the target's protocol.
    parts.uri = Uri::from(path_and_query);
    Ok(())
}

/// Sends the request to a target of `upstream`, retrying as its policy allows, until `deadline`.
async fn forward(
    upstream: &Upstream,
    parts: Parts,
    body: RequestBody,
    deadline: Instant,
    record: &mut AccessRecord,
) -> Result<(Response<UpstreamBody>, Lease), ProxyError> {
    let policy = &upstream.retry;
    policy.record_request();
    // The first attempt's body is a replay of the original, so every attempt is alike.
    let (mut first_body, replay_source, whole_body) = match body {
        RequestBody::Replay(replay) => (None, Some(replay), None),
        RequestBody::Full(bytes) => (Some(RequestBody::Full(bytes.clone())), None, bytes),
        other => (Some(other), None, None),
    };
    // One set of targets for every attempt: indexes in `tried` stay meaningful.
    let set = upstream.targets_for_request(deadline).await;
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let Some(index) = upstream.pick(&set, &parts.headers, &tried) else {
            return Err(ProxyError::new(
                ErrorKind::NoHealthyTarget,
                match (&upstream.source, set.targets.is_empty()) {
                    (Some(_), true) => format!(
                        "upstream `{}` has no targets: its discovery source lists none (yet)",
                        upstream.name
                    ),
                    _ => format!("upstream `{}` has no available target", upstream.name),
                },
            ));
        };
        let target = &set.targets[index];
        tried.push(index);
        record.attempts += 1;
        record.upstream = Some(target.addr.clone());
        let body = match (&replay_source, first_body.take()) {
            (_, Some(body)) => body,
            (Some(source), None) => match source.replay() {
                Some(replay) => RequestBody::Replay(replay),
                None => {
                    return Err(ProxyError::new(
                        ErrorKind::Internal,
                        "request body cannot be replayed",
                    ));
                }
            },
            (None, None) => RequestBody::Full(whole_body.clone()),
        };

        // One clock reading for the attempt's timer and its duration (`timeout_at`, unlike
        // `timeout`, does not read the clock again).
        let sent = Instant::now();
        let remaining = deadline.saturating_duration_since(sent);
        let per_try = policy
            .per_try_timeout
            .map_or(remaining, |t| t.min(remaining));
        let outcome = match tokio::time::timeout_at(
            (sent + per_try).into(),
            upstream.transport.send(target, &parts, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ProxyError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "no response from {} within {}ms",
                    target.addr,
                    per_try.as_millis()
                ),
            )),
        };
        upstream.metrics.attempt_done(sent.elapsed());

        let failed = match &outcome {
            Ok((response, _)) => response.status().is_server_error(),
            Err(error) => error.side == Side::Upstream,
        };
        upstream.record_outcome(&set, index, failed);

        let retries_done = record.attempts - 1;
        let body_replayable = match &replay_source {
            None => true,
            Some(source) => source.replay_possible(),
        };
        let retry = retries_done < policy.attempts
            && match &outcome {
                Ok((response, _)) => {
                    policy.retries_status(response.status(), &parts.method, body_replayable)
                }
                Err(error) => policy.retries_error(error, &parts.method, body_replayable),
            }
            && policy.take_budget(outcome.as_ref().err());
        let pause = policy.backoff(record.attempts);
        if !retry || Instant::now() + pause >= deadline {
            return outcome;
        }
        tracing::debug!(upstream = %upstream.name, target = %target.addr, attempt = record.attempts, "retrying");
        upstream.metrics.retried();
        drop(outcome);
        tokio::time::sleep(pause).await;
    }
}

/// Takes a unit of the route's rate limit: the quota headers for the response, or a 429.
/// Waits only for a limit kept in a store (Redis).
async fn enforce(
    limit: &RateLimit,
    client_ip: IpAddr,
    headers: &http::HeaderMap,
    ctx: &crate::plugin::Context,
) -> Result<http::HeaderMap, ProxyError> {
    match limit.check(client_ip, headers, ctx).await {
        Verdict::Allowed(quota) => Ok(quota),
        Verdict::Limited {
            headers,
            retry_after,
        } => Err(ProxyError::new(
            ErrorKind::RateLimited,
            format!(
                "rate limit exceeded; retry in {:.1} s",
                retry_after.as_secs_f64()
            ),
        )
        .with_headers(headers)),
    }
}
