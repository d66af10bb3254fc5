//! The plugin phases of a request: the route's chain sees the request before it goes upstream
//! (and may change it or answer it) and the response before it goes back. Bodies are buffered
//! only when a plugin of the chain declared it reads them, and then only up to
//! `max_body_bytes`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::body::{BoxError, ClientBody, ResponseBody, ResponseTimedOut, merge_fields};
use crate::error::{ErrorKind, ProxyError};
use crate::http1::ReceivedFields;
use crate::plugin::{
    ChainCall, Context, PluginChain, PluginFailure, Reply, RequestInfo, RequestOutcome,
    RequestView, ResponseView,
};

/// The request after the request phase.
pub enum AfterRequest {
    /// Go upstream with these parts; `body` is `Some` when it was buffered for the plugins.
    Forward {
        parts: Parts,
        body: Option<Bytes>,
        incoming: Option<ClientBody>,
        /// A plugin changed the path: the route's `rewrite` no longer applies.
        path_changed: bool,
        call: ChainCall,
    },
    /// A plugin answered; the first `ran` plugins see the response.
    Respond {
        response: Response<ResponseBody>,
        ran: usize,
        call: ChainCall,
    },
}

fn plugin_error(failure: PluginFailure) -> ProxyError {
    ProxyError::new(ErrorKind::PluginFailed, failure.message)
}

/// Runs the request phase. `body` is the request body when the chain reads it (buffered by
/// [`buffer_request`]); otherwise `incoming` still holds it, untouched. Not async: buffering
/// is the caller's, so that a chain that reads no body costs no future.
pub fn request_phase(
    chain: &PluginChain,
    parts: Parts,
    body: Option<Bytes>,
    incoming: Option<ClientBody>,
    identity: (IpAddr, Arc<str>, HeaderValue),
    ctx: &mut Context,
) -> Result<AfterRequest, ProxyError> {
    let (client_ip, route, request_id) = identity;
    let info = RequestInfo::new(client_ip, route, request_id, &parts);
    let original_path = info.uri.clone();
    let mut view = RequestView {
        parts,
        body,
        body_visible: false,
        reply: None,
    };
    let mut call = chain.begin(info);
    match chain
        .on_request(&mut call, &mut view, ctx)
        .map_err(plugin_error)?
    {
        RequestOutcome::Continue => {
            let path_changed = view.parts.uri.path() != original_path.path();
            if let Some(body) = &view.body {
                view.parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                view.parts.headers.remove(header::TRANSFER_ENCODING);
            }
            Ok(AfterRequest::Forward {
                parts: view.parts,
                body: view.body,
                incoming,
                path_changed,
                call,
            })
        }
        RequestOutcome::Respond { reply, ran } => Ok(AfterRequest::Respond {
            response: reply_response(reply),
            ran,
            call,
        }),
    }
}

/// The request body, read whole for a chain that reads it.
pub async fn buffer_request(
    incoming: ClientBody,
    max_body_bytes: u64,
) -> Result<Bytes, ProxyError> {
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    match Limited::new(incoming, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ProxyError::new(
            ErrorKind::BodyTooLarge,
            format!("request body exceeds {max_body_bytes} bytes"),
        )),
        Err(err) => Err(
            ProxyError::new(ErrorKind::ClientBody, "the client's request body failed")
                .with_source(err),
        ),
    }
}

/// A plugin's direct answer as a response. Headers the gateway cannot send are dropped with
/// a warning rather than failing the request.
fn reply_response(reply: Reply) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            // Framing and connection headers are the gateway's: a wrong Content-Length from a
            // plugin must not desynchronise the client's connection.
            (Ok(name), Ok(_)) if crate::plugin::reserved_header(&name) => {
                tracing::warn!(
                    "plugin reply header `{name}` is managed by the gateway and was dropped"
                );
            }
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!("plugin reply header `{name}` is invalid and was dropped"),
        }
    }
    response
}

/// Why the upstream's response body could not be buffered for the plugins.
fn response_body_error(err: BoxError, max_body_bytes: u64) -> ProxyError {
    let (kind, message) = if err.is::<http_body_util::LengthLimitError>() {
        (
            ErrorKind::ResponseTooLarge,
            format!(
                "the upstream's response body exceeds max_body_bytes ({max_body_bytes}), which the route's plugins read whole"
            ),
        )
    } else if err.is::<ResponseTimedOut>() {
        (
            ErrorKind::UpstreamTimeout,
            "the upstream's response body did not arrive in time".to_owned(),
        )
    } else {
        (
            ErrorKind::UpstreamReset,
            "the upstream's response body failed before it was complete".to_owned(),
        )
    };
    ProxyError::new(kind, message).with_source(err)
}

/// The response body the response phase works on.
pub enum ResponseSource {
    /// The chain does not read bodies: the body streams through afterwards.
    Streaming(ResponseBody),
    /// Read whole by [`buffer_response`]: the body and its trailers.
    Buffered(Bytes, Option<HeaderMap>),
}

/// The upstream's response body (and trailers), read whole for a chain that reads it.
pub async fn buffer_response(
    body: ResponseBody,
    max_body_bytes: u64,
) -> Result<ResponseSource, ProxyError> {
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let collected = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| response_body_error(err, max_body_bytes))?;
    let trailers = collected.trailers().cloned();
    Ok(ResponseSource::Buffered(collected.to_bytes(), trailers))
}

/// Runs the response phase of the first `ran` plugins. Not async, like [`request_phase`].
pub fn response_phase(
    chain: &PluginChain,
    call: &mut ChainCall,
    ran: usize,
    parts: http::response::Parts,
    received: Option<ReceivedFields>,
    body: ResponseSource,
    ctx: &mut Context,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (buffered, trailers, streaming) = match body {
        ResponseSource::Streaming(body) => (None, None, Some(body)),
        ResponseSource::Buffered(body, trailers) => (Some(body), trailers, None),
    };
    let mut view = ResponseView {
        parts,
        received,
        body: buffered,
        trailers,
        body_visible: false,
    };
    chain
        .on_response(call, ran, &mut view, ctx)
        .map_err(plugin_error)?;
    // Fields no plugin needed in the map go back to the body they came with, to be written
    // out as received; a body the plugins replaced cannot carry them.
    let received = view.received.take();
    let body = match (streaming, view.body) {
        (Some(mut streaming), _) => {
            if let Some(fields) = received
                && let Err(fields) = streaming.restore_received_fields(fields)
            {
                merge_fields(fields, &mut view.parts.headers)?;
            }
            streaming
        }
        (None, body) => {
            if let Some(fields) = received {
                merge_fields(fields, &mut view.parts.headers)?;
            }
            let body = body.unwrap_or_default();
            view.parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            view.parts.headers.remove(header::TRANSFER_ENCODING);
            ResponseBody::full(body).with_trailers(view.trailers)
        }
    };
    Ok(Response::from_parts(view.parts, body))
}
