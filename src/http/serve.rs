//! The connection loop: accepts TCP connections and serves the router on
//! each with hyper, where `axum::serve` offers no bounds on slow clients.
//!
//! - A request head must arrive within [`HttpTimeouts::header_read`]; the
//!   same bound closes a keep-alive connection left idle between requests
//!   (hyper starts the header timer as soon as it waits for a head).
//! - A request body must arrive whole within [`HttpTimeouts::body_read`]
//!   ([`DeadlineBody`]).
//! - Websocket upgrades are served (`serve_connection_with_upgrades`);
//!   an upgraded connection is no longer an HTTP connection and has no
//!   such bounds.
//! - Each request carries its peer's address as
//!   `axum::extract::ConnectInfo<SocketAddr>`, and the connection's
//!   [`Hangup`]: the server's way to close a connection it serves (a
//!   websocket refused at its Socket.IO connect).
//! - At shutdown the listener is dropped (new connections are refused),
//!   every connection is told to finish its request in flight and close,
//!   and [`serve`] returns once all have.
//!
//! Connections are served with hyper's HTTP/1 builder, not hyper-util's
//! `auto` one: `auto` first reads the bytes that would tell HTTP/2 apart,
//! outside hyper's header timeout, so a client that sends nothing would be
//! held forever (and HTTP/2 is not compiled in anyway).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::body::DeadlineBody;

/// Largest read buffer of a connection (hyper's default is about 400 KB).
/// Bodies are read in chunks of at most this: with 400 KB buffers, clients
/// streaming big bodies (drained after a `413`) left over 40 MB of freed
/// buffers in the allocator; with 64 KB, about 15 MB.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// How long a client may take to send what it owes.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// To send a request head; also how long a keep-alive connection may
    /// wait idle for its next request.
    pub header_read: Duration,
    /// To send a request body whole, from the end of its head.
    pub body_read: Duration,
    /// How long a connection's writes may make no progress before the
    /// kernel resets it (see [`drop_when_stalled`]).
    pub stall: Duration,
}

/// Serves `router` on `listener` until `stop` resolves, then lets the
/// connections finish their requests in flight and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: HttpTimeouts,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shutdown = Shutdown::new();
    let mut stop = pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                drop_when_stalled(&mut stream, timeouts.stall);
                // Small frames go out at once: without it, a second small
                // websocket frame written right after another (an ack, then
                // a payment) waits for the client's delayed ACK, up to 40 ms
                // on Linux. Node's HTTP server sets it too.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "cannot set TCP_NODELAY");
                }
                connection(stream, peer, &router, timeouts, shutdown.watcher())
            }
            Err(err) => accept_failed(err).await,
        }
    }
    drop(listener);
    shutdown.finish().await;
    Ok(())
}

/// Tells every connection to shut down, and knows when all have.
struct Shutdown {
    signal: watch::Sender<bool>,
    /// Each connection holds a receiver until it ends.
    open: watch::Sender<()>,
}

/// A connection's end of [`Shutdown`].
struct Watcher {
    signal: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
}

impl Shutdown {
    fn new() -> Self {
        Shutdown {
            signal: watch::channel(false).0,
            open: watch::channel(()).0,
        }
    }

    fn watcher(&self) -> Watcher {
        Watcher {
            signal: self.signal.subscribe(),
            _open: self.open.subscribe(),
        }
    }

    /// Signals every connection, then waits until all have ended.
    async fn finish(self) {
        self.signal.send_replace(true);
        self.open.closed().await;
    }
}

impl Watcher {
    /// Resolves once shutdown is signalled (or the server is gone).
    async fn shutting_down(&mut self) {
        let _ = self.signal.wait_for(|stop| *stop).await;
    }
}

/// Serves one connection in its own task.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: &Router,
    timeouts: HttpTimeouts,
    mut watcher: Watcher,
) {
    let hangup = Hangup::default();
    let stream = Hangable {
        io: stream,
        hangup: hangup.clone(),
    };
    let service = router.clone().map_request(move |req: Request<Incoming>| {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        parts.extensions.insert(hangup.clone());
        Request::from_parts(
            parts,
            axum::body::Body::new(DeadlineBody::new(body, timeouts.body_read)),
        )
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(MAX_READ_BUFFER);
    tokio::spawn(async move {
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let mut conn = pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = watcher.shutting_down() => {
                // Finishes the request in flight (if any), then closes.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(err) = ended {
            // A client that went away or was too slow: routine.
            tracing::debug!(%peer, "connection ended: {err}");
        }
        drop(watcher);
    });
}

/// The server's way to close a connection it serves, including one that
/// became a websocket (hyper then no longer drives it). In every request's
/// extensions; clones share the connection.
#[derive(Clone, Default)]
pub struct Hangup(Arc<HangupState>);

#[derive(Default)]
struct HangupState {
    /// [`OPEN`], [`ASKED`], [`WRITTEN`] or [`HUNG_UP`].
    state: AtomicU8,
    reader: AtomicWaker,
}

const OPEN: u8 = 0;
/// A hang-up is asked: after the next answer written and flushed.
const ASKED: u8 = 1;
/// The answer was written; hung up at the next flush.
const WRITTEN: u8 = 2;
const HUNG_UP: u8 = 3;

/// Fewest bytes an answer worth waiting for takes: a refusal's
/// `connect_error` frame is longer; an Engine.IO ping (`2`, in a 3-byte
/// frame) that may go out first is shorter, and does not count.
const ANSWER_BYTES: usize = 16;

impl Hangup {
    /// Closes the connection once the next answer (the one that says why)
    /// has been written and flushed: from then on it reads as ended, so
    /// its reader (engineioxide's) closes the session, which drops the
    /// connection.
    pub fn after_next_answer(&self) {
        self.advance(OPEN, ASKED);
    }

    /// A plain load first: every write and flush of every connection
    /// passes here, and almost none has a hang-up asked.
    fn advance(&self, from: u8, to: u8) -> bool {
        let state = &self.0.state;
        state.load(Ordering::Acquire) == from
            && state
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn wrote(&self, bytes: usize) {
        if bytes >= ANSWER_BYTES {
            self.advance(ASKED, WRITTEN);
        }
    }

    fn flushed(&self) {
        if self.advance(WRITTEN, HUNG_UP) {
            self.0.reader.wake();
        }
    }

    fn hung_up(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == HUNG_UP
    }
}

/// A connection that reads as ended once its [`Hangup`] says so.
struct Hangable<T> {
    io: T,
    hangup: Hangup,
}

impl<T: AsyncRead + Unpin> AsyncRead for Hangable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.hangup.0.reader.register(cx.waker());
        if self.hangup.hung_up() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Hangable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.hangup.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.hangup.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.hangup.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A failed `accept`. Errors about one connection (it was reset before we
/// took it) are ignored; others, such as running out of file descriptors,
/// are logged and the loop pauses a second so that it does not spin while
/// nothing can be accepted (as hyper's and axum's loops do).
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A peer that stops reading (its receive window stays closed) or
/// vanishes with data unacknowledged has its connection reset by the kernel
/// after `after` (`TCP_USER_TIMEOUT`, which also bounds zero-window
/// probing). Without it, a websocket whose client stopped reading is never
/// closed: engineioxide's writer waits forever on the full TCP buffer while
/// holding the session's queue, so even a heartbeat failure cannot finish
/// closing it, and the socket, its subscriptions and its connection slot
/// stay. With it the write fails, the session closes and everything is
/// released.
fn drop_when_stalled(tcp: &mut tokio::net::TcpStream, after: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(&*tcp).set_tcp_user_timeout(Some(after)) {
        tracing::debug!(%err, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, after);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_request_knows_its_peer_and_serve_returns_after_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let timeouts = HttpTimeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            stall: Duration::from_secs(45),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, timeouts, async {
            let _ = stopped.await;
        }));

        let mut client = TcpStream::connect(addr).await.unwrap();
        let me = client.local_addr().unwrap();
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&me.to_string()), "{answer} from {me}");

        // An idle keep-alive connection does not hold the shutdown back.
        let _idle = TcpStream::connect(addr).await.unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once stopped")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
