//! Fuzz target: raw Engine.IO / Socket.IO input fed to a real Tidings
//! server running in this process (`tidings::Server`, memory store, on
//! 127.0.0.1:0, started once in a lazily built tokio runtime and reused by
//! every execution).
//!
//! Input format (so that seeds can be written by hand): the first byte
//! picks the transport.
//!
//! - even: **polling**. The rest is the body of one `POST` to a polling
//!   session opened by a handshake (`GET ?EIO=4&transport=polling`), sent
//!   straight to the server's router (`Server::router`, every middleware
//!   and the Socket.IO layer, without a TCP connection: many executions per
//!   second). Packets in a polling body are separated by `\x1e`, as on the
//!   wire. A session the server kept open is reused by the next polling
//!   execution (a fresh one is opened when it was closed), so sessions do
//!   not pile up.
//! - odd: **websocket**, over TCP. The rest is split on `0xff` (a byte
//!   UTF-8 never holds) into at most 16 frames, sent on one websocket
//!   connection that is reused across executions while the server keeps it
//!   (a fresh one is opened, and joins namespace `/` with `40`, when it
//!   closed). A frame starting with `0xfe` is sent as a binary frame of the
//!   bytes after it, any other as a text frame (invalid UTF-8 replaced).
//!   After the frames, a websocket ping: its pong proves the server read
//!   them all.
//!
//! A failure is: a panic anywhere in the server (libFuzzer's panic hook
//! aborts), a 5xx answer, no answer within 4 s (a hang), or `/healthz`
//! over TCP not answering 200 (checked every 256 executions).

#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use tidings::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

/// Longest wait for any answer of the server; past it the execution
/// panics as a hang (below libFuzzer's `-timeout=5`).
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// Most websocket frames sent in one execution.
const MAX_FRAMES: usize = 16;

/// Largest answer body read (the server's are small).
const MAX_ANSWER: usize = 1 << 20;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server every execution reuses.
struct Harness {
    rt: Runtime,
    addr: SocketAddr,
    router: Router,
    executions: AtomicU64,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    // libFuzzer's hook prints a symbolised backtrace before aborting,
    // which takes seconds in this binary: meanwhile the fuzzing thread
    // went on (or, replaying one input, exited 0), so a panic in a server
    // task was blamed on a later input or missed. Abort at once instead.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panic in the server or the harness: {info}");
        std::process::abort();
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let config = Config::parse_from([
        "tidings",
        "--listen",
        "127.0.0.1:0",
        "--ingest-token",
        "fuzz",
        // High enough that the fuzzer reaches subscribe itself rather than
        // the rate limit on a reused socket.
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let (addr, router) = rt.block_on(async {
        let server = Server::bind(&config).await.expect("the server binds");
        let addr = server.local_addr();
        let router = server.router();
        tokio::spawn(server.run(std::future::pending()));
        (addr, router)
    });
    Harness {
        rt,
        addr,
        router,
        executions: AtomicU64::new(0),
    }
});

thread_local! {
    /// The websocket kept open between executions.
    static WS: RefCell<Option<Ws>> = const { RefCell::new(None) };
    /// The polling session kept open between executions.
    static SID: RefCell<Option<String>> = const { RefCell::new(None) };
}

impl Harness {
    /// One request to the router: the status and the body.
    async fn call(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let res = self
            .router
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), MAX_ANSWER)
            .await
            .expect("the answer body");
        assert!(!status.is_server_error(), "{status}");
        (status, body.to_vec())
    }

    async fn handshake(&self) -> String {
        let req = Request::get("/ws/v1/?EIO=4&transport=polling")
            .body(Body::empty())
            .unwrap();
        let (status, open) = self.call(req).await;
        assert_eq!(status, StatusCode::OK, "handshake");
        let open = String::from_utf8_lossy(&open);
        sid_of(&open).unwrap_or_else(|| panic!("no sid in {open:?}"))
    }

    async fn post(&self, sid: &str, body: &[u8]) -> StatusCode {
        let req = Request::post(format!("/ws/v1/?EIO=4&transport=polling&sid={sid}"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Body::from(body.to_vec()))
            .unwrap();
        self.call(req).await.0
    }

    /// Posts `body` to the kept session, or to a new one if that one is
    /// gone; returns the session if the server kept it.
    async fn polling(&self, sid: Option<String>, body: &[u8]) -> Option<String> {
        if let Some(sid) = sid
            && self.post(&sid, body).await == StatusCode::OK
        {
            return Some(sid);
        }
        // The kept session was gone (or refused this body): the body goes
        // to a fresh session, so that every input reaches one.
        let sid = self.handshake().await;
        (self.post(&sid, body).await == StatusCode::OK).then_some(sid)
    }

    async fn connect(&self) -> Ws {
        let url = format!("ws://{}/ws/v1/?EIO=4&transport=websocket", self.addr);
        // Without Nagle: small frames are not held back for an ACK.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("the websocket opens");
        match ws.next().await {
            Some(Ok(Message::Text(open))) if open.starts_with('0') => {}
            other => panic!("no open packet: {other:?}"),
        }
        ws.send(Message::text("40")).await.expect("40 is sent");
        ws
    }

    /// Sends `frames` on the kept websocket; returns it if the server kept
    /// it open.
    async fn websocket(&self, ws: Option<Ws>, frames: Vec<Message>) -> Option<Ws> {
        let mut ws = match ws {
            Some(ws) => ws,
            None => self.connect().await,
        };
        for frame in frames {
            ws.feed(frame).await.ok()?;
        }
        ws.send(Message::Ping(Bytes::from_static(b"sync")))
            .await
            .ok()?;
        loop {
            match ws.next().await? {
                Ok(Message::Pong(p)) if p.as_ref() == b"sync" => return Some(ws),
                // The server's Engine.IO ping: answer it so that the
                // connection is not dropped for a missing pong.
                Ok(Message::Text(t)) if t.as_str() == "2" => {
                    ws.send(Message::text("3")).await.ok()?;
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                // The server does not disable Nagle: its next small frame
                // (our pong) waits for this one's ACK, which the client
                // delays up to 40 ms unless it has data to send. An
                // unsolicited pong (ignored by the server) carries the ACK.
                Ok(_) => ws.send(Message::Pong(Bytes::new())).await.ok()?,
            }
        }
    }

    /// `GET /healthz` over a real TCP connection.
    async fn healthz(&self) {
        let mut tcp = TcpStream::connect(self.addr)
            .await
            .expect("the server accepts");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
            .await
            .expect("the request is sent");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("the answer");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "/healthz: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// The `sid` of an Engine.IO open packet `0{"sid":"...",...}`.
fn sid_of(open: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(open.strip_prefix('0')?).ok()?;
    Some(json.get("sid")?.as_str()?.to_owned())
}

fn frames(rest: &[u8]) -> Vec<Message> {
    rest.split(|&b| b == 0xff)
        .take(MAX_FRAMES)
        .map(|chunk| match chunk.split_first() {
            Some((0xfe, bin)) => Message::binary(bin.to_vec()),
            _ => Message::text(String::from_utf8_lossy(chunk).into_owned()),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let n = h.executions.fetch_add(1, Ordering::Relaxed);
    h.rt.block_on(async {
        let run = async {
            if mode % 2 == 0 {
                let sid = SID.with(|s| s.borrow_mut().take());
                let sid = h.polling(sid, rest).await;
                SID.with(|s| *s.borrow_mut() = sid);
            } else {
                let ws = WS.with(|w| w.borrow_mut().take());
                let ws = h.websocket(ws, frames(rest)).await;
                WS.with(|w| *w.borrow_mut() = ws);
            }
            if n % 256 == 0 {
                h.healthz().await;
            }
        };
        if tokio::time::timeout(ANSWER_WITHIN, run).await.is_err() {
            panic!("the server did not answer within {ANSWER_WITHIN:?}");
        }
    });
});
