//! Ingest and backfill against an in-process server over real HTTP.

mod support;

use serde_json::{Value, json};
use support::{TOKEN, TestServer, payment};

fn with(tracking_id: &str, sig: &str, key: &str, value: Value) -> Value {
    let mut p = payment(tracking_id, sig);
    if value.is_null() {
        p.as_object_mut().unwrap().remove(key);
    } else {
        p[key] = value;
    }
    p
}

/// Each bad item answers 400 INVALID_PAYLOAD naming its index and field, and
/// nothing of the request is stored.
#[tokio::test]
async fn bad_items_are_refused_with_details_and_store_nothing() {
    let server = TestServer::start(&[]).await;
    let t = "bad";
    let cases: Vec<(Value, &str)> = vec![
        (with(t, "a", "trackingId", Value::Null), "trackingId"),
        (with(t, "a", "trackingId", json!(7)), "trackingId"),
        (with(t, "a", "trackingId", json!("")), "trackingId"),
        (with(t, "a", "amount", json!(-1)), "amount"),
        (with(t, "a", "amount", json!(1.5)), "amount"),
        (with(t, "a", "amount", json!("100")), "amount"),
        (
            with(t, "a", "amount", json!(9_007_199_254_740_992u64)),
            "amount",
        ),
        (with(t, "a", "timestamp", Value::Null), "timestamp"),
        (with(t, "a", "timestamp", json!(-1)), "timestamp"),
        (
            with(t, "a", "timestamp", json!(1_699_876_543_210u64)),
            "timestamp",
        ),
        (with(t, "a", "status", json!("done")), "status"),
        (with(t, "a", "signature", Value::Null), "signature"),
        (with(t, "a", "signature", json!("")), "signature"),
        (with(t, "a", "idempotencyKey", json!(5)), "idempotencyKey"),
        (with(t, "a", "memo", json!("hi")), "memo"),
    ];
    for (item, field) in &cases {
        // The bad item at index 2 of a batch whose other items are good.
        let body = json!([payment(t, "ok-0"), payment(t, "ok-1"), item]);
        let (status, res) = server.ingest(&body).await;
        assert_eq!(status, 400, "{item}");
        assert_eq!(res["error"]["code"], "INVALID_PAYLOAD");
        assert_eq!(
            res["error"]["details"],
            json!([{"index": 2, "field": field, "message": res["error"]["details"][0]["message"]}]),
            "{item}"
        );
        assert!(
            res["error"]["details"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // A single object is index 0; every bad field is reported.
    let (status, res) = server.ingest(&json!({"trackingId": t, "amount": -1, "timestamp": "x", "status": "executed", "signature": "s"})).await;
    assert_eq!(status, 400);
    let fields: Vec<(u64, &str)> = res["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["index"].as_u64().unwrap(), d["field"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, vec![(0, "amount"), (0, "timestamp")]);

    for body in ["[]", "not json", "{\"trackingId\": "] {
        let res = support::http()
            .post(server.url("/v1/payments"))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "INVALID_PAYLOAD"
        );
    }

    let (status, page) = server.get(&format!("/v1/events?trackingId={t}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        page["data"],
        json!([]),
        "a refused request stored something"
    );
    server.stop().await.unwrap();
}

/// The token is checked before the body is read; sizes are bounded.
#[tokio::test]
async fn auth_and_limits() {
    let server = TestServer::start(&[
        "--max-body",
        "2048",
        "--max-batch",
        "3",
        "--ingest-token",
        "second",
    ])
    .await;
    let http = support::http();
    let big = "x".repeat(10_000);
    for auth in [None, Some("wrong"), Some("")] {
        let mut req = http.post(server.url("/v1/payments")).body(big.clone());
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "UNAUTHORIZED"
        );
    }
    let res = http
        .post(server.url("/v1/payments"))
        .bearer_auth(TOKEN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "PAYLOAD_TOO_LARGE"
    );
    let batch: Vec<Value> = (0..4).map(|i| payment("lim", &i.to_string())).collect();
    let (status, res) = server.ingest(&json!(batch)).await;
    assert_eq!(
        (status, &res["error"]["code"]),
        (413, &json!("PAYLOAD_TOO_LARGE"))
    );
    // Either configured token is accepted (rotation).
    let res = http
        .post(server.url("/v1/payments"))
        .bearer_auth("second")
        .json(&payment("lim", "ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    server.stop().await.unwrap();
}

/// A server without any ingest token refuses ingest.
#[tokio::test]
async fn ingest_is_never_open() {
    let config =
        <tidings::Config as clap::Parser>::parse_from(["tidings", "--listen", "127.0.0.1:0"]);
    let server = tidings::Server::bind(&config).await.unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.run(std::future::pending()));
    let res = support::http()
        .post(format!("http://{addr}/v1/payments"))
        .json(&payment("open", "s"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    task.abort();
}

/// Batches get contiguous seqs in request order, duplicates answer the
/// original, and concurrent requests for one trackingId never share or skip
/// a seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seqs_are_contiguous_and_duplicates_idempotent() {
    let server = TestServer::start(&[]).await;
    let (status, res) = server
        .ingest(&json!([
            payment("b", "1"),
            payment("c", "1"),
            payment("b", "2"),
            payment("b", "1")
        ]))
        .await;
    assert_eq!(status, 202);
    let rows: Vec<(String, u64, bool)> = res["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["trackingId"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
                r["duplicate"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("b".into(), 1, false),
            ("c".into(), 1, false),
            ("b".into(), 2, false),
            ("b".into(), 1, true)
        ]
    );
    assert_eq!(res["data"][3]["id"], res["data"][0]["id"]);
    // An idempotencyKey identifies a payment without a signature.
    let mut keyed = payment("b", "unused");
    keyed.as_object_mut().unwrap().remove("signature");
    keyed["idempotencyKey"] = json!("order-9");
    let (_, first) = server.ingest(&keyed).await;
    let (_, again) = server.ingest(&keyed).await;
    assert_eq!(first["data"][0]["duplicate"], false);
    assert_eq!(again["data"][0]["duplicate"], true);
    assert_eq!(again["data"][0]["id"], first["data"][0]["id"]);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = server.url("/v1/payments");
        tasks.spawn(async move {
            let res = support::http()
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!([
                    payment("race", &format!("{i}-a")),
                    payment("race", &format!("{i}-b"))
                ]))
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            let a = body["data"][0]["seq"].as_u64().unwrap();
            let b = body["data"][1]["seq"].as_u64().unwrap();
            assert_eq!(b, a + 1, "one request's items are contiguous");
            vec![a, b]
        });
    }
    let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    seqs.sort();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

/// The seqs of a backfill page.
fn seqs(page: &Value) -> Vec<u64> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Backfill pages through the stored envelopes, reports truncation, and
/// refuses bad input with the socket's codes.
#[tokio::test]
async fn backfill_pages_and_reports_truncation() {
    let server = TestServer::start(&["--history-limit", "5"]).await;
    let batch: Vec<Value> = (0..8).map(|i| payment("bf", &i.to_string())).collect();
    let (_, res) = server.ingest(&json!(batch)).await;
    let ids: Vec<String> = res["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();

    let (_, page) = server.get("/v1/events?trackingId=bf&limit=2").await;
    assert_eq!(seqs(&page), vec![4, 5]);
    assert_eq!(
        (page["hasMore"].as_bool(), page["truncated"].as_bool()),
        (Some(true), Some(false))
    );
    let (_, page) = server
        .get(&format!(
            "/v1/events?trackingId=bf&since={}&limit=10",
            ids[4]
        ))
        .await;
    assert_eq!(seqs(&page), vec![6, 7, 8]);
    assert_eq!(
        (page["hasMore"].as_bool(), page["truncated"].as_bool()),
        (Some(false), Some(false))
    );
    let (_, page) = server
        .get(&format!("/v1/events?trackingId=bf&since={}", ids[0]))
        .await;
    assert_eq!(page["truncated"], true);
    assert_eq!(page["data"][0]["seq"], 4);
    assert_eq!(page["data"][0]["data"], payment("bf", "3"));

    let (epoch, _) = ids[0].split_once('-').unwrap();
    for (query, code) in [
        ("", "INVALID_TRACKING_ID"),
        ("trackingId=", "INVALID_TRACKING_ID"),
        ("trackingId=bf&since=nope", "INVALID_SINCE"),
        (
            &format!("trackingId=bf&since={epoch}-99") as &str,
            "INVALID_SINCE",
        ),
        ("trackingId=bf&limit=0", "INVALID_PAYLOAD"),
        ("trackingId=bf&limit=x", "INVALID_PAYLOAD"),
    ] {
        let (status, body) = server.get(&format!("/v1/events?{query}")).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!(code)),
            "{query}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start(&[]).await;
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/readyz").await.0, 200);
    let (status, body) = server.get("/nope").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("NOT_FOUND")));
    server.stop().await.unwrap();
}
