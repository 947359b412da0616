//! Request bodies from clients that may be hostile: every body has a
//! deadline ([`DeadlineBody`], applied to every request by
//! [`serve`](super::serve)), and endpoints that read a JSON body read it
//! with [`read_bounded`], which answers a readable `413` to a body over its
//! limit.
//!
//! A body over the limit is answered before it has been read, and then the
//! rest of it is read and thrown away (up to [`DRAIN_LIMIT`], within the
//! body's deadline) before the connection closes, as nginx's lingering
//! close does: a client that writes its whole body before reading the
//! answer (Node's `http.request`, most HTTP libraries) would otherwise get
//! `EPIPE` or a reset instead of the `413`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// Bytes of an over-limit body read and discarded after the `413`, beyond
/// what was read before the limit was found: enough for a client that
/// overshoots by tens of MiB to read its answer, small enough that a
/// client streaming forever is cut off.
pub const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// The body did not arrive whole before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {} s", .0.as_secs())]
pub struct BodyDeadlineElapsed(pub Duration);

/// A request body that must arrive whole within a time from the moment its
/// request's head was read: a client sending a body slowly, or one shorter
/// than its `Content-Length`, gets an error instead of holding the
/// connection open. (tower-http's `TimeoutBody` bounds the gap between
/// frames instead, which a client sending a byte now and then never hits.)
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    limit: Duration,
    /// Created at the first poll that must wait: a body that is never read,
    /// or arrives at once, costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Instant::now() + limit,
            limit,
            sleep: None,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyDeadlineElapsed(this.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole request body of at most `max_bytes`.
///
/// - A declared `Content-Length` above `max_bytes`, or a body that grows
///   beyond it, is answered `413 PAYLOAD_TOO_LARGE` with
///   `Connection: close`; the rest of the body is drained in the
///   background (see the module docs), except for a client that asked
///   `Expect: 100-continue`: it has not sent the body, and is told not to.
/// - A body that does not arrive within its deadline ([`DeadlineBody`]) is
///   answered `408 INVALID_PAYLOAD` with `Connection: close`.
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large(headers, body, max_bytes));
    }
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if bytes.len() + data.len() > max_bytes {
            return Err(too_large(headers, body, max_bytes));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Bytes::from(bytes))
}

/// The `413`; drains what the client is still sending.
fn too_large(headers: &HeaderMap, body: Body, max_bytes: usize) -> ApiError {
    let refusal =
        ApiError::PayloadTooLarge(format!("Request body is larger than {max_bytes} bytes"));
    refuse_unread(headers, body, refusal)
}

/// `refusal`, answered before the body was read (a wrong key, a node
/// shutting down, a body too large): the body is drained in the background
/// as for a `413`, so that a client writing it whole before reading gets
/// the answer, and the connection closes.
pub fn refuse_unread(headers: &HeaderMap, body: Body, refusal: ApiError) -> ApiError {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        tokio::spawn(drain(body));
    }
    refusal.closing()
}

/// Reads and discards a body until it ends, fails (its deadline), or
/// [`DRAIN_LIMIT`] bytes have come; dropping it then closes the connection.
async fn drain(mut body: Body) {
    let mut drained: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            drained += data.len() as u64;
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    }
    tracing::debug!(drained, "discarded the rest of an oversized request body");
}

fn read_error(err: axum::Error) -> ApiError {
    let deadline = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<BodyDeadlineElapsed>());
    match deadline {
        Some(elapsed) => ApiError::BodyTimeout(format!(
            "The request body was not received within {} s",
            elapsed.0.as_secs()
        ))
        .closing(),
        None => {
            ApiError::invalid_payload(format!("Could not read the request body: {err}")).closing()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use http_body_util::{Full, StreamBody};

    fn headers(content_length: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = content_length {
            h.insert(header::CONTENT_LENGTH, n.into());
        }
        h
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_and_refuses_beyond() {
        let ok = read_bounded(&headers(None), Body::from("12345"), 5).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"12345"));
        let over = read_bounded(&headers(None), Body::from("123456"), 5).await;
        assert_eq!(over.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
        let declared = read_bounded(&headers(Some(6)), Body::empty(), 5).await;
        assert_eq!(
            declared.unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        let body = Body::new(DeadlineBody::new(stalled, Duration::from_millis(50)));
        let err = read_bounded(&headers(Some(3)), body, 5).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        let whole = Body::new(DeadlineBody::new(
            Full::new(Bytes::from_static(b"abc")),
            Duration::from_secs(10),
        ));
        assert!(read_bounded(&headers(Some(3)), whole, 5).await.is_ok());
    }
}
