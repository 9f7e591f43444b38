//! Contract tests (shared/API.md) on a 3-node, 1-shard cluster, for both
//! wire formats. Each test function starts its own cluster.

mod common;

use common::*;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddrV4};

const SHARD: &str = "0";

fn random_base64(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A token issued by the store with one character in the middle changed.
fn tamper(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    assert!(
        chars.len() >= 2,
        "token too short to tamper with: {token:?}"
    );
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

// ---------------------------------------------------------------------------
// PUT / GET / DELETE happy paths and replication
// ---------------------------------------------------------------------------

async fn put_get_delete(fmt: &str) {
    let c = Cluster::start(3, Some(1), fmt).await;

    // PUT new key -> 201.
    let (s, b) = c.kv_put(0, "alpha", "one", "").await;
    let cm1 = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);

    // GET with and without metadata -> the value and the write's metadata.
    let (s, b) = c.kv_get(0, "alpha", Some(&cm1)).await;
    expect_read(s, &b, "one", &cm1, fmt);
    let (s, b) = c.kv_get(0, "alpha", None).await;
    expect_read(s, &b, "one", &cm1, fmt);

    // PUT existing key -> 200.
    let (s, b) = c.kv_put(0, "alpha", "two", &cm1).await;
    let cm2 = expect_write(s, &b, 200, "Updated successfully", fmt, SHARD);
    assert_ne!(
        cm1, cm2,
        "two different writes returned the same causal metadata"
    );
    let (s, b) = c.kv_get(0, "alpha", Some(&cm2)).await;
    expect_read(s, &b, "two", &cm2, fmt);

    // GET absent key -> 404.
    let (s, b) = c.kv_get(0, "never-written", Some(&cm2)).await;
    expect_absent(s, &b, "GET");
    let (s, b) = c.kv_get(0, "never-written", None).await;
    expect_absent(s, &b, "GET");

    // Replication: nodes 1 and 2 serve the value with the same metadata string.
    for i in [1, 2] {
        let (s, b, took) = c
            .poll_get(i, "alpha", None, CONVERGE_TIMEOUT, |s, b| {
                s == 200 && b["value"] == "two"
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        println!("node {i} served the replicated write after {took:?}");
        expect_read(s, &b, "two", &cm2, fmt);
        let (s, b) = c.kv_get(i, "alpha", Some(&cm2)).await;
        expect_read(s, &b, "two", &cm2, fmt);
    }

    // DELETE existing -> 200.
    let (s, b) = c.kv_delete(0, "alpha", &cm2).await;
    let cm3 = expect_write(s, &b, 200, "Deleted successfully", fmt, SHARD);
    assert_ne!(
        cm2, cm3,
        "the delete returned the metadata of the previous write"
    );

    // Deleted key reads as absent, everywhere (metadata carried).
    for i in 0..3 {
        let (s, b) = c.kv_get(i, "alpha", Some(&cm3)).await;
        expect_absent(s, &b, "GET");
    }
    // Deleting twice -> 404.
    let (s, b) = c.kv_delete(0, "alpha", &cm3).await;
    expect_absent(s, &b, "DELETE");
    // Deleting on another node (after the delete, by metadata) -> 404.
    let (s, b) = c.kv_delete(1, "alpha", &cm3).await;
    expect_absent(s, &b, "DELETE");
    // Deleting a key that never existed -> 404, with or without metadata.
    let (s, b) = c.kv_delete(0, "never-written", &cm3).await;
    expect_absent(s, &b, "DELETE");
    let (s, b) = delete(&c.kv_url(0, "never-written"), json!({})).await;
    expect_absent(s, &b, "DELETE");

    // PUT after delete -> 201 again.
    let (s, b) = c.kv_put(0, "alpha", "three", &cm3).await;
    let cm4 = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    for i in 0..3 {
        let (s, b) = c.kv_get(i, "alpha", Some(&cm4)).await;
        expect_read(s, &b, "three", &cm4, fmt);
    }

    // A write to node 1 is readable on node 0 and 2 too.
    let (s, b) = c.kv_put(1, "beta", "from-node-1", &cm4).await;
    let cm5 = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    for i in [0, 2] {
        let (s, b, _) = c
            .poll_get(i, "beta", None, CONVERGE_TIMEOUT, |s, _| s == 200)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        expect_read(s, &b, "from-node-1", &cm5, fmt);
    }
    c.assert_running();
}

#[tokio::test]
async fn put_get_delete_2019() {
    put_get_delete("2019").await;
}

#[tokio::test]
async fn put_get_delete_2020() {
    put_get_delete("2020").await;
}

// ---------------------------------------------------------------------------
// Keys and values at the edges
// ---------------------------------------------------------------------------

async fn key_and_value_edges(fmt: &str) {
    let c = Cluster::start(3, Some(1), fmt).await;

    // 50 characters is fine, 51 is too long.
    let k50 = "k".repeat(50);
    let (s, b) = c.kv_put(0, &k50, "v", "").await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, &k50, Some(&cm)).await;
    expect_read(s, &b, "v", &cm, fmt);
    let too_long = json!({"error": "Key is too long", "message": "Error in PUT"});
    let (s, b) = c.kv_put(0, &"k".repeat(51), "v", &cm).await;
    assert_eq!((s, &b), (400, &too_long), "51-character key");
    let (s, b) = c.kv_put(0, &"k".repeat(200), "v", &cm).await;
    assert_eq!((s, &b), (400, &too_long), "200-character key");

    // Characters, not bytes: 50 Cyrillic letters (100 bytes) are fine.
    let cyr50 = "я".repeat(50);
    let (s, b) = c.kv_put(0, &cyr50, "v", &cm).await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, &cyr50, Some(&cm)).await;
    expect_read(s, &b, "v", &cm, fmt);
    let (s, b) = c.kv_put(0, &"я".repeat(51), "v", &cm).await;
    assert_eq!((s, &b), (400, &too_long), "51-character Cyrillic key");

    // Missing value.
    let missing = json!({"error": "Value is missing", "message": "Error in PUT"});
    let (s, b) = put(&c.kv_url(0, "novalue"), json!({"causal-metadata": cm})).await;
    assert_eq!((s, &b), (400, &missing), "PUT without value");
    let (s, b) = put(&c.kv_url(0, "novalue"), json!({})).await;
    assert_eq!((s, &b), (400, &missing), "PUT with {{}}");
    let (s, b) = c.kv_get(0, "novalue", Some(&cm)).await;
    expect_absent(s, &b, "GET");

    // Empty value.
    let (s, b) = c.kv_put(0, "empty", "", &cm).await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, "empty", Some(&cm)).await;
    expect_read(s, &b, "", &cm, fmt);

    // Values with quotes, newlines and non-ASCII round-trip.
    let odd = "he said \"hi\",\n\tключ 🎉 {\"x\":1} \\";
    let (s, b) = c.kv_put(0, "odd", odd, &cm).await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let (s, b) = c.kv_get(1, "odd", Some(&cm)).await;
    expect_read(s, &b, odd, &cm, fmt);

    // Non-ASCII key, on the writing node and another one.
    let (s, b) = c.kv_put(0, "ключ", "значение", &cm).await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    for i in [0, 2] {
        let (s, b) = c.kv_get(i, "ключ", Some(&cm)).await;
        expect_read(s, &b, "значение", &cm, fmt);
    }

    // Percent-encoded slash in the key.
    let (s, b) = c.kv_put(0, "a%2Fb", "slash", &cm).await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    for i in [0, 1] {
        let (s, b) = c.kv_get(i, "a%2Fb", Some(&cm)).await;
        expect_read(s, &b, "slash", &cm, fmt);
    }
    let (s, b) = c.kv_put(0, "a%2Fb", "slash2", &cm).await;
    let cm = expect_write(s, &b, 200, "Updated successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, "a", Some(&cm)).await;
    expect_absent(s, &b, "GET");

    // Empty metadata string and missing metadata field: no dependencies.
    let (s, b) = c.kv_put(0, "nodeps", "x", "").await;
    expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let (s, b) = put(&c.kv_url(0, "nodeps"), json!({"value": "y"})).await;
    let cm_y = expect_write(s, &b, 200, "Updated successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, "nodeps", Some("")).await;
    expect_read(s, &b, "y", &cm_y, fmt);
    let (s, b) = get(&c.kv_url(0, "nodeps"), Some(json!({}))).await;
    expect_read(s, &b, "y", &cm_y, fmt);
    let (s, b) = c.kv_delete(0, "nodeps", "").await;
    let cm_d = expect_write(s, &b, 200, "Deleted successfully", fmt, SHARD);
    let (s, b) = c.kv_get(0, "nodeps", Some(&cm_d)).await;
    expect_absent(s, &b, "GET");
    c.assert_running();
}

#[tokio::test]
async fn key_and_value_edges_2019() {
    key_and_value_edges("2019").await;
}

#[tokio::test]
async fn key_and_value_edges_2020() {
    key_and_value_edges("2020").await;
}

// ---------------------------------------------------------------------------
// Malformed requests: never a 5xx, always a JSON error
// ---------------------------------------------------------------------------

async fn malformed_requests(fmt: &str) {
    let c = Cluster::start(3, Some(1), fmt).await;
    let (s, b) = c.kv_put(0, "present", "original", "").await;
    let cm = expect_write(s, &b, 201, "Added successfully", fmt, SHARD);
    let url = c.kv_url(0, "present");

    // Bodies that are not JSON, or not an object.
    for (body, ct) in [
        ("this is not json", Some("application/json")),
        ("{\"value\": \"x\"", Some("application/json")),
        ("this is not json", Some("text/plain")),
        ("[1, 2]", Some("application/json")),
        ("\"just a string\"", Some("application/json")),
    ] {
        for (method, op) in [
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
            (Method::GET, "GET"),
        ] {
            let (s, b) = raw(method, &url, body, ct).await;
            println!("{op} with body {body:?} ({ct:?}) -> {s} {b}");
            expect_error_shape(s, &b, 400, op);
        }
    }

    // Fields of the wrong type.
    let (s, b) = put(&url, json!({"value": 42, "causal-metadata": cm})).await;
    expect_error_shape(s, &b, 400, "PUT");
    let (s, b) = put(&url, json!({"value": ["a"], "causal-metadata": cm})).await;
    expect_error_shape(s, &b, 400, "PUT");
    let (s, b) = put(&url, json!({"value": null, "causal-metadata": cm})).await;
    assert_eq!(s, 400, "PUT with null value: {b}");
    let (s, b) = put(&url, json!({"value": "x", "causal-metadata": 5})).await;
    expect_error_shape(s, &b, 400, "PUT");
    let (s, b) = get(&url, Some(json!({"causal-metadata": 5}))).await;
    expect_error_shape(s, &b, 400, "GET");
    let (s, b) = delete(&url, json!({"causal-metadata": {"a": 1}})).await;
    expect_error_shape(s, &b, 400, "DELETE");

    // Causal metadata this store did not issue.
    let forged = [
        "garbage".to_string(),
        "{}".to_string(),
        "e30=".to_string(), // base64 of "{}"
        random_base64(44),
        random_base64(64),
        tamper(&cm),
        cm.chars().take(cm.chars().count() / 2).collect(),
    ];
    let invalid =
        |op: &str| json!({"error": "Invalid causal metadata", "message": format!("Error in {op}")});
    for meta in &forged {
        let (s, b) = put(&url, json!({"value": "forged", "causal-metadata": meta})).await;
        assert_eq!(
            (s, &b),
            (400, &invalid("PUT")),
            "PUT with causal-metadata {meta:?}"
        );
        let (s, b) = get(&url, Some(json!({"causal-metadata": meta}))).await;
        assert_eq!(
            (s, &b),
            (400, &invalid("GET")),
            "GET with causal-metadata {meta:?}"
        );
        let (s, b) = delete(&url, json!({"causal-metadata": meta})).await;
        assert_eq!(
            (s, &b),
            (400, &invalid("DELETE")),
            "DELETE with causal-metadata {meta:?}"
        );
        // Also on a key that does not exist, and on another node.
        let (s, b) = get(
            &c.kv_url(1, "absent"),
            Some(json!({"causal-metadata": meta})),
        )
        .await;
        assert_eq!(
            (s, &b),
            (400, &invalid("GET")),
            "GET absent key with causal-metadata {meta:?}"
        );
    }
    // Nothing of the above was applied.
    let (s, b) = c.kv_get(0, "present", Some(&cm)).await;
    expect_read(s, &b, "original", &cm, fmt);

    // A body over 1 MiB -> 413 with a JSON error.
    let big = json!({"value": "x".repeat(1024 * 1024 + 1024), "causal-metadata": cm}).to_string();
    let (s, b) = raw(
        Method::PUT,
        &c.kv_url(0, "big"),
        big,
        Some("application/json"),
    )
    .await;
    assert_eq!(s, 413, "PUT of more than 1 MiB: {b}");
    assert!(
        b.get("error").is_some_and(Value::is_string),
        "413 body must have an `error` string: {b}"
    );
    let (s, b) = c.kv_get(0, "big", Some(&cm)).await;
    expect_absent(s, &b, "GET");

    // Wrong method -> 405 JSON error.
    let (s, b) = raw(
        Method::POST,
        &url,
        json!({"value": "x"}).to_string(),
        Some("application/json"),
    )
    .await;
    assert_eq!(s, 405, "POST on a key: {b}");
    assert!(
        b.get("error").is_some_and(Value::is_string),
        "405 body must have an `error` string: {b}"
    );
    let (s, b) = raw(
        Method::PATCH,
        &c.view_url(0),
        "{}",
        Some("application/json"),
    )
    .await;
    assert_eq!(s, 405, "PATCH on the view: {b}");
    assert!(
        b.get("error").is_some_and(Value::is_string),
        "405 body must have an `error` string: {b}"
    );

    // Unknown path -> a 4xx JSON error.
    let (s, b) = get(&c.url(0, "/no-such-endpoint"), None).await;
    assert!((400..500).contains(&s), "unknown path: {s} {b}");
    assert!(
        b.get("error").is_some_and(Value::is_string),
        "unknown path body must have an `error` string: {b}"
    );

    // The store is still fine.
    let (s, b) = c.kv_get(0, "present", Some(&cm)).await;
    expect_read(s, &b, "original", &cm, fmt);
    c.assert_running();
}

#[tokio::test]
async fn malformed_requests_2019() {
    malformed_requests("2019").await;
}

#[tokio::test]
async fn malformed_requests_2020() {
    malformed_requests("2020").await;
}

// ---------------------------------------------------------------------------
// View operations
// ---------------------------------------------------------------------------

async fn view_operations(fmt: &str) {
    let c = Cluster::start(3, Some(1), fmt).await;
    let expected_view = c.view_string();
    println!("expected view: {expected_view}");

    for i in 0..3 {
        let (s, b) = get(&c.view_url(i), None).await;
        assert_eq!(
            (s, &b),
            (
                200,
                &json!({"message": "View retrieved successfully", "view": expected_view})
            ),
            "GET view on node {i}"
        );
    }

    let url = c.view_url(0);

    // PUT of a present address -> 404.
    let (s, b) = put(&url, json!({"socket-address": c.addr(1).to_string()})).await;
    assert_eq!(
        (s, &b),
        (
            404,
            &json!({"error": "Socket address already exists in the view", "message": "Error in PUT"})
        ),
        "view PUT of a present address"
    );

    // DELETE of an absent address -> 404.
    let (s, b) = delete(&url, json!({"socket-address": "127.0.0.1:2"})).await;
    assert_eq!(
        (s, &b),
        (
            404,
            &json!({"error": "Socket address does not exist in the view", "message": "Error in DELETE"})
        ),
        "view DELETE of an absent address"
    );

    // Missing socket-address -> 400 with an error.
    let (s, b) = put(&url, json!({})).await;
    assert_eq!(s, 400, "view PUT without socket-address: {b}");
    assert!(b.get("error").is_some_and(Value::is_string), "{b}");
    let (s, b) = delete(&url, json!({})).await;
    assert_eq!(s, 400, "view DELETE without socket-address: {b}");
    assert!(b.get("error").is_some_and(Value::is_string), "{b}");

    // PUT of a new address -> 201, listed right after.
    let newcomer = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 1);
    let (s, b) = put(&url, json!({"socket-address": newcomer.to_string()})).await;
    assert_eq!(
        (s, &b),
        (
            201,
            &json!({"message": "Replica added successfully to the view"})
        ),
        "view PUT of a new address"
    );
    let mut with_newcomer = c.addrs();
    with_newcomer.push(newcomer);
    let (s, b) = get(&url, None).await;
    assert_eq!(
        (s, &b),
        (
            200,
            &json!({"message": "View retrieved successfully", "view": view_string(&with_newcomer)})
        ),
        "GET view right after adding {newcomer}"
    );

    // DELETE of a present, live node -> 200.
    let (s, b) = delete(&url, json!({"socket-address": c.addr(2).to_string()})).await;
    assert_eq!(
        (s, &b),
        (
            200,
            &json!({"message": "Replica deleted successfully from the view"})
        ),
        "view DELETE of a live node"
    );
    c.assert_running();
}

#[tokio::test]
async fn view_operations_2019() {
    view_operations("2019").await;
}

#[tokio::test]
async fn view_operations_2020() {
    view_operations("2020").await;
}
