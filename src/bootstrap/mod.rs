//! Self-signed certificate route: a CA and a serving certificate kept in a Secret (shared by all
//! replicas, reused across restarts, renewed before expiry) and the CA published as the
//! `caBundle` of our MutatingWebhookConfiguration.
//!
//! [`ensure_with`] converges the Secret and publishes the bundle before anything is served, then
//! leaves a task that re-checks both until shutdown: hourly, or sooner when a renewal is due, and
//! every `retry_interval` while something failed or the configuration does not exist yet. A
//! renewal by any replica reaches the others at their next check; they swap the served
//! certificate in place ([`SwappableCert`]), without a restart.
//!
//! API calls (for RBAC): Secret `get`, `create`, `update`; MutatingWebhookConfiguration `get`,
//! `patch` (by name).

mod ca_bundle;
mod material;
mod secret;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::{SwappableCert, TlsError, error_chain};
use ca_bundle::Outcome;
use material::Material;

pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait for one API call: kube's client has no read timeout, so an apiserver that takes
/// the connection and never answers would hold startup (or the renewal task) forever. Far above
/// a healthy answer, and below the default retry interval.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Never re-check sooner than this because of the certificates' dates (clock trouble).
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Where the material lives, what it is for, and how often it is looked at.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    pub namespace: String,
    pub secret_name: String,
    pub webhook_configuration: String,
    /// Names the serving certificate must be valid for.
    pub dns_names: Vec<String>,
    /// Serving certificate validity (the CA gets `tls::CA_VALIDITY_FACTOR` times this).
    pub validity: Duration,
    /// Re-check the Secret and the configuration at least this often.
    pub check_interval: Duration,
    /// Re-check this soon after a failure or while the configuration is missing.
    pub retry_interval: Duration,
    /// Give up on one API call after this long (it counts as a failed call).
    pub call_timeout: Duration,
}

impl BootstrapConfig {
    /// Default validity and intervals.
    pub fn new(
        namespace: String,
        secret_name: String,
        webhook_configuration: String,
        dns_names: Vec<String>,
    ) -> Self {
        Self {
            namespace,
            secret_name,
            webhook_configuration,
            dns_names,
            validity: DEFAULT_VALIDITY,
            check_interval: DEFAULT_CHECK_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    fn secret_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.secret_name)
    }

    fn tls_error(&self, source: TlsError) -> BootstrapError {
        BootstrapError::Generate {
            secret: self.secret_ref(),
            source,
        }
    }
}

/// The names a Service is reached by from inside the cluster, most specific first (the
/// apiserver calls `<service>.<namespace>.svc`).
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "{action} Secret {namespace}/{name} failed{}",
        hint(source, "get, create and update on secrets")
    )]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "{action} MutatingWebhookConfiguration {name} failed{}",
        hint(source, "get and patch on mutatingwebhookconfigurations")
    )]
    WebhookConfiguration {
        action: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("generating the self-signed certificate for Secret {secret}")]
    Generate {
        secret: String,
        #[source]
        source: TlsError,
    },
    #[error("Secret {secret} kept changing while we tried to update it ({attempts} attempts)")]
    Contended { secret: String, attempts: usize },
    #[error(
        "MutatingWebhookConfiguration {name} kept changing while we tried to patch it ({attempts} attempts)"
    )]
    WebhookContended { name: String, attempts: usize },
    #[error("building the caBundle patch")]
    Internal(#[source] serde_json::Error),
}

fn hint(source: &kube::Error, needed: &str) -> String {
    match api_code(source) {
        Some(401 | 403) => format!(" (the ServiceAccount needs {needed}; check the RBAC rules)"),
        _ => String::new(),
    }
}

/// `call`, or an error saying it had no answer within `limit`.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(kube::Error::Service(
            format!("no answer within {limit:?}").into(),
        ))
    })
}

pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// What the background task has done so far (for tests and diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// PEM of the certificate being served.
    pub cert_pem: String,
    /// The `caBundle` that the configuration should carry.
    pub ca_bundle: Vec<u8>,
    /// Whether every webhook of the configuration carried `ca_bundle` at the last attempt.
    pub ca_bundle_published: bool,
    /// Background checks completed.
    pub checks: u64,
    /// The last background failure, cleared by a fully successful check.
    pub last_error: Option<String>,
}

/// The result of [`ensure_with`].
#[derive(Debug)]
pub struct Bootstrapped {
    /// Serve with this; it follows renewals.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificate served right now, presented to the leader when forwarding.
    pub current_cert: Arc<dyn crate::tls::CurrentCert>,
    pub status: watch::Receiver<Status>,
    /// The background task; it ends when `shutdown` is cancelled.
    pub task: JoinHandle<()>,
}

/// Converge the Secret (fatal on failure), publish the `caBundle` (fatal on failure, except that a
/// configuration not created yet is left to the background task), and start the background task.
pub async fn ensure_with(
    client: &kube::Client,
    cfg: BootstrapConfig,
    shutdown: CancellationToken,
) -> Result<Bootstrapped, BootstrapError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = secret::converge(&secrets, &cfg).await?;
    let cert =
        SwappableCert::new(&current.cert_pem, &current.key_pem).map_err(|e| cfg.tls_error(e))?;
    let (tx, status) = watch::channel(Status {
        cert_pem: current.cert_pem.clone(),
        ..Status::default()
    });
    let mut keeper = Keeper {
        secrets,
        configs,
        cfg,
        cert: cert.clone(),
        current,
        status: tx,
    };
    let outcome = keeper.publish().await?;
    if outcome == Outcome::Missing {
        tracing::warn!(configuration = %keeper.cfg.webhook_configuration, "MutatingWebhookConfiguration not found; its caBundle will be set once it is created");
    }
    let healthy = outcome != Outcome::Missing;
    let task = tokio::spawn(keeper.run(healthy, shutdown));
    Ok(Bootstrapped {
        server_config: cert.server_config(),
        current_cert: cert.current_cert(),
        status,
        task,
    })
}

/// Owner of the served certificate after start.
struct Keeper {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    cfg: BootstrapConfig,
    cert: SwappableCert,
    current: Material,
    status: watch::Sender<Status>,
}

impl Keeper {
    async fn run(mut self, mut healthy: bool, shutdown: CancellationToken) {
        loop {
            let wait = self.next_wait(healthy);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            healthy = self.check().await;
        }
    }

    /// One background round; returns whether everything is in order.
    async fn check(&mut self) -> bool {
        let result = async {
            let material = secret::converge(&self.secrets, &self.cfg).await?;
            let changed = material != self.current;
            self.current = material;
            // Publish a new CA before serving a certificate signed by it; a failure here must
            // not keep us on the old certificate, which the other replicas are leaving.
            let published = self.publish().await;
            if changed {
                match self.cert.swap(&self.current.cert_pem, &self.current.key_pem) {
                    Ok(()) => tracing::info!(secret = %self.cfg.secret_ref(), "serving the renewed certificate"),
                    Err(e) => return Err(self.cfg.tls_error(e)),
                }
                let pem = self.current.cert_pem.clone();
                self.status.send_modify(|s| s.cert_pem = pem);
            }
            published
        }
        .await;
        let (healthy, error) = match result {
            Ok(outcome) => (outcome != Outcome::Missing, None),
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(error = %message, "self-signed certificate check failed; retrying");
                (false, Some(message))
            }
        };
        self.status.send_modify(|s| {
            s.checks += 1;
            s.last_error = error;
        });
        healthy
    }

    async fn publish(&mut self) -> Result<Outcome, BootstrapError> {
        let bundle = self.current.ca_bundle(SystemTime::now());
        let name = &self.cfg.webhook_configuration;
        let outcome = ca_bundle::ensure(&self.configs, name, &bundle, self.cfg.call_timeout).await;
        if let Ok(Outcome::Patched(webhooks)) = outcome {
            tracing::info!(configuration = %name, webhooks, "caBundle updated");
        }
        let published = matches!(outcome, Ok(Outcome::Unchanged | Outcome::Patched(_)));
        self.status.send_modify(|s| {
            s.ca_bundle = bundle;
            s.ca_bundle_published = published;
        });
        outcome
    }

    /// Until the next check: the regular interval, or the next renewal if sooner.
    fn next_wait(&self, healthy: bool) -> Duration {
        if !healthy {
            return self.cfg.retry_interval;
        }
        let until_renewal = self
            .current
            .renew_at()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or_default();
        self.cfg.check_interval.min(until_renewal.max(MIN_WAIT))
    }
}
