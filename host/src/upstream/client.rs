//! Pooled HTTP clients for upstreams: one hyper-util client per distinct connection setting
//! (protocol, connect timeout, trusted CAs), shared by every upstream that uses it, so that
//! keep-alive connections are pooled per target across routes and upstreams.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Protocol;
use crate::proxy::body::RequestBody;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    /// CA bundle for TLS upstreams; `None` trusts the public web roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone)]
pub enum UpstreamClient {
    Plain(Client<HttpConnector, RequestBody>),
    Tls(Client<HttpsConnector<HttpConnector>, RequestBody>),
}

impl UpstreamClient {
    pub fn request(&self, request: Request<RequestBody>) -> ResponseFuture {
        match self {
            UpstreamClient::Plain(client) => client.request(request),
            UpstreamClient::Tls(client) => client.request(request),
        }
    }

    fn build(key: &ClientKey) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(key.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_only(key.protocol.is_http2());
        if !key.protocol.is_tls() {
            return Ok(UpstreamClient::Plain(builder.build(http)));
        }
        http.enforce_http(false);
        let roots = match &key.ca_file {
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Some(path) => load_roots(path)?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS setup failed: {err}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // hyper-rustls sets ALPN from the enabled versions: exactly the upstream's protocol.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let https = if key.protocol.is_http2() {
            https.enable_http2().wrap_connector(http)
        } else {
            https.enable_http1().wrap_connector(http)
        };
        Ok(UpstreamClient::Tls(builder.build(https)))
    }
}

fn load_roots(path: &PathBuf) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read CA file {}: {err}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|err| format!("bad certificate in {}: {err}", path.display()))?;
        roots
            .add(cert)
            .map_err(|err| format!("unusable CA certificate in {}: {err}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {} holds no certificates", path.display()));
    }
    Ok(roots)
}

/// The clients of one snapshot, by setting.
#[derive(Default)]
pub struct ClientCache {
    clients: HashMap<ClientKey, Arc<UpstreamClient>>,
}

impl ClientCache {
    pub fn get_or_build(&mut self, key: ClientKey) -> Result<Arc<UpstreamClient>, String> {
        if let Some(client) = self.clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(UpstreamClient::build(&key)?);
        self.clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The response type every client returns.
pub type UpstreamResponse = Response<Incoming>;
