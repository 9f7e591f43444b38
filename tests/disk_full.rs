//! A full disk, from outside (issue 23): one node's data directory on a size-limited tmpfs
//! (the test mounts one, so it runs as root, as CI does; it fails, never skips, without).
//! Before, the node exited (exit 3) on the first write that met the full disk, and again
//! on its first write after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const FMT: &str = "2019";
const TMPFS_MB: u64 = 160;
const RESERVE_MB: u64 = 48;

/// A tmpfs mounted for the test, unmounted when dropped (a failed test too).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size_mb: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("kvs-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed ({status}): this test needs root",
            dir.display()
        );
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn free_bytes(path: &Path) -> u64 {
    let s = rustix::fs::statvfs(path).expect("statvfs");
    s.f_bavail * s.f_frsize
}

fn value(i: usize) -> String {
    let mut value = format!("{i:06}:");
    value.push_str(&"v".repeat((1 << 20) - 100));
    value
}

async fn put_value(c: &Cluster, node: usize, key: &str, i: usize) -> (u16, serde_json::Value) {
    let body = json!({"value": value(i), "causal-metadata": ""});
    put(&c.kv_url(node, key), body).await
}

/// A node whose disk fills answers clients' writes 507 with a clear message, keeps serving
/// reads and says so (`/kvs/health/ready`, `/kvs/status`, `/metrics`), while its shard
/// peer goes on taking writes; once space is freed it takes writes again by itself and
/// catches up. No acknowledged write is lost.
#[tokio::test]
async fn a_full_disk_is_answered_507_and_survived() {
    let disk = Tmpfs::mount(TMPFS_MB);
    let mut c = Cluster::spawn_some(2, 0, Some(1), FMT);
    let dir = disk.path().join("node0");
    let reserve = RESERVE_MB.to_string();
    c.set_env(
        0,
        &[
            ("KVS_DATA_DIR", dir.to_str().unwrap()),
            ("KVS_MEMTABLE_MB", "4"),
            ("KVS_DISK_RESERVE_MB", reserve.as_str()),
        ],
    );
    for i in 0..2 {
        c.restart(i);
    }
    let all = c.addrs();
    for i in 0..2 {
        c.wait_view(i, &all, READY_TIMEOUT).await;
    }
    // Leave room for about 24 writes of 1 MiB above the reserve.
    let filler = disk.path().join("filler");
    let keep = (RESERVE_MB + 24) << 20;
    let fill = free_bytes(disk.path()).saturating_sub(keep);
    std::fs::write(&filler, vec![0u8; fill as usize]).expect("write the filler");

    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..80 {
        let key = format!("k{i}");
        let (status, body) = put_value(&c, 0, &key, i).await;
        match status {
            201 => acked.push((key, i)),
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("PUT {key}: {other} {body}\n{}", c.log_tails(20)),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("no 507 after {} writes", acked.len()));
    println!("{} writes taken, then 507: {refused}", acked.len());
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("Insufficient storage")),
        "{refused}"
    );
    assert!(!acked.is_empty(), "the disk was full from the start");
    c.assert_running();

    // Reads are served, and the node says why it takes no writes.
    let (key, i) = &acked[0];
    let (status, body) = c.kv_get(0, key, None).await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some(value(*i).as_str()))
    );
    let (status, body) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["waiting_for"].to_string().contains("disk"), "{body}");
    assert!(metric(&c, 0, "kvs_storage_disk_full").await >= 1);
    let (_, status_page) = get(&c.url(1, "/kvs/status"), None).await;
    let node0 = c.addr(0).to_string();
    let seen = poll_until(READY_TIMEOUT, Duration::from_millis(200), || async {
        let (_, page) = get(&c.url(1, "/kvs/status"), None).await;
        page["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["address"] == node0.as_str() && n["disk"] != "ok")
            .map(|_| ())
    })
    .await;
    assert!(
        seen.is_some(),
        "node 1's status never showed node 0's disk: {status_page}"
    );

    // The shard's other member takes writes meanwhile.
    for i in 100..105 {
        let key = format!("k{i}");
        let (status, body) = put_value(&c, 1, &key, i).await;
        assert_eq!(status, 201, "{body}");
        acked.push((key, i));
    }

    std::fs::remove_file(&filler).expect("free the space");
    let resumed = poll_until(READY_TIMEOUT, Duration::from_millis(250), || async {
        let (status, _) = put_value(&c, 0, "after", 999).await;
        (status == 201).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "node 0 never took writes again\n{}",
        c.log_tails(20)
    );
    acked.push(("after".to_owned(), 999));
    for node in 0..2 {
        for (key, i) in &acked {
            let read = c
                .poll_get(node, key, None, READY_TIMEOUT, |s, b| {
                    s == 200 && b["value"].as_str() == Some(value(*i).as_str())
                })
                .await;
            assert!(read.is_ok(), "node {node} lost {key}: {read:?}");
        }
    }
    let (status, body) = get(&c.url(0, "/kvs/health/ready"), None).await;
    assert_eq!(status, 200, "{body}");
    c.assert_running();
}
