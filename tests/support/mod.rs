//! Test support: an in-process server on a free port, a minimal Socket.IO
//! (protocol v5 over Engine.IO v4) websocket client, and an ingest client.
//! The official socket.io-client is exercised by the end-to-end suite in
//! `tests/e2e`; this client exists to drive thousands of sockets from one
//! test process and to control exactly which frames are sent when.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings::{Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN: &str = "test-token";

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// An HTTP client whose every request fails after [`WAIT`].
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("an HTTP client")
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts a server with the defaults plus `args` (flags as on the
    /// command line).
    pub async fn start(args: &[&str]) -> TestServer {
        let mut argv = vec![
            "tidings",
            "--listen",
            "127.0.0.1:0",
            "--ingest-token",
            TOKEN,
        ];
        argv.extend_from_slice(args);
        let config = Config::parse_from(argv);
        let server = Server::bind(&config).await.expect("server binds");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
    }

    /// Posts `body` to the ingest endpoint with the test token.
    pub async fn ingest(&self, body: &Value) -> (u16, Value) {
        let res = http()
            .post(self.url("/v1/payments"))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .expect("ingest request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let res = http().get(self.url(path)).send().await.expect("GET");
        let status = res.status().as_u16();
        (status, res.text().await.expect("a body"))
    }
}

/// A payment for `tracking_id` with a unique signature `sig`.
pub fn payment(tracking_id: &str, sig: &str) -> Value {
    json!({ "trackingId": tracking_id, "amount": 1000, "timestamp": 1_699_876_543u64,
            "status": "executed", "signature": sig })
}

/// What the server sent a [`Client`].
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An event: name and first argument.
    Event(String, Value),
    /// An acknowledgement: id and first argument.
    Ack(u64, Value),
}

impl Frame {
    pub fn event(&self) -> Option<(&str, &Value)> {
        match self {
            Frame::Event(name, data) => Some((name, data)),
            Frame::Ack(..) => None,
        }
    }
}

/// A minimal Socket.IO v5 websocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub sid: String,
}

impl Client {
    /// Connects to namespace `/` and waits for the server's connect answer.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_within(addr, WAIT).await
    }

    /// [`Client::connect`] with its own bound on the TCP and websocket
    /// handshake (a storm of thousands queues in the kernel's accept queue).
    pub async fn connect_within(addr: SocketAddr, wait: Duration) -> Client {
        let url = format!("ws://{addr}/ws/v1/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connects in time")
            .expect("websocket handshake");
        let open = next_packet(&mut ws).await;
        assert!(open.starts_with('0'), "engine.io open packet, got {open:?}");
        ws.send(Message::text("40")).await.expect("send connect");
        let connected = next_packet(&mut ws).await;
        let body = connected
            .strip_prefix("40")
            .unwrap_or_else(|| panic!("connect answer, got {connected:?}"));
        let sid = serde_json::from_str::<Value>(body).expect("connect payload")["sid"]
            .as_str()
            .expect("sid")
            .to_owned();
        Client { ws, sid }
    }

    /// Sends an event with one argument (or none for `Value::Null`... use
    /// [`Client::send_raw`] for that).
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_raw(format!("42{}", json!([event, data]))).await;
    }

    /// Sends an event asking for an acknowledgement with `id`.
    pub async fn emit_with_ack(&mut self, event: &str, data: Value, id: u64) {
        self.send_raw(format!("42{id}{}", json!([event, data])))
            .await;
    }

    pub async fn send_raw(&mut self, packet: String) {
        self.ws
            .send(Message::text(packet))
            .await
            .expect("send packet");
    }

    /// Queues many packets and flushes once: they reach the server together.
    pub async fn send_all(&mut self, packets: impl IntoIterator<Item = String>) {
        for p in packets {
            self.ws.feed(Message::text(p)).await.expect("feed packet");
        }
        self.ws.flush().await.expect("flush");
    }

    /// The next event or ack (pings are answered on the way); fails after
    /// [`WAIT`].
    pub async fn next(&mut self) -> Frame {
        let text = next_packet(&mut self.ws).await;
        if let Some(rest) = text.strip_prefix("42") {
            let v: Value = serde_json::from_str(rest).expect("event payload");
            let name = v[0].as_str().expect("event name").to_owned();
            return Frame::Event(name, v[1].clone());
        }
        if let Some(rest) = text.strip_prefix("43") {
            let split = rest.find('[').expect("ack payload");
            let id = rest[..split].parse().expect("ack id");
            let v: Value = serde_json::from_str(&rest[split..]).expect("ack payload");
            return Frame::Ack(id, v[0].clone());
        }
        panic!("unexpected packet {text:?}");
    }

    /// The next event (acks are skipped).
    pub async fn next_event(&mut self) -> (String, Value) {
        loop {
            if let Frame::Event(name, data) = self.next().await {
                return (name, data);
            }
        }
    }

    /// Subscribes and asserts the ack.
    pub async fn subscribe(&mut self, tracking_id: &str) {
        self.emit("subscribe", json!({ "trackingId": tracking_id }))
            .await;
        let (name, data) = self.next_event().await;
        assert_eq!(name, "ack", "subscribe answered with {data}");
        assert_eq!(
            data["data"],
            format!("Subscribed to trackingId: {tracking_id}")
        );
    }

    /// Whether the server closed the connection (within [`WAIT`]).
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// The next Engine.IO packet other than a ping (which is answered).
async fn next_packet(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a packet arrives in time")
            .expect("connection open")
            .expect("websocket frame");
        match msg {
            Message::Text(t) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.expect("send pong");
            }
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected websocket message {other:?}"),
        }
    }
}
