//! The API's HTTP server loop: hyper's connection builder under axum's router, because `axum::serve` offers no
//! way to bound what a client holds. Three limits (`[api]`):
//!
//! - `max_connections`: connections served at once. Past it the loop stops accepting until one closes, so a flood
//!   of connections cannot exhaust the process's file descriptors (measured before: 20,000 connections took every
//!   descriptor and `/healthz` stopped answering). It is capped below the process's descriptor limit, which the
//!   database and provider connections share.
//! - `header_read_timeout_secs`: how long an HTTP/1 client has to send a request's headers. A client trickling
//!   them byte by byte (slowloris) is cut off instead of holding its connection forever.
//! - `idle_timeout_secs`: a connection on which no byte moves, either way, for this long is closed. Without it a
//!   connection that never sends its first bytes (the server waits to tell HTTP/1 from HTTP/2), an idle HTTP/2
//!   connection, or a client that stops reading its response would hold a connection slot forever, and
//!   `max_connections` such sockets would lock every client out.
//!
//! A response that streams for as long as the client listens (the feed's Server-Sent Events) marks its connection
//! [`Streaming`]: from then on the connection's reads are not timed (the client has nothing more to send), while
//! its writes still are (a client that stops reading is cut off), and the stream's keepalive comments keep bytes
//! moving.
//!
//! Each request carries the peer address (`ConnectInfo`), for the per-client key lookup limit. Shutdown: stop
//! accepting, let in-flight requests finish for `api.shutdown_grace_secs`, then drop what is left.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A request extension: marks its connection as carrying a response that streams until the client leaves.
#[derive(Clone, Default)]
pub struct Streaming(Arc<AtomicBool>);

impl Streaming {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A connection's socket with idle timeouts on reads and writes, whose read timeout is dropped once a response
/// on it is [`Streaming`].
struct ConnectionStream {
    inner: Pin<Box<TimeoutStream<tokio::net::TcpStream>>>,
    streaming: Streaming,
    reads_untimed: bool,
}

impl tokio::io::AsyncRead for ConnectionStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.reads_untimed && this.streaming.0.load(Ordering::Relaxed) {
            this.inner.as_mut().set_read_timeout_pinned(None);
            this.reads_untimed = true;
        }
        this.inner.as_mut().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ConnectionStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// Descriptors left for everything but API connections (database pools, provider and callback requests, files).
const RESERVED_DESCRIPTORS: u64 = 256;

/// The limits the loop puts on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long in-flight requests get on shutdown.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(connection_cap(limits.max_connections)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: pause, never stop serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(limits.idle_timeout));
        stream.set_write_timeout(Some(limits.idle_timeout));
        let streaming = Streaming::default();
        let stream = ConnectionStream {
            inner: Box::pin(stream),
            streaming: streaming.clone(),
            reads_untimed: false,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(streaming.clone());
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection ends with an error when the client goes away or times out: nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("API shutdown grace elapsed; dropping the connections still open");
        }
    }
    Ok(())
}

/// `max_connections`, capped so that API connections leave [`RESERVED_DESCRIPTORS`] of the process's descriptor
/// limit (`ulimit -n`) to everything else. The soft limit is first raised to the hard one, as servers do.
fn connection_cap(configured: usize) -> usize {
    let Some(limit) = raise_descriptor_limit() else {
        return configured.max(1);
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if configured > room {
        tracing::warn!(
            configured,
            serving = room.max(1),
            descriptor_limit = limit,
            "api.max_connections is above what the descriptor limit leaves; raise `ulimit -n` to serve more"
        );
    }
    configured.min(room).max(1)
}

/// Raises the soft descriptor limit to the hard one; the soft limit now in force (`None` if unknown).
fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
