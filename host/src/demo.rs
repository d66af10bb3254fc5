//! `wasmgate demo`: two small in-process upstreams and an embedded config in front of them, so
//! a newcomer sees routing, rewriting, a weighted canary split, header-based routing and the
//! WebAssembly plugins (first-plugin, jwt, headers, and grpc-transcode in front of a small
//! in-process gRPC service) with nothing but the binary.

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
    if let Some(dir) = write_demo_plugins()? {
        text.push_str(&plugin_config(&dir));
        text.push_str(&grpc_config(&dir, spawn_grpc_upstream().await?));
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

/// The HMAC secret of the demo's `/secure/` route. Anyone who reads this file can sign tokens
/// with it: it is for the demo only.
pub const DEMO_JWT_SECRET: &str = "wasmgate-demo-secret-not-for-production";

/// An HS256 token signed with [`DEMO_JWT_SECRET`]: `{"sub":"demo-user","iss":"wasmgate-demo",
/// "exp":4102444800}` (it expires on 2100-01-01), so the demo's curl lines keep working.
pub const DEMO_JWT_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
     eyJzdWIiOiJkZW1vLXVzZXIiLCJpc3MiOiJ3YXNtZ2F0ZS1kZW1vIiwiZXhwIjo0MTAyNDQ0ODAwfQ.\
     LIWK2dH1n71vFfGzdeXpblo8ejI3zjOD-ntadiKPfGM";

/// The routes with WebAssembly plugins, loading the modules from `dir`.
fn plugin_config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"
# WebAssembly plugins, built by the workspace and embedded in the binary.
# examples/first-plugin: adds `x-hello: world` to every response of the route and answers
# `x-block: 1` requests itself with 403.
[plugins.hello]
path = "{dir}/first_plugin.wasm"

# The first-party plugins (plugins/jwt and plugins/headers; docs/first-party-plugins.md).
[plugins.jwt]
path = "{dir}/jwt.wasm"

[plugins.headers]
path = "{dir}/headers.wasm"

[[routes]]
name = "hello"
path = "/hello/{{*rest}}"
upstream = "v1"
rewrite = "/{{rest}}"
plugins = [{{ use = "hello", config = {{ header = "x-hello", value = "world" }} }}]

# JWT authentication: HS256 tokens signed with the demo secret and issued by `wasmgate-demo`.
# The token's `sub` reaches the upstream as `x-user-id` (a client's own `x-user-id` is removed)
# and the headers plugin as the context value `user_id`.
[[routes]]
name = "secure"
path = "/secure/{{*rest}}"
upstream = "v1"
rewrite = "/{{rest}}"
plugins = [
  {{ use = "jwt", config = {{ algorithms = ["HS256"], secret = "{DEMO_JWT_SECRET}", issuer = "wasmgate-demo", claims_to_headers = {{ sub = "x-user-id" }}, claims_to_context = {{ sub = "user_id" }} }} }},
  {{ use = "headers", config = {{ response = {{ set = {{ "x-user" = "{{ctx.user_id}}" }} }} }} }},
]

# Header rewriting with templates, on the request and on the response.
[[routes]]
name = "headers"
path = "/headers/{{*rest}}"
upstream = "v1"
rewrite = "/{{rest}}"
plugins = [{{ use = "headers", config = {{ request = {{ remove = ["x-debug"], set = {{ "x-client" = "{{client_ip}}", "x-original" = "{{method}} {{path}}" }} }}, response = {{ set = {{ "x-served-for" = "{{method}} {{path}} ({{request_id}})" }}, add = {{ "cache-control" = "no-store" }} }} }} }}]
"#
    )
}

/// The gRPC route: grpc-transcode (plugins/grpc-transcode) turns JSON requests into calls to
/// the demo.v1.Items service of demo-grpc, whose descriptor set is written to `dir/api.pb`.
fn grpc_config(dir: &Path, grpc: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"
# REST/JSON to gRPC: the demo.v1.Items service (demo-grpc/proto/demo/v1/items.proto) over h2c.
# Its google.api.http annotations map /v1/items...; POST /demo.v1.Items/METHOD reaches any
# unary method.
[upstreams.items]
targets = [{{ addr = "{grpc}" }}]
protocol = "h2c"

[plugins.grpc]
path = "{dir}/grpc_transcode.wasm"

[[routes]]
name = "items"
path = "/v1/{{*rest}}"
upstream = "items"
plugins = [{{ use = "grpc", config = {{ descriptors = "@base64file:{dir}/api.pb", services = ["demo.v1.Items"] }} }}]

[[routes]]
name = "items-rpc"
path = "/demo.v1.Items/{{method}}"
upstream = "items"
plugins = [{{ use = "grpc", config = {{ descriptors = "@base64file:{dir}/api.pb", services = ["demo.v1.Items"] }} }}]
"#
    )
}

/// The demo.v1.Items gRPC service on a loopback port.
async fn spawn_grpc_upstream() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(grpc_demo::serve(listener));
    Ok(addr)
}

/// The plugins the workspace built, embedded in the binary and written to a temporary folder
/// for the demo config to load.
#[cfg(wasmgate_demo_plugin)]
fn write_demo_plugins() -> io::Result<Option<std::path::PathBuf>> {
    const MODULES: &[(&str, &[u8])] = &[
        (
            "first_plugin.wasm",
            include_bytes!(concat!(env!("WASMGATE_PLUGIN_DIR"), "/first_plugin.wasm")),
        ),
        (
            "jwt.wasm",
            include_bytes!(concat!(env!("WASMGATE_PLUGIN_DIR"), "/jwt.wasm")),
        ),
        (
            "headers.wasm",
            include_bytes!(concat!(env!("WASMGATE_PLUGIN_DIR"), "/headers.wasm")),
        ),
        (
            "grpc_transcode.wasm",
            include_bytes!(concat!(env!("WASMGATE_PLUGIN_DIR"), "/grpc_transcode.wasm")),
        ),
        ("api.pb", grpc_demo::DESCRIPTORS),
    ];
    let dir = std::env::temp_dir().join(format!("wasmgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in MODULES {
        std::fs::write(dir.join(name), bytes)?;
        release_pages(bytes);
    }
    Ok(Some(dir))
}

/// Gives back the pages of an embedded module, read once to write it out and never again:
/// 2.7 MiB of the demo's resident memory otherwise (docs/benchmarks.md).
#[cfg(wasmgate_demo_plugin)]
fn release_pages(bytes: &'static [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: the range is whole pages inside a static in the binary's read-only data, a
        // private mapping of the executable that nothing writes: after MADV_DONTNEED a read
        // faults the same bytes back in from the file, so the static's contents never change.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(not(wasmgate_demo_plugin))]
fn write_demo_plugins() -> io::Result<Option<std::path::PathBuf>> {
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
         curl -si http://{addr}/secure/me                    # jwt plugin: 401 without a token\n  \
         TOKEN={DEMO_JWT_TOKEN}\n  \
         curl -si -H \"authorization: Bearer $TOKEN\" http://{addr}/secure/me  # upstream sees x-user-id: demo-user\n  \
         curl -si -H 'x-debug: 1' http://{addr}/headers/hi   # headers plugin: request and response rewritten\n  \
         curl -s http://{addr}/v1/items/1                    # grpc-transcode: JSON from the demo.v1.Items gRPC service\n  \
         curl -s 'http://{addr}/v1/items?kind=KIND_TOOL'     # a server stream as a JSON array\n  \
         curl -s -d '{{\"name\":\"Saw\",\"kind\":\"KIND_TOOL\"}}' http://{addr}/v1/items  # CreateItem\n  \
         curl -si http://{addr}/v1/items/99                  # gRPC NOT_FOUND: 404 with a JSON error\n  \
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

    fn build(text: String) -> crate::snapshot::Snapshot {
        let loaded = config::load_str(Path::new("<demo>"), text).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(async { crate::snapshot::Snapshot::build(&loaded, None) })
            .unwrap()
    }

    fn addresses() -> (&'static str, SocketAddr, SocketAddr) {
        (
            "127.0.0.1:0",
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
    }

    #[test]
    fn demo_config_is_valid() {
        let (listen, v1, v2) = addresses();
        assert_eq!(build(demo_config(listen, v1, v2)).router.len(), 3);
    }

    /// Builds the plugin routes too, which runs each plugin's `init` with the demo's config.
    #[cfg(wasmgate_demo_plugin)]
    #[test]
    fn demo_plugins_accept_their_configs() {
        let (listen, v1, v2) = addresses();
        let dir = write_demo_plugins().unwrap().unwrap();
        let text = demo_config(listen, v1, v2)
            + &plugin_config(&dir)
            + &grpc_config(&dir, "127.0.0.1:3".parse().unwrap());
        assert_eq!(build(text).router.len(), 8);
    }
}
