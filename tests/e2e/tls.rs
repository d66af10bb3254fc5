//! The HTTPS listener (ALPN h2 and http/1.1) and HTTPS upstreams.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::*;

/// A self-signed certificate for localhost and 127.0.0.1, written into `dir`.
fn write_certificate(dir: &std::path::Path) -> String {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    std::fs::write(dir.join("gateway.pem"), &cert_pem).unwrap();
    std::fs::write(
        dir.join("gateway.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    cert_pem
}

fn tls_client(
    cert_pem: &str,
    alpn: &[u8],
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if alpn == b"h2" {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(alpn == b"h2")
        .build(connector)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_listener_speaks_h2_and_http1_by_alpn() {
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = write_certificate(dir.path());
    let config = format!(
        "{SERVER}\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    );
    let gateway = GatewayProcess::start_in(dir, &config);
    let tls_addr = gateway.tls_addr.expect("TLS listener");
    for (alpn, version) in [
        (&b"h2"[..], Version::HTTP_2),
        (&b"http/1.1"[..], Version::HTTP_11),
    ] {
        let client = tls_client(&cert_pem, alpn);
        let request = Request::get(format!("https://localhost:{}/secure", tls_addr.port()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(seen["version"], "HTTP/1.1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_own_ca() {
    let upstream = TestUpstream::start("app").await;
    // The TLS-terminating gateway in front of the plain upstream is the HTTPS upstream.
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path());
    let front = format!(
        "{SERVER}\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    );
    let tls_gateway = GatewayProcess::start_in(dir, &front);
    let tls_addr = tls_gateway.tls_addr.unwrap();
    let ca = tls_gateway.dir.path().join("gateway.pem");
    for protocol in ["https", "h2"] {
        let config = format!(
            "{SERVER}\n[upstreams.secure]\ntargets = [{{ addr = \"localhost:{}\" }}]\nprotocol = \"{protocol}\"\ntls = {{ ca = \"{}\" }}\n[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"secure\"\n",
            tls_addr.port(),
            ca.display()
        );
        let gateway = GatewayProcess::start(&config);
        let reply = HttpClient::http1().get(&gateway.url("/through-tls")).await;
        assert_eq!(reply.status, 200, "{protocol}: {}", reply.text());
        assert_eq!(reply.json()["uri"], "/through-tls");
    }

    // Without the CA the upstream's certificate is refused.
    let config = format!(
        "{SERVER}\n[upstreams.secure]\ntargets = [{{ addr = \"localhost:{}\" }}]\nprotocol = \"https\"\n[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"secure\"\n",
        tls_addr.port()
    );
    let gateway = GatewayProcess::start(&config);
    let reply = HttpClient::http1().get(&gateway.url("/x")).await;
    assert_eq!(reply.status, 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_certificate_on_disk_serves_new_connections() {
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let old_pem = write_certificate(dir.path());
    let config = format!(
        "{SERVER}\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    );
    let gateway = GatewayProcess::start_in(dir, &config);
    let url = format!("https://localhost:{}/", gateway.tls_addr.unwrap().port());
    let get = |pem: String| {
        let url = url.clone();
        async move {
            let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            tls_client(&pem, b"http/1.1").request(request).await
        }
    };
    assert_eq!(get(old_pem.clone()).await.unwrap().status(), 200);

    // Rotated on disk (the key first, then the certificate): the watcher reloads, and new
    // handshakes present the new certificate, which a client trusting only the old one refuses.
    let new_pem = write_certificate(gateway.dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while get(new_pem.clone()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", gateway.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        get(old_pem).await.is_err(),
        "the old certificate is no longer served"
    );
}
