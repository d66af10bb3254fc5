//! The plugin phases of a request: the route's chain sees the request before it goes upstream
//! (and may change it or answer it) and the response before it goes back. Bodies are buffered
//! only when a plugin of the chain declared it reads them, and then only up to
//! `max_body_bytes`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::body::{BoxError, ClientBody, ResponseBody, ResponseTimedOut, merge_fields};
use crate::error::{ErrorKind, ProxyError};
use crate::http1::ReceivedFields;
use crate::plugin::{
    ChainCall, Context, PluginChain, PluginFailure, Reply, RequestOutcome, RequestView,
    ResponseView,
};

/// How the request phase ended.
pub enum RequestPhaseEnd {
    /// Go upstream with the view's parts and body.
    Forward {
        /// A plugin changed the path: the route's `rewrite` no longer applies.
        path_changed: bool,
    },
    /// A plugin answered; the first `ran` plugins see the response. (Boxed: answers are
    /// the rare case, and the common one should not carry their size.)
    Respond {
        response: Box<Response<ResponseBody>>,
        ran: usize,
    },
}

fn plugin_error(failure: PluginFailure) -> ProxyError {
    ProxyError::new(ErrorKind::PluginFailed, failure.message)
}

/// Runs the request phase on the proxy's own request (`view.body` is the request body when
/// the chain reads it, buffered by [`buffer_request`]). Not async: buffering is the
/// caller's, so that a chain that reads no body costs no future; and the request is changed
/// where it lies, not moved in and out.
pub fn request_phase(
    chain: &PluginChain,
    call: &mut ChainCall,
    view: &mut RequestView,
    ctx: &mut Context,
) -> Result<RequestPhaseEnd, ProxyError> {
    match chain.on_request(call, view, ctx).map_err(plugin_error)? {
        RequestOutcome::Continue => {
            let path_changed = call
                .info()
                .is_some_and(|sent| view.parts.uri.path() != sent.uri.path());
            if let Some(body) = &view.body {
                view.parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                view.parts.headers.remove(header::TRANSFER_ENCODING);
            }
            Ok(RequestPhaseEnd::Forward { path_changed })
        }
        RequestOutcome::Respond { reply, ran } => Ok(RequestPhaseEnd::Respond {
            response: Box::new(reply_response(reply)),
            ran,
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

/// The upstream's response body (and trailers), read whole for a chain that reads it; the
/// response is left with an empty body until the phase gives it the plugins' one.
pub async fn buffer_response(
    response: &mut Response<ResponseBody>,
    max_body_bytes: u64,
) -> Result<(Bytes, Option<HeaderMap>), ProxyError> {
    let body = std::mem::replace(response.body_mut(), ResponseBody::empty());
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let collected = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| response_body_error(err, max_body_bytes))?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// Runs the response phase of the first `ran` plugins on `response`, in place. `buffered` is
/// its body and trailers when the chain reads them ([`buffer_response`]); otherwise the body
/// streams through afterwards. Not async, like [`request_phase`].
pub fn response_phase(
    chain: &PluginChain,
    call: &mut ChainCall,
    ran: usize,
    response: &mut Response<ResponseBody>,
    received: Option<ReceivedFields>,
    buffered: Option<(Bytes, Option<HeaderMap>)>,
    ctx: &mut Context,
) -> Result<(), ProxyError> {
    let is_buffered = buffered.is_some();
    let (body, trailers) = buffered.map_or((None, None), |(body, trailers)| (Some(body), trailers));
    let mut view = ResponseView {
        status: response.status(),
        headers: std::mem::take(response.headers_mut()),
        received,
        body,
        trailers,
        body_visible: false,
    };
    chain
        .on_response(call, ran, &mut view, ctx)
        .map_err(plugin_error)?;
    *response.status_mut() = view.status;
    // Fields no plugin needed in the map go back to the body they came with, to be written
    // out as received; a body the plugins replaced cannot carry them.
    let received = view.received.take();
    if is_buffered {
        if let Some(fields) = received {
            merge_fields(fields, &mut view.headers)?;
        }
        let body = view.body.unwrap_or_default();
        view.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        view.headers.remove(header::TRANSFER_ENCODING);
        *response.body_mut() = ResponseBody::full(body).with_trailers(view.trailers);
    } else if let Some(fields) = received
        && let Err(fields) = response.body_mut().restore_received_fields(fields)
    {
        merge_fields(fields, &mut view.headers)?;
    }
    *response.headers_mut() = view.headers;
    Ok(())
}
