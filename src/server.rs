//! HTTP(S) serving with graceful shutdown, and signal handling.
//!
//! Built on hyper-util directly rather than axum-server: the accept loop is ours, so we set
//! TCP_NODELAY, bound the TLS handshake, hand the peer address to handlers, and drain with one
//! explicit deadline, with the same code for the HTTPS webhook port and the plain admin port.
//! Certificate rotation needs nothing here: the rustls config's certificate resolver (see
//! [`crate::tls`]) picks the certificate per handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A client that opens a connection but never completes the handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1 connections must deliver a request head within this time, which also bounds idle
/// keep-alive. It is longer than Go's default idle-connection timeout (90 s, used by the
/// apiserver's webhook client) so that the client, not us, closes idle connections: a server-side
/// close races with the client reusing the connection, and a lost admission call is an error.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    serve(listener, Some(TlsAcceptor::from(tls)), app, shutdown, drain).await
}

/// Plain-HTTP variant of [`serve_https`] (admin port), same shutdown semantics.
pub async fn serve_http(
    listener: std::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    serve(listener, None, app, shutdown, drain).await
}

fn http_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, "serving");
    let builder = Arc::new(http_builder());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => log_join(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        tls.clone(),
                        app.clone(),
                        builder.clone(),
                        shutdown.clone(),
                    ));
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

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    shutdown: CancellationToken,
) {
    // Admission responses are small; don't let Nagle hold the last segment back.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let Some(acceptor) = tls else {
        return drive(stream, peer, app, &builder, &shutdown).await;
    };
    let handshake = tokio::select! {
        // A connection still handshaking at shutdown has no request in flight yet.
        () = shutdown.cancelled() => return,
        result = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => result,
    };
    match handshake {
        Ok(Ok(stream)) => drive(stream, peer, app, &builder, &shutdown).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serve HTTP on one connection; on shutdown, finish in-flight requests and close (HTTP/1: after
/// the current response; HTTP/2: GOAWAY, then the open streams complete).
async fn drive<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    builder: &Builder<TokioExecutor>,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
