//! Where the access log goes (`server.access_log`): a file (reopened on SIGUSR1 after log
//! rotation), nowhere, or stdout again after a reload; and a destination that cannot work is
//! a config error.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

fn config(upstream: &TestUpstream, access_log: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = \"{access_log}\"\n{}\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

/// The JSON lines of `path` (none if it does not exist).
fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Waits until `path` holds an entry for `request_path`.
fn wait_for_entry(path: &Path, request_path: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(entry) = lines(path)
            .into_iter()
            .find(|entry| entry["path"] == request_path)
        {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "no entry for {request_path} in {}: {:?}",
            path.display(),
            lines(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_reopened_after_rotation_then_off_then_stdout() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(&upstream, "logs.jsonl"));
    let log = gateway.dir.path().join("logs.jsonl");
    let client = HttpClient::http1();

    assert_eq!(client.get(&gateway.url("/first")).await.status, 200);
    let entry = wait_for_entry(&log, "/first");
    assert_eq!(entry["status"], 200);
    assert!(gateway.access_log().is_empty(), "stdout has access lines");

    // logrotate: move the file away, then SIGUSR1; new lines go to a new file.
    let rotated = gateway.dir.path().join("logs.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    gateway.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.get(&gateway.url("/second")).await.status, 200);
    wait_for_entry(&log, "/second");
    assert_eq!(lines(&rotated).len(), 1, "{:?}", lines(&rotated));

    // A reload turns it off: no line anywhere.
    gateway.replace_file("gateway.toml", config(&upstream, "off").as_bytes());
    gateway.wait_for_reloads(1);
    assert_eq!(client.get(&gateway.url("/third")).await.status, 200);
    // Back to stdout: the next request is logged there.
    gateway.replace_file("gateway.toml", config(&upstream, "stdout").as_bytes());
    gateway.wait_for_reloads(2);
    assert_eq!(client.get(&gateway.url("/fourth")).await.status, 200);
    let stdout = gateway.wait_access_log(1);
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert_eq!(stdout[0]["path"], "/fourth");
    assert!(
        lines(&log).iter().all(|entry| entry["path"] != "/third"),
        "{:?}",
        lines(&log)
    );
}

#[test]
fn a_destination_in_a_missing_folder_fails_check_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = \"no/such/folder/access.log\"\n\
         [upstreams.app]\ntargets = [{ addr = \"127.0.0.1:9\" }]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("gateway.toml:3:14: server.access_log: the folder of"),
        "{stderr}"
    );
}
