//! Compiled plugins on disk (`WASMGATE_PLUGIN_CACHE`): a plugin is compiled once, by a compile
//! process, and later starts map the artifact; a damaged or truncated artifact is compiled
//! again, never run.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::gateway::PLUGIN_CACHE_ENV;
use crate::support::*;

/// The cache's artifacts (`*.cwasm`), and nothing else left behind.
fn artifacts(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.extension().is_some_and(|ext| ext == "cwasm"),
            "unexpected file in the cache: {}",
            path.display()
        );
        found.push(path);
    }
    found
}

/// The first-plugin example on every path, adding `x-hello: VALUE`.
fn hello_config(upstream: &TestUpstream, value: &str) -> String {
    format!(
        "{SERVER}{}\n[plugins.hello]\npath = \"{}\"\n\n[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\nplugins = [{{ use = \"hello\", config = {{ header = \"x-hello\", value = \"{value}\" }} }}]\n",
        upstream_table("app", &[(upstream.addr, 1)], ""),
        wasm("first_plugin"),
    )
}

/// Starts the gateway on the first-plugin example with `cache`, checks that the plugin
/// works, and returns its diagnostics.
async fn start_and_check(upstream: &TestUpstream, cache: &Path) -> String {
    let gateway = GatewayProcess::start_with_env(
        tempfile::tempdir().unwrap(),
        &hello_config(upstream, "cached"),
        &[(PLUGIN_CACHE_ENV, cache)],
    );
    let reply = HttpClient::http1().get(&gateway.url("/x")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-hello"], "cached");
    gateway.stderr()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_is_compiled_once_and_a_damaged_artifact_again() {
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    // The directory is created (mode 0700) when it does not exist.
    let cache = dir.path().join("cache");

    // First start: a compile process compiles the plugin and the artifact appears.
    let stderr = start_and_check(&upstream, &cache).await;
    assert!(
        stderr.contains("plugin hello: compiled in") && stderr.contains("in a compile process"),
        "{stderr}"
    );
    let mode = std::fs::metadata(&cache).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let found = artifacts(&cache);
    assert_eq!(found.len(), 1, "{found:?}");
    let artifact = found[0].clone();
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    let wasm_hash = name.split('-').next().unwrap();
    assert_eq!(wasm_hash.len(), 64, "{name}");
    let inode = std::fs::metadata(&artifact).unwrap().ino();
    let good = std::fs::read(&artifact).unwrap();

    // Second start: the same file is mapped, nothing is compiled.
    let stderr = start_and_check(&upstream, &cache).await;
    assert!(
        stderr.contains("plugin hello: loaded from the compile cache"),
        "{stderr}"
    );
    assert!(!stderr.contains("compiled in"), "{stderr}");
    assert_eq!(std::fs::metadata(&artifact).unwrap().ino(), inode);
    assert_eq!(artifacts(&cache), vec![artifact.clone()]);

    // A byte of the artifact changed in place: refused, compiled again, and replaced.
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&artifact, &damaged).unwrap();
    let stderr = start_and_check(&upstream, &cache).await;
    assert!(stderr.contains("is unusable"), "{stderr}");
    assert!(stderr.contains("checksum does not match"), "{stderr}");
    assert!(stderr.contains("plugin hello: compiled in"), "{stderr}");
    assert_eq!(artifacts(&cache), vec![artifact.clone()]);
    assert_ne!(std::fs::read(&artifact).unwrap(), damaged);

    // Cut short (as by a full disk): the same.
    let current = std::fs::read(&artifact).unwrap();
    std::fs::write(&artifact, &current[..current.len() / 3]).unwrap();
    let stderr = start_and_check(&upstream, &cache).await;
    assert!(stderr.contains("is unusable"), "{stderr}");
    assert!(stderr.contains("plugin hello: compiled in"), "{stderr}");
    let stderr = start_and_check(&upstream, &cache).await;
    assert!(
        stderr.contains("plugin hello: loaded from the compile cache"),
        "{stderr}"
    );
    assert_eq!(artifacts(&cache).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cache_nothing_is_left_behind() {
    let upstream = TestUpstream::start("app").await;
    let temp = tempfile::tempdir().unwrap();
    // `off`: each compile goes to a private temporary directory (here under TMPDIR), removed
    // once the artifact is mapped.
    let gateway = GatewayProcess::start_with_env(
        tempfile::tempdir().unwrap(),
        &hello_config(&upstream, "off"),
        &[
            (PLUGIN_CACHE_ENV, Path::new("off")),
            ("TMPDIR", temp.path()),
        ],
    );
    let reply = HttpClient::http1().get(&gateway.url("/x")).await;
    assert_eq!(reply.headers["x-hello"], "off");
    assert!(
        gateway.stderr().contains("in a compile process"),
        "{}",
        gateway.stderr()
    );
    // The plugin keeps working with its file gone (the mapping holds it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left: Vec<_> = std::fs::read_dir(temp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let reply = HttpClient::http1().get(&gateway.url("/y")).await;
    assert_eq!(reply.headers["x-hello"], "off");
}

#[test]
fn a_broken_module_is_reported_as_the_compiler_says() {
    let dir = tempfile::tempdir().unwrap();
    let broken: &[u8] = b"\0asm\x0d\0\x01\0 a component's header, then junk";
    std::fs::write(dir.path().join("broken.wasm"), broken).unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "{SERVER}\n[plugins.broken]\npath = \"broken.wasm\"\n\n\
             [upstreams.app]\ntargets = [{{ addr = \"127.0.0.1:9\" }}]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    // What wasmtime says compiling it in this process: the compile process's message is
    // passed on unchanged.
    let expected = match wasmtime::component::Component::new(&wasmtime::Engine::default(), broken) {
        Ok(_) => panic!("the broken module compiled"),
        Err(err) => format!("{err:#}"),
    };
    let line = format!(
        ":5:8: plugins.broken: {}: not a valid plugin component: {expected}",
        dir.path().join("broken.wasm").display()
    );
    assert!(stderr.contains(&line), "{stderr}\nexpected: {line}");
}
