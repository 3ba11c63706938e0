//! `kube-vip-webhook serve`: flags and wiring of the webhook, the admin port and (in cluster
//! mode) the caches and the reconciler.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::cli::AllocationArgs;
use crate::config::Config;
use crate::files;
use crate::ipam::Family;
use crate::metrics::Metrics;
use crate::state::{Allocator, Confirm};
use crate::webhook::{self, WebhookState};

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address of the webhook.
    #[arg(long, env = "KUBEVIP_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (/livez, /readyz, /metrics).
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM); new connections pick up a replaced file without a restart.
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Run without a cluster: pools from --configmap, used addresses from --services plus what
    /// this process hands out. Without TLS files a self-signed certificate is generated.
    #[arg(long)]
    pub standalone: bool,
    /// With --standalone: the kubevip ConfigMap file (YAML or JSON).
    #[arg(long, requires = "standalone")]
    pub configmap: Option<PathBuf>,
    /// With --standalone: existing Services (their addresses count as used). Repeatable.
    #[arg(long, requires = "standalone")]
    pub services: Vec<PathBuf>,
    /// With --standalone and no TLS files: where the generated certificate goes (created 0700
    /// if missing; refused if a symlink or writable by others). Default: a new private
    /// directory under the system temp dir.
    #[arg(long, requires = "standalone")]
    pub cert_dir: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM) on the webhook port: only the
    /// apiserver, given a client certificate through its AdmissionConfiguration, can call it.
    /// Reloaded when the file changes.
    #[arg(long, env = "KUBEVIP_WEBHOOK_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// With --client-ca-file: the client certificate's Common Name (or a DNS SAN) must be one
    /// of these (comma-separated). Default: any certificate from the CA.
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_CLIENT_ALLOWED_NAMES",
        requires = "client_ca_file",
        value_delimiter = ','
    )]
    pub client_allowed_names: Vec<String>,
    /// Most addresses held at once for admissions whose Service has not shown up yet, over all
    /// namespaces (standalone: Services admitted). At the limit, new Services are admitted
    /// without an address (the reconciler assigns one) and new requested addresses are denied.
    #[arg(long, env = "KUBEVIP_WEBHOOK_MAX_RESERVATIONS",
          default_value_t = crate::state::DEFAULT_MAX_RESERVATIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_reservations: u32,
    /// The same per namespace, so that one namespace cannot take them all.
    #[arg(long, env = "KUBEVIP_WEBHOOK_MAX_RESERVATIONS_PER_NAMESPACE",
          default_value_t = crate::state::DEFAULT_MAX_RESERVATIONS_PER_NAMESPACE as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_reservations_per_namespace: u32,
    #[command(flatten)]
    pub allocation: AllocationArgs,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

impl ServeArgs {
    /// The allocator's quotas on reviews, from the flags.
    pub fn quotas(&self) -> crate::state::Quotas {
        crate::state::Quotas {
            reservations: self.max_reservations as usize,
            per_namespace: self.max_reservations_per_namespace as usize,
            ..crate::state::Quotas::default()
        }
    }

    /// Client certificate requirement, from the flags.
    pub fn client_auth(&self) -> Option<crate::tls::ClientAuth> {
        self.client_ca_file
            .as_ref()
            .map(|ca_file| crate::tls::ClientAuth {
                ca_file: ca_file.clone(),
                allowed_names: self.client_allowed_names.clone(),
            })
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
    pub shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Wait until every task ends (after `shutdown` is cancelled, or on the first failure).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %format!("{e:#}"), "task failed; shutting down");
                self.shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let shutdown = CancellationToken::new();
    crate::server::cancel_on_signal(shutdown.clone());
    let running = if args.standalone {
        start_standalone(&args, shutdown).await?
    } else {
        crate::cluster::start(&args, shutdown).await?
    };
    tracing::info!(webhook = %running.webhook_addr, admin = %running.admin_addr, "serving");
    running.wait().await
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; `RUST_LOG=kube_vip_webhook=debug`
/// shows one line per admission decision). A subscriber installed earlier is kept.
fn init_logging() {
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
    args: &ServeArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let configmap = args.configmap.as_deref().context(
        "--standalone needs --configmap FILE (try manifest/examples/kubevip-configmap.yaml)",
    )?;
    let config = Config::from_data(&files::load_configmap_data(configmap)?);
    for e in config.errors() {
        tracing::warn!(configmap = %configmap.display(), "config error: {e}");
    }
    let options = args.allocation.options(Family::V4);
    let allocator = Arc::new(
        Allocator::new(options, Confirm::OnAdmit, configmap.display().to_string())
            .with_quotas(args.quotas()),
    );
    allocator.set_config(Some(config));
    allocator.reset_services(&files::load_svc_infos(&args.services)?);

    let (tls, cert_dir) = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => (crate::tls::reloading_server_config(cert, key)?, None),
        _ => {
            // The key goes into a directory only we can use, never through a planted link.
            let dir = match &args.cert_dir {
                Some(dir) => crate::private_files::private_dir(dir)?,
                None => crate::private_files::fresh_dir(&std::env::temp_dir(), "kube-vip-webhook")?,
            };
            let tls = self_signed_into(&dir)?;
            (tls, Some(dir))
        }
    };
    let readiness = Readiness::default();
    let metrics = Arc::new(Metrics::new(allocator.clone()));
    let running = start_servers(
        args,
        allocator,
        metrics,
        None,
        tls,
        readiness.clone(),
        cert_dir,
        shutdown,
    )?;
    readiness.set_ready(true);
    if let Some(dir) = &running.cert_dir {
        print_demo_hint(dir, running.webhook_addr);
    }
    Ok(running)
}

/// Bind both ports and spawn the HTTPS webhook and the admin server. Shared by both modes.
#[allow(clippy::too_many_arguments)]
pub fn start_servers(
    args: &ServeArgs,
    allocator: Arc<Allocator>,
    metrics: Arc<Metrics>,
    forward: Option<Arc<crate::cluster::forward::Forwarder>>,
    tls: Arc<rustls::ServerConfig>,
    readiness: Readiness,
    cert_dir: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    // Read the client CA before binding: a bad file fails the start, not the first handshake.
    let tls = match args.client_auth() {
        Some(auth) => crate::tls::require_client_certs(&tls, &auth)?,
        None => tls,
    };
    let webhook_listener = bind(args.listen)?;
    let admin_listener = bind(args.admin_listen)?;
    let webhook_addr = webhook_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut tasks = JoinSet::new();
    let app = webhook::router(WebhookState {
        allocator: allocator.clone(),
        metrics: metrics.clone(),
        forward,
    });
    // The admin port outlives the webhook drain, so probes see `/readyz` 503 (not a refused
    // connection) and `/livez` 200 while in-flight admissions finish.
    let admin_stop = CancellationToken::new();
    let (token, stop) = (shutdown.clone(), admin_stop.clone());
    tasks.spawn(async move {
        // Stops the admin port however this task ends (drained, failed, or panicked).
        let _admin_stop = stop.drop_guard();
        crate::server::serve_https(webhook_listener, tls, app, token, DRAIN)
            .await
            .context("webhook server")
    });
    let admin = crate::admin::router(readiness.clone(), metrics);
    let token = admin_stop;
    tasks.spawn(async move {
        crate::server::serve_http(admin_listener, admin, token, DRAIN)
            .await
            .context("admin server")
    });
    // Readiness goes false the moment shutdown starts, before the drain.
    let (r, token) = (readiness.clone(), shutdown.clone());
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
        shutdown,
        tasks,
    })
}

impl Running {
    /// Run another task under the same shutdown (cluster mode: watches, reconciler).
    pub fn spawn(
        &mut self,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(task);
    }
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
