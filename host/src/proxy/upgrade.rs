//! `Upgrade` requests (WebSocket and others): the handshake is proxied like any request; once
//! the upstream answers 101, both connections are handed over and bytes are copied both ways
//! until either side closes.

use http::{Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::body::ResponseBody;
use super::headers;
use crate::server::h1::ClientUpgrade;
use crate::upstream::UpstreamBody;

/// An HTTP/1.1 request asking to switch protocols.
pub fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request.version() == http::Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Answers the client with the upstream's 101 and joins the two upgraded connections.
pub fn tunnel(
    client: ClientUpgrade,
    mut response: Response<UpstreamBody>,
    tasks: &TaskTracker,
) -> Response<ResponseBody> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true, false);
    tasks.spawn(async move {
        let (client, upstream) = tokio::join!(client.connection(), upstream);
        match (client, upstream) {
            (Some(mut client), Ok(upstream)) => {
                let mut upstream = TokioIo::new(upstream);
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!("upgraded connection ended: {err}");
                }
            }
            (None, _) => {
                tracing::debug!("upgrade failed: the client's connection was not handed over")
            }
            (_, Err(err)) => tracing::debug!("upgrade failed: {err}"),
        }
    });
    Response::from_parts(parts, ResponseBody::empty())
}
