//! `wasmgate demo`: two small in-process upstreams and an embedded config in front of them, so
//! a newcomer sees routing, rewriting, a weighted canary split and header-based routing with
//! nothing but the binary.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{self, LoadedConfig};

pub struct Demo {
    pub config: LoadedConfig,
}

/// Starts the demo upstreams and returns the config that fronts them.
pub async fn start(listen: &str) -> io::Result<Demo> {
    let v1 = spawn_upstream("users-v1").await?;
    let v2 = spawn_upstream("users-v2").await?;
    let mut text = demo_config(listen, v1, v2);
    if let Some(plugin) = write_demo_plugin()? {
        text.push_str(&format!(
            r#"
# A WebAssembly plugin (examples/first-plugin): adds `x-hello: world` to every response of the
# route and answers `x-block: 1` requests itself with 403.
[plugins.hello]
path = "{}"

[[routes]]
name = "hello"
path = "/hello/{{*rest}}"
upstream = "v1"
rewrite = "/{{rest}}"
plugins = [{{ use = "hello", config = {{ header = "x-hello", value = "world" }} }}]
"#,
            plugin.display()
        ));
    }
    let config = config::load_str(Path::new("<demo>"), text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        io::Error::other(lines.join("\n"))
    })?;
    Ok(Demo { config })
}

fn demo_config(listen: &str, v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"# The embedded demo config (see docs/config.md for every key).
[server]
listen = "{listen}"

[upstreams.v1]
targets = [{{ addr = "{v1}" }}]
health_check = {{ path = "/health", interval = "2s" }}

[upstreams.v2]
targets = [{{ addr = "{v2}" }}]
health_check = {{ path = "/health", interval = "2s" }}

[upstreams.both]
targets = [{{ addr = "{v1}", weight = 3 }}, {{ addr = "{v2}", weight = 1 }}]
retry = {{ attempts = 2, on = ["connect-failure", "reset", "503"] }}
outlier = {{ consecutive_failures = 3, eject = "10s" }}

# Header-based (gray) routing: requests with x-canary: 1 always go to v2.
[[routes]]
name = "users-canary"
path = "/users/{{*rest}}"
headers = {{ "x-canary" = "1" }}
upstream = "v2"

# Everyone else: a 90/10 canary split.
[[routes]]
name = "users"
path = "/users/{{*rest}}"
split = [{{ upstream = "v1", weight = 90 }}, {{ upstream = "v2", weight = 10 }}]

# Path rewrite: /echo/anything reaches the upstreams as /anything, balanced 3:1.
[[routes]]
name = "echo"
path = "/echo/{{*rest}}"
upstream = "both"
rewrite = "/{{rest}}"
"#
    )
}

/// The first-plugin example, built by the workspace and embedded in the binary, written to a
/// temporary file for the demo config to load.
#[cfg(wasmgate_demo_plugin)]
fn write_demo_plugin() -> io::Result<Option<std::path::PathBuf>> {
    const FIRST_PLUGIN: &[u8] =
        include_bytes!(concat!(env!("WASMGATE_PLUGIN_DIR"), "/first_plugin.wasm"));
    let dir = std::env::temp_dir().join(format!("wasmgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("first_plugin.wasm");
    std::fs::write(&path, FIRST_PLUGIN)?;
    Ok(Some(path))
}

#[cfg(not(wasmgate_demo_plugin))]
fn write_demo_plugin() -> io::Result<Option<std::path::PathBuf>> {
    Ok(None)
}

pub fn instructions(addr: SocketAddr) -> String {
    format!(
        "wasmgate demo is listening on http://{addr}\n\
         Try:\n  \
         curl -s http://{addr}/users/42                      # 90% users-v1, 10% users-v2\n  \
         curl -s -H 'x-canary: 1' http://{addr}/users/42     # always users-v2\n  \
         curl -s http://{addr}/echo/hello?x=1                # rewritten to /hello, balanced 3:1\n  \
         curl -si http://{addr}/nowhere                      # 404 with a JSON body\n  \
         curl -si http://{addr}/hello/there                  # plugin adds x-hello: world\n  \
         curl -si -H 'x-block: 1' http://{addr}/hello/there  # plugin answers 403 itself\n  \
         for i in $(seq 20); do curl -s http://{addr}/users/1 | grep -o 'users-v[12]'; done | sort | uniq -c\n\
         Access log lines (JSON) go to stdout; press Ctrl-C to drain and stop."
    )
}

/// A tiny upstream that answers with what it received, as JSON.
async fn spawn_upstream(name: &'static str) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(describe(name, &request))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn describe(name: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let text = demo_config(
            "127.0.0.1:0",
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let loaded = config::load_str(Path::new("<demo>"), text).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let snapshot = runtime
            .block_on(async { crate::snapshot::Snapshot::build(&loaded) })
            .unwrap();
        assert_eq!(snapshot.router.len(), 3);
        assert!(write_demo_plugin().is_ok());
    }
}
