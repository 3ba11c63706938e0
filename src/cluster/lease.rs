//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 ships no elector).
//!
//! Acquire when the Lease is absent or expired, renew while held, release on shutdown so a
//! standby takes over at once. All writes are guarded by resourceVersion: two candidates can
//! never both believe they won.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Lease annotation carrying the leader's webhook address, so followers can forward to it.
pub const ADDRESS_ANNOTATION: &str = "kube-vip-webhook.kube-vip.io/leader-address";

/// Whether this replica leads, with a signal for every acquisition, and where the leader is.
#[derive(Clone)]
pub struct LeaderState {
    leading: Arc<AtomicBool>,
    acquired: watch::Sender<u64>,
    leader_address: Arc<std::sync::RwLock<Option<String>>>,
    metrics: Arc<Metrics>,
}

impl LeaderState {
    /// `always`: no election (single replica or `--leader-elect=false`).
    pub fn new(always: bool, metrics: Arc<Metrics>) -> Self {
        metrics.set_leader(always);
        LeaderState {
            leading: Arc::new(AtomicBool::new(always)),
            acquired: watch::Sender::new(0),
            leader_address: Arc::default(),
            metrics,
        }
    }

    /// The current leader's advertised webhook address (`host:port`), when another replica leads.
    pub fn leader_address(&self) -> Option<String> {
        self.leader_address
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_leader_address(&self, addr: Option<String>) {
        *self
            .leader_address
            .write()
            .unwrap_or_else(|e| e.into_inner()) = addr;
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn set(&self, leading: bool) {
        let was = self.leading.swap(leading, Ordering::SeqCst);
        self.metrics.set_leader(leading);
        if leading && !was {
            tracing::info!("acquired the lease; reconciler active");
            self.acquired.send_modify(|n| *n += 1);
        } else if was && !leading {
            tracing::warn!("lost the lease; reconciler on standby");
        }
    }

    /// One item each time leadership is acquired (to reconcile everything once).
    pub fn acquired_stream(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let rx = self.acquired.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub retry_period: Duration,
    /// Our webhook address for followers (`podIP:port`); none: followers cannot forward to us.
    pub advertise: Option<String>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            namespace: "kube-system".into(),
            name: "kube-vip-webhook".into(),
            identity: String::new(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
            advertise: None,
        }
    }
}

pub async fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    state: LeaderState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renew: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &cfg, &state).await {
            Ok(true) => {
                last_renew = Some(tokio::time::Instant::now());
                state.set(true);
            }
            Ok(false) => state.set(false),
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "lease update failed");
                // Step down once we cannot prove we still hold it.
                if last_renew.is_none_or(|t| t.elapsed() >= cfg.lease_duration) {
                    state.set(false);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if state.is_leader() {
        state.set(false);
        if let Err(e) = release(&api, &cfg).await {
            tracing::warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
        }
    }
    Ok(())
}

fn spec_for(
    cfg: &LeaseConfig,
    now: Timestamp,
    acquire: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn metadata_for(cfg: &LeaseConfig, mut meta: ObjectMeta) -> ObjectMeta {
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    match &cfg.advertise {
        Some(a) => {
            annotations.insert(ADDRESS_ANNOTATION.to_string(), a.clone());
        }
        None => {
            annotations.remove(ADDRESS_ANNOTATION);
        }
    }
    meta
}

/// Ok(true) when we hold the lease after this call.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    state: &LeaderState,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: metadata_for(
                    cfg,
                    ObjectMeta {
                        name: Some(cfg.name.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                ),
                spec: Some(spec_for(cfg, now, None, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == cfg.identity;
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renew), Some(secs)) => renew.0 + SignedDuration::from_secs(i64::from(secs)) < now,
        _ => true,
    };
    if !ours && !holder.is_empty() && !expired {
        let addr = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADDRESS_ANNOTATION))
            .cloned();
        state.set_leader_address(addr);
        return Ok(false);
    }
    state.set_leader_address(None);
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquire = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    let mut next = current.clone();
    next.metadata = metadata_for(cfg, next.metadata);
    next.spec = Some(spec_for(cfg, now, acquire, transitions));
    // replace carries metadata.resourceVersion: a concurrent winner makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    if let Some(a) = lease.metadata.annotations.as_mut() {
        a.remove(ADDRESS_ANNOTATION);
    }
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
