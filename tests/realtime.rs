//! The realtime protocol against an in-process server over real websockets:
//! ordering of one socket's commands, the connect storm, and replay handing
//! over to live delivery with no gap.

mod support;

use serde_json::{Value, json};
use support::{Client, TestServer, payment};

/// socketioxide runs each event in its own task; the server must still apply
/// (and answer) one socket's subscribes and unsubscribes in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sockets_commands_take_effect_in_the_order_sent() {
    let server = TestServer::start(&["--rate-burst", "10000"]).await;
    let mut client = Client::connect(server.addr).await;
    for ends_subscribed in [true, false] {
        // 400 alternating commands for one id, all sent in one write.
        let n = 400;
        let ops: Vec<&str> = (0..n)
            .map(|i| {
                let subscribe_turn = if ends_subscribed {
                    i % 2 == 1
                } else {
                    i % 2 == 0
                };
                if subscribe_turn {
                    "subscribe"
                } else {
                    "unsubscribe"
                }
            })
            .collect();
        client
            .send_all(
                ops.iter()
                    .map(|op| format!("42{}", json!([op, {"trackingId": "ord"}]))),
            )
            .await;
        for (i, op) in ops.iter().enumerate() {
            let (name, data) = client.next_event().await;
            assert_eq!(name, "ack", "answer {i}: {data}");
            let expected = if *op == "subscribe" {
                "Subscribed to trackingId: ord"
            } else {
                "Unsubscribed from trackingId: ord"
            };
            assert_eq!(data["data"], expected, "answer {i} out of order");
        }
        // The final state is the last command's: a payment for "ord" is
        // delivered only if it was a subscribe. "bar" is a barrier: events
        // of one socket arrive in order, so once bar's payment is here, an
        // earlier ord payment would have been too.
        client.subscribe("bar").await;
        let sig = format!("ord-{ends_subscribed}");
        let (status, _) = server
            .ingest(&json!([payment("ord", &sig), payment("bar", &sig)]))
            .await;
        assert_eq!(status, 202);
        let (name, first) = client.next_event().await;
        assert_eq!(name, "payment");
        let first_tid = first["data"]["trackingId"].clone();
        if ends_subscribed {
            assert_eq!(first_tid, "ord");
            let (_, second) = client.next_event().await;
            assert_eq!(second["data"]["trackingId"], "bar");
        } else {
            assert_eq!(first_tid, "bar", "an unsubscribed socket got a payment");
        }
    }
    server.stop().await.unwrap();
}

/// A socket subscribing with `since` while payments keep arriving gets every
/// payment after `since` in seq order: replay hands over to live with no
/// gap. (An event both replayed and delivered live arrives twice; the
/// contract lets clients dedupe by id, and the first arrivals are in order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_hands_over_to_live_with_no_gap_under_concurrent_ingest() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server.ingest(&payment("live", "p-0")).await;
    assert_eq!(status, 202);
    let since = body["data"][0]["id"].as_str().unwrap().to_owned();

    let total = 300u64;
    let url = server.url("/v1/payments");
    let writer = tokio::spawn(async move {
        let http = support::http();
        for i in 1..total {
            let res = http
                .post(&url)
                .bearer_auth(support::TOKEN)
                .json(&payment("live", &format!("p-{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
        }
    });
    let mut duplicates = 0;
    for round in 0..5 {
        // Subscribe at different moments of the ingest stream.
        let mut client = Client::connect(server.addr).await;
        client
            .emit("subscribe", json!({"trackingId": "live", "since": since}))
            .await;
        let (name, ack) = client.next_event().await;
        assert_eq!(name, "ack", "{ack}");
        let mut expected = 2;
        while expected <= total {
            let (name, ev) = tokio::time::timeout(support::WAIT, client.next_event())
                .await
                .unwrap_or_else(|_| panic!("round {round}: payment seq {expected} never arrived"));
            assert_eq!(name, "payment", "round {round}: {ev}");
            let seq = ev["seq"].as_u64().unwrap();
            if seq < expected {
                duplicates += 1; // seen already: dedupe by id
                continue;
            }
            assert_eq!(
                seq, expected,
                "round {round}: payments out of order or missing"
            );
            expected += 1;
        }
    }
    writer.await.unwrap();
    println!("{duplicates} duplicate deliveries over 5 rounds");
    server.stop().await.unwrap();
}

/// Sends `subscribe` with `data` asking for ack `id`; expects the event
/// and then the ack, and returns the event's name and both envelopes.
async fn subscribe_with_ack(client: &mut Client, data: Value, id: u64) -> (String, Value, Value) {
    client.emit_with_ack("subscribe", data, id).await;
    let event = client.next().await;
    let ack = client.next().await;
    match (event, ack) {
        (support::Frame::Event(name, a), support::Frame::Ack(got, b)) if got == id => (name, a, b),
        (event, ack) => panic!("expected event then ack {id}, got {event:?} {ack:?}"),
    }
}

/// A subscribe with an acknowledgement callback gets the same envelope in
/// the callback as in the event; errors too.
#[tokio::test]
async fn ack_callbacks_carry_the_same_envelope() {
    let server = TestServer::start(&[]).await;
    let mut client = Client::connect(server.addr).await;
    let (name, a, b) = subscribe_with_ack(&mut client, json!({"trackingId": "cb"}), 7).await;
    assert_eq!(name, "ack");
    assert_eq!(a, b);
    let (name, a, b) = subscribe_with_ack(&mut client, json!({"trackingId": ""}), 8).await;
    assert_eq!(name, "error");
    assert_eq!(a["data"]["code"], "INVALID_TRACKING_ID");
    assert_eq!(a, b);
    server.stop().await.unwrap();
}

/// Shutdown closes every socket (a transport close, so socket.io-client
/// reconnects) and `run` returns.
#[tokio::test]
async fn shutdown_closes_sockets_and_returns() {
    let server = TestServer::start(&[]).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe("bye").await;
    let stopping = tokio::spawn(server.stop());
    assert!(client.closed().await, "socket was not closed at shutdown");
    stopping.await.unwrap().unwrap();
}

/// Bad socket input gets the documented code and changes nothing.
#[tokio::test]
async fn bad_socket_input_is_refused_and_changes_nothing() {
    let server = TestServer::start(&["--max-subscriptions", "2"]).await;
    let mut client = Client::connect(server.addr).await;
    let long = "a".repeat(257);
    let cases: Vec<(String, &str)> = vec![
        ("42[\"subscribe\"]".to_owned(), "INVALID_PAYLOAD"),
        (
            format!("42{}", json!(["subscribe", "bad-1"])),
            "INVALID_PAYLOAD",
        ),
        (
            format!("42{}", json!(["subscribe", ["bad-1"]])),
            "INVALID_PAYLOAD",
        ),
        (
            format!("42{}", json!(["subscribe", {}])),
            "INVALID_TRACKING_ID",
        ),
        (
            format!("42{}", json!(["subscribe", {"trackingId": 1}])),
            "INVALID_TRACKING_ID",
        ),
        (
            format!("42{}", json!(["subscribe", {"trackingId": long}])),
            "INVALID_TRACKING_ID",
        ),
        (
            format!("42{}", json!(["subscribe", {"trackingId": "bad-1\u{7}"}])),
            "INVALID_TRACKING_ID",
        ),
        (
            format!(
                "42{}",
                json!(["subscribe", {"trackingId": "bad-1", "since": ""}])
            ),
            "INVALID_SINCE",
        ),
        (
            format!(
                "42{}",
                json!(["subscribe", {"trackingId": "bad-1", "since": "x-1"}])
            ),
            "INVALID_SINCE",
        ),
        (
            format!(
                "42{}",
                json!(["subscribe", {"trackingId": "bad-1", "since": 3}])
            ),
            "INVALID_SINCE",
        ),
        (
            format!("42{}", json!(["unsubscribe", {"trackingId": ""}])),
            "INVALID_TRACKING_ID",
        ),
    ];
    for (packet, code) in &cases {
        client.send_raw(packet.clone()).await;
        let (name, data) = client.next_event().await;
        assert_eq!(
            (name.as_str(), &data["data"]["code"]),
            ("error", &Value::from(*code)),
            "{packet}"
        );
    }
    // A well-formed since from the future is not one this server issued.
    let (_, body) = server.ingest(&payment("bad-1", "s1")).await;
    let id = body["data"][0]["id"].as_str().unwrap();
    let (epoch, _) = id.split_once('-').unwrap();
    client
        .emit(
            "subscribe",
            json!({"trackingId": "bad-1", "since": format!("{epoch}-99")}),
        )
        .await;
    assert_eq!(client.next_event().await.1["data"]["code"], "INVALID_SINCE");

    // Limits: two subscriptions, a third is refused, a repeat is acked.
    client.subscribe("one").await;
    client.subscribe("two").await;
    client.subscribe("two").await;
    client
        .emit("subscribe", json!({"trackingId": "three"}))
        .await;
    assert_eq!(
        client.next_event().await.1["data"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );

    // Nothing changed: of bad-1, three and one, only one's payment arrives.
    let (status, _) = server
        .ingest(&json!([
            payment("bad-1", "s2"),
            payment("three", "s3"),
            payment("one", "s4")
        ]))
        .await;
    assert_eq!(status, 202);
    let (name, ev) = client.next_event().await;
    assert_eq!(
        (name.as_str(), &ev["data"]["trackingId"]),
        ("payment", &json!("one"))
    );
    server.stop().await.unwrap();
}

/// Over its rate, a socket's events are refused with RATE_LIMITED.
#[tokio::test]
async fn a_socket_over_its_rate_is_refused() {
    let server = TestServer::start(&["--rate-limit", "1", "--rate-burst", "3"]).await;
    let mut client = Client::connect(server.addr).await;
    client
        .send_all((0..10).map(|i| {
            format!(
                "42{}",
                json!(["subscribe", {"trackingId": format!("r{i}")}])
            )
        }))
        .await;
    let mut acks = 0;
    let mut limited = 0;
    for _ in 0..10 {
        let (name, data) = client.next_event().await;
        match (name.as_str(), data["data"]["code"].as_str()) {
            ("ack", _) => acks += 1,
            ("error", Some("RATE_LIMITED")) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acks <= 4, "{acks} acks beyond a burst of 3");
    assert!(limited >= 6, "only {limited} refused");
    server.stop().await.unwrap();
}
