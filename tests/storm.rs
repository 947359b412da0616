//! The connect storm, in a test binary of its own so that no other test
//! competes with its 10,000 sockets for the two cores.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use tokio::task::JoinSet;

/// The client's connect answer is sent before socketioxide's connect handler
/// runs; handlers registered there would miss subscribes sent right away.
/// Every one of 5,000 sockets subscribing at once must be acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_sockets_connecting_and_subscribing_at_once_are_all_acked() {
    // Every client is 127.0.0.1: no per-address limit here. On a busy
    // machine a socket's CONNECT may come later than the default 5 s
    // --connect-timeout (tested in security.test.mjs), which would close it:
    // not what this test is about.
    let server = TestServer::start(&[
        "--max-connections-per-ip",
        "100000",
        "--connect-timeout",
        "60",
    ])
    .await;
    let addr = server.addr;
    let mut tasks = JoinSet::new();
    for i in 0..5_000 {
        tasks.spawn(async move {
            let mut c = Client::connect_within(addr, Duration::from_secs(60)).await;
            // Sent the moment the connect answer arrives, as socket.io-client does.
            c.subscribe(&format!("storm-{i}")).await;
            c
        });
    }
    let mut clients = Vec::with_capacity(5_000);
    let all = async {
        while let Some(res) = tasks.join_next().await {
            clients.push(res.expect("client task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("storm finishes in time");
    assert_eq!(clients.len(), 5_000);
    drop(clients);
    server.stop().await.unwrap();
}
