//! HTTP(S) serving with graceful shutdown, and signal handling.
//!
//! Built on hyper-util directly rather than axum-server: the accept loop is ours, so we set
//! TCP_NODELAY, bound the TLS handshake, hand the peer address to handlers, and drain with one
//! explicit deadline, with the same code for the HTTPS webhook port and the plain admin port.
//! Every resource a client can hold is bounded ([`Limits`]): connections, handshake time, time
//! to the first request, idle time, HTTP/2 streams and flow-control windows, header sizes.
//! Request bodies and per-request time are bounded by the webhook router (`crate::webhook`).
//! Certificate rotation needs nothing here: the rustls config's certificate resolver (see
//! [`crate::tls`]) picks the certificate per handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Open connections per port. The apiserver multiplexes admission calls over a few HTTP/2
/// connections per apiserver instance (more only when [`H2_MAX_CONCURRENT_STREAMS`] are busy),
/// so this leaves ample room; it bounds what connections cost (TLS and HTTP buffers, and up to
/// [`H2_CONNECTION_WINDOW`] of unread request data each: 256 x 256 KiB = 64 MiB at most). At the
/// limit no connection is accepted until one closes; established connections keep working.
pub const MAX_CONNECTIONS: usize = 256;
/// A client that opens a connection but never completes the handshake is dropped after this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the handshake, the first request must start within this: a client that connects and
/// sends nothing (slowloris) frees its slot quickly. The apiserver sends at once.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without a request in flight for this long is closed (HTTP/2: GOAWAY, which
/// clients handle without losing a request). Longer than Go's idle-connection timeout (90 s,
/// used by the apiserver's webhook client) so that normally the client closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/1 connections must deliver a request head within this time, which also bounds idle
/// keep-alive. It is longer than Go's default idle-connection timeout (90 s, used by the
/// apiserver's webhook client) so that the client, not us, closes idle connections: a server-side
/// close races with the client reusing the connection, and a lost admission call is an error.
/// (A connection's first request is bounded by [`FIRST_REQUEST_TIMEOUT`] instead.)
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/2 streams (requests) in flight per connection; hyper's default is 200. The apiserver's
/// Go client opens another connection when they are all busy, and more requests in flight per
/// connection would only queue for the body budget (`webhook::MAX_BODY_BYTES_IN_FLIGHT`).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Request data a client may send on one HTTP/2 stream / connection before we read it (flow
/// control). hyper's default is 1 MiB each; smaller windows bound what a connection whose
/// requests wait for the body budget can make us buffer. A 3 MiB review still streams in a
/// few round trips.
pub const H2_STREAM_WINDOW: u32 = 128 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP/2 pings on otherwise quiet connections find dead peers (a vanished apiserver, a
/// half-open TCP connection) instead of keeping them until [`IDLE_TIMEOUT`].
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers (HTTP/2 header list; HTTP/1 read buffer, which holds the head): an
/// admission call has a handful of small headers.
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
pub const H1_MAX_BUF: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connection limits of a server; [`Limits::default`] is the constants above. Tests shorten
/// the timeouts and lower the caps to exercise them quickly.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub first_request_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            first_request_timeout: FIRST_REQUEST_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
            h2_keepalive_interval: H2_KEEPALIVE_INTERVAL,
            h2_keepalive_timeout: H2_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Serve `app` over HTTPS (HTTP/1.1 keep-alive and HTTP/2 via ALPN) on an already-bound listener
/// until `shutdown` is cancelled; then stop accepting (the listener is closed, so new connections
/// are refused), let in-flight requests finish for at most `drain`, and return.
pub async fn serve_https(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    serve_https_with(listener, tls, app, shutdown, drain, Limits::default()).await
}

/// [`serve_https`] with other [`Limits`].
pub async fn serve_https_with(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
    limits: Limits,
) -> io::Result<()> {
    let tls = Some(TlsAcceptor::from(tls));
    serve(listener, tls, app, shutdown, drain, limits).await
}

/// Plain-HTTP variant of [`serve_https`] (admin port), same shutdown semantics and limits.
pub async fn serve_http(
    listener: std::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    serve(listener, None, app, shutdown, drain, Limits::default()).await
}

fn http_builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    builder
}

/// Accept a connection once a connection slot is free (no accept while at the limit).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection slots closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
    limits: Limits,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, "serving");
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => log_join(joined),
            accepted = accept(&listener, &slots) => match accepted {
                Ok((stream, peer, slot)) => {
                    let conn = Connection {
                        peer,
                        tls: tls.clone(),
                        app: app.clone(),
                        builder: builder.clone(),
                        shutdown: shutdown.clone(),
                        limits,
                    };
                    connections.spawn(async move {
                        conn.serve(stream).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // Closing the listener makes new connections fail fast instead of waiting in the backlog.
    drop(listener);
    if !connections.is_empty() {
        tracing::info!(addr = %local, connections = connections.len(), ?drain, "draining connections");
    }
    let drained = tokio::time::timeout(drain, async {
        while let Some(joined) = connections.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(addr = %local, connections = connections.len(), "drain deadline passed; closing remaining connections");
        connections.shutdown().await;
    }
    tracing::info!(addr = %local, scheme, "stopped");
    Ok(())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "connection task panicked");
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    shutdown: CancellationToken,
    limits: Limits,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let peer = self.peer;
        // Admission responses are small; don't let Nagle hold the last segment back.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = self.tls.clone() else {
            return self.drive(stream).await;
        };
        let handshake = tokio::select! {
            // A connection still handshaking at shutdown has no request in flight yet.
            () = self.shutdown.cancelled() => return,
            result = tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(stream)) => result,
        };
        match handshake {
            Ok(Ok(stream)) => self.drive(stream).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Serve HTTP on one connection; on shutdown, finish in-flight requests and close (HTTP/1:
    /// after the current response; HTTP/2: GOAWAY, then the open streams complete). A connection
    /// that starts no request within the first-request timeout is dropped; one without a request
    /// in flight for the idle timeout is closed gracefully.
    async fn drive<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::new());
        let service = {
            let (app, activity) = (self.app.clone(), activity.clone());
            tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let busy = activity.start();
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await;
                    drop(busy);
                    response
                }
            })
        };
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let result = loop {
            let deadline = activity.deadline(&self.limits);
            tokio::select! {
                result = connection.as_mut() => break result,
                () = self.shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    break connection.as_mut().await;
                }
                () = tokio::time::sleep_until(deadline) => match activity.expired(&self.limits) {
                    Expired::No => {}
                    Expired::NeverUsed => {
                        tracing::debug!(%peer, "no request within the first-request timeout; closing");
                        return;
                    }
                    Expired::Idle => {
                        tracing::debug!(%peer, "idle; closing");
                        connection.as_mut().graceful_shutdown();
                        // Nothing in flight: closes at once, unless the peer stalls the close.
                        match tokio::time::timeout(self.limits.first_request_timeout, connection.as_mut()).await {
                            Ok(result) => break result,
                            Err(_) => return,
                        }
                    }
                },
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Requests on one connection, for the first-request and idle timeouts.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    last_done: Mutex<Instant>,
}

enum Expired {
    No,
    NeverUsed,
    Idle,
}

impl Activity {
    fn new() -> Activity {
        let now = Instant::now();
        Activity {
            started: now,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_done: Mutex::new(now),
        }
    }

    /// A request started; it ends when the guard drops.
    fn start(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn last_done(&self) -> Instant {
        *self.last_done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When to look again.
    fn deadline(&self, limits: &Limits) -> Instant {
        if self.requests.load(Ordering::Relaxed) == 0 {
            self.started + limits.first_request_timeout
        } else if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + limits.idle_timeout
        } else {
            self.last_done() + limits.idle_timeout
        }
    }

    fn expired(&self, limits: &Limits) -> Expired {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Expired::No
        } else if self.requests.load(Ordering::Relaxed) == 0 {
            if now >= self.started + limits.first_request_timeout {
                Expired::NeverUsed
            } else {
                Expired::No
            }
        } else if now >= self.last_done() + limits.idle_timeout {
            Expired::Idle
        } else {
            Expired::No
        }
    }
}

/// A request in flight on a connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// On SIGTERM or SIGINT, cancel `token` (graceful shutdown); a second signal exits the process
/// immediately. Must be called inside a Tokio runtime; the handlers are installed before this
/// returns, so a signal sent afterwards is never missed.
pub fn cancel_on_signal(token: CancellationToken) {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers; SIGTERM will kill the process without draining");
            return;
        }
    };
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(
            signal = first.name,
            "shutting down; a second signal exits immediately"
        );
        token.cancel();
        let second = signals.next().await;
        tracing::warn!(signal = second.name, "second signal; exiting now");
        std::process::exit(second.exit_code);
    });
}

struct Received {
    name: &'static str,
    exit_code: i32,
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Received {
        // Exit codes follow the shell convention 128 + signal number.
        tokio::select! {
            _ = self.term.recv() => Received { name: "SIGTERM", exit_code: 143 },
            _ = self.int.recv() => Received { name: "SIGINT", exit_code: 130 },
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> Received {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "waiting for Ctrl-C failed");
            std::future::pending::<()>().await;
        }
        Received {
            name: "Ctrl-C",
            exit_code: 130,
        }
    }
}
