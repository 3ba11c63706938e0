//! `kube-vip-webhook serve`: the HTTPS webhook and the admin port, shared by both modes, and
//! standalone mode (no cluster). Cluster mode (`crate::cluster`) builds on [`start_servers`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::Config;
use crate::engine::Options;
use crate::files;
use crate::forward::Forwarder;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::state::{Allocator, Confirm};
use crate::webhook::{self, WebhookState};

/// How long in-flight requests may take to finish once the drain begins.
const DRAIN: Duration = Duration::from_secs(20);

/// What both modes serve with (parsed by `cli`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTPS webhook address.
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (`/livez`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    pub options: Options,
    /// After SIGTERM: keep serving this long with `/readyz` false (so endpoints drop the pod
    /// before it stops answering), then drain. What kube-apiserver does with
    /// `--shutdown-delay-duration`; replaces a `preStop` sleep (which needs Kubernetes 1.30).
    pub shutdown_delay: Duration,
    /// Require a client certificate (the apiserver's) on the webhook port.
    pub client_auth: Option<crate::tls::ClientAuth>,
    /// What reviews may hold (reservations in total and per namespace).
    pub quotas: crate::state::Quotas,
    /// `--exclude`: never handed out, in every namespace.
    pub exclude: Option<crate::config::Exclusion>,
}

/// `serve --standalone`: pools and Services from files.
#[derive(Clone, Debug)]
pub struct Standalone {
    pub configmap: PathBuf,
    pub services: Vec<PathBuf>,
    /// VIPPool objects (`--pools`).
    pub pools: Vec<PathBuf>,
    /// Serving certificate files; without them a self-signed one is generated into `cert_dir`.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub cert_dir: Option<PathBuf>,
}

/// The two phases of a graceful stop. `stopping` (first SIGTERM): readiness false, the Lease is
/// released, requests are still served. `shutdown` (after the shutdown delay): drain and exit.
/// Cancelling `shutdown` also cancels `stopping`.
#[derive(Clone, Debug)]
pub struct Stop {
    pub stopping: CancellationToken,
    pub shutdown: CancellationToken,
}

impl Default for Stop {
    fn default() -> Self {
        let shutdown = CancellationToken::new();
        Stop {
            stopping: shutdown.child_token(),
            shutdown,
        }
    }
}

impl Stop {
    /// SIGTERM/SIGINT begin stopping; `delay` later the drain begins (a second signal exits).
    pub fn on_signal(&self, delay: Duration) {
        crate::server::cancel_on_signal(self.stopping.clone());
        let stop = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.shutdown.cancelled() => return,
                _ = stop.stopping.cancelled() => {}
            }
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "not ready; serving until the shutdown delay has passed"
                );
                tokio::time::sleep(delay).await;
            }
            stop.shutdown.cancel();
        });
    }
}

/// A started server: where it listens, and how to stop it.
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Directory of the generated self-signed certificate (`ca.crt`, `tls.crt`, `tls.key`).
    pub cert_dir: Option<PathBuf>,
    pub allocator: Arc<Allocator>,
    pub readiness: Readiness,
    pub stop: Stop,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Wait until every task ends (after `stop.shutdown` is cancelled, or on the first failure).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %format!("{e:#}"), "task failed; shutting down");
                self.stop.shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Run another task under the same stop (cluster mode: watches, reconciler, election).
    pub fn spawn(
        &mut self,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(task);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; `RUST_LOG=kube_vip_webhook=debug`
/// shows one line per admission decision). A subscriber installed earlier is kept.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in collected Pod logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `serve --standalone`: no cluster; the out-of-the-box demo.
pub async fn start_standalone(
    settings: &Settings,
    standalone: &Standalone,
    stop: Stop,
) -> anyhow::Result<Running> {
    let configmap = &standalone.configmap;
    let config = Config::from_data(&files::load_configmap_data(configmap)?);
    for e in config.errors() {
        tracing::warn!(configmap = %configmap.display(), "config error: {e}");
    }
    let allocator = Arc::new(
        Allocator::new(
            settings.options.clone(),
            Confirm::OnAdmit,
            configmap.display().to_string(),
        )
        .with_quotas(settings.quotas)
        .with_exclusion(settings.exclude.clone()),
    );
    allocator.set_config(Some(config));
    allocator.load_objects(&crate::pools::PoolObjects {
        pools: files::load_pools(&standalone.pools)?,
        namespaces: Vec::new(),
    });
    for e in crate::pools::PoolObjects::errors(&allocator.pools()) {
        tracing::warn!("pool error: {e}");
    }
    // Only the index reads them: no reconciler here, reviews carry their own labels.
    allocator.reset_services(&files::load_svc_infos_for_index(&standalone.services)?);

    let (tls, cert_dir) = match &standalone.tls_files {
        Some((cert, key)) => (crate::tls::reloading_server_config(cert, key)?, None),
        None => {
            // The key goes into a directory only we can use, never through a planted link.
            let dir = match &standalone.cert_dir {
                Some(dir) => crate::private_files::private_dir(dir)?,
                None => crate::private_files::fresh_dir(&std::env::temp_dir(), "kube-vip-webhook")?,
            };
            let tls = self_signed_into(&dir)?;
            (tls, Some(dir))
        }
    };
    let readiness = Readiness::default();
    let metrics = Arc::new(Metrics::new(allocator.clone()));
    metrics.set_config_loaded(std::time::SystemTime::now());
    let served = standalone
        .tls_files
        .as_ref()
        .map(|(cert, _)| cert.clone())
        .or_else(|| cert_dir.as_ref().map(|d| d.join("tls.crt")));
    if let Some(file) = served {
        metrics.set_certificate_source(crate::metrics::certificate_file(file));
    }
    let leadership = Leadership::single(Some(metrics.clone()));
    leadership.set_synced();
    let running = start_servers(
        settings,
        Parts {
            allocator,
            metrics,
            leadership,
            forward: None,
            tls,
            readiness: readiness.clone(),
            cert_dir,
            peers: None,
        },
        stop,
    )?;
    readiness.set_ready(true);
    if let Some(dir) = &running.cert_dir {
        print_demo_hint(dir, running.webhook_addr);
    }
    Ok(running)
}

/// What the servers are built from.
pub struct Parts {
    pub allocator: Arc<Allocator>,
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    pub forward: Option<Arc<Forwarder>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub readiness: Readiness,
    pub cert_dir: Option<PathBuf>,
    /// Other replicas, accepted by their serving certificate when client certificates are
    /// required (they forward admissions to the leader).
    pub peers: Option<crate::tls::Peers>,
}

/// Bind both ports and spawn the HTTPS webhook and the admin server. Shared by both modes.
pub fn start_servers(settings: &Settings, parts: Parts, stop: Stop) -> anyhow::Result<Running> {
    let Parts {
        allocator,
        metrics,
        leadership,
        forward,
        tls,
        readiness,
        cert_dir,
        peers,
    } = parts;
    // Read the client CA before binding: a bad file fails the start, not the first handshake.
    let tls = match &settings.client_auth {
        Some(auth) => crate::tls::require_client_certs(&tls, auth, peers)?,
        None => tls,
    };
    let webhook_listener = bind(settings.listen)?;
    let admin_listener = bind(settings.admin_listen)?;
    let webhook_addr = webhook_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut tasks = JoinSet::new();
    let app = webhook::router(WebhookState {
        allocator: allocator.clone(),
        metrics: metrics.clone(),
        leadership,
        forward,
    });
    // The admin port outlives the webhook drain, so probes see `/readyz` 503 (not a refused
    // connection) and `/livez` 200 while in-flight admissions finish.
    let admin_stop = CancellationToken::new();
    let (token, guard) = (stop.shutdown.clone(), admin_stop.clone());
    tasks.spawn(async move {
        // Stops the admin port however this task ends (drained, failed, or panicked).
        let _admin_stop = guard.drop_guard();
        crate::server::serve_https(webhook_listener, tls, app, token, DRAIN)
            .await
            .context("webhook server")
    });
    let admin = crate::admin::router(readiness.clone(), metrics);
    tasks.spawn(async move {
        crate::server::serve_http(admin_listener, admin, admin_stop, DRAIN)
            .await
            .context("admin server")
    });
    // Readiness goes false the moment stopping starts, before the delay and the drain.
    let (r, token) = (readiness.clone(), stop.stopping.clone());
    tasks.spawn(async move {
        token.cancelled().await;
        r.set_ready(false);
        Ok(())
    });
    Ok(Running {
        webhook_addr,
        admin_addr,
        cert_dir,
        allocator,
        readiness,
        stop,
        tasks,
    })
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Generate a CA and a serving certificate for localhost into `dir` (private: see
/// [`crate::private_files`]); the key is readable by this user only.
fn self_signed_into(dir: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let names = [
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = crate::tls::generate_self_signed(&names, Duration::from_secs(365 * 24 * 3600))?;
    for (file, pem, mode) in [
        ("ca.crt", &generated.ca_cert_pem, 0o644),
        ("tls.crt", &generated.cert_pem, 0o644),
        ("tls.key", &generated.key_pem, 0o600),
    ] {
        crate::private_files::write_file(dir, file, pem.as_bytes(), mode)?;
    }
    Ok(crate::tls::server_config_from_pem(
        &generated.cert_pem,
        &generated.key_pem,
    )?)
}

fn print_demo_hint(dir: &Path, addr: SocketAddr) {
    let port = addr.port();
    println!("self-signed certificate written to {}", dir.display());
    println!("try:");
    println!(
        "  curl -s --cacert {}/ca.crt -H 'Content-Type: application/json' \\\n    --data @manifest/examples/admission-review.json https://localhost:{port}/mutate",
        dir.display()
    );
    println!("  (the patch is base64: append | jq -r .response.patch | base64 -d to read it)");
}
