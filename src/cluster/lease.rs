//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 ships no elector), fenced in time
//! the way client-go's is, and feeding [`Leadership`].
//!
//! * Expiry is judged on this process's monotonic clock from the moment a change of the Lease
//!   was *observed* (never from the wall-clock `renewTime` written by another machine).
//! * The leader's term ends at the start of its last successful write plus the renew deadline,
//!   which is shorter than the lease duration every other candidate waits: the old leader has
//!   stopped before anyone else may start (docs/design.md has the argument).
//! * Every API call has a timeout, so a hanging apiserver cannot keep a stale term alive (the
//!   term ends by itself at the fence anyway; the timeout keeps the loop moving).
//! * A released Lease (graceful stop) is taken at once; a watch on it wakes the candidates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::leadership::{ADDRESS_ANNOTATION, Leadership};

/// Timing of the election (validated by the CLI: retry < renew deadline < lease duration).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per process (pod name plus a nonce): a restarted pod is a new candidate.
    pub identity: String,
    /// How long others wait, from observing our last write, before taking over.
    pub lease_duration: Duration,
    /// How long after the start of our last successful write we may still allocate.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates look.
    pub retry_period: Duration,
    /// Extra wait, after the previous leader's last possible allocation, for its answers to
    /// reach etcd and our cache (the admission pipeline after our answer, plus watch lag).
    pub takeover_grace: Duration,
    /// Our webhook address for followers (`podIP:port`); none: followers cannot forward to us.
    pub advertise: Option<String>,
}

impl LeaseSettings {
    /// Bound on each API call; the renew deadline must leave room for a few attempts.
    fn call_timeout(&self) -> Duration {
        self.retry_period.max(Duration::from_secs(1))
    }
}

/// The last change of the Lease this process saw, and when (monotonic).
#[derive(Debug)]
struct Observed {
    resource_version: String,
    at: Instant,
}

#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer from the apiserver within {0:?}")]
    Timeout(Duration),
}

async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(LeaseError::Api),
        Err(_) => Err(LeaseError::Timeout(limit)),
    }
}

/// Run the election until `shutdown`. From `stopping` on, this replica stops allocating,
/// releases the Lease if it holds it, and only follows (so it can still forward admissions while
/// it drains).
pub async fn run(
    client: kube::Client,
    settings: LeaseSettings,
    leadership: Leadership,
    stopping: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let changed = std::sync::Arc::new(Notify::new());
    let watch_task = tokio::spawn(wake_on_change(
        api.clone(),
        settings.name.clone(),
        settings.identity.clone(),
        changed.clone(),
    ));
    let mut elector = Elector {
        api,
        s: settings,
        leadership,
        observed: None,
    };
    let mut released = false;
    loop {
        if stopping.is_cancelled() && !released {
            released = true;
            elector.step_down().await;
        }
        let candidate = !stopping.is_cancelled();
        let next = elector.step(candidate).await;
        let wait = next.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = stopping.cancelled(), if !released => {}
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if !released {
        elector.step_down().await;
    }
    watch_task.abort();
    Ok(())
}

/// A change of the Lease by someone else wakes the loop (a release is taken at once, not at the
/// next poll). Our own writes do not: a leader woken by its own renewal would renew again at
/// once, writing the Lease as fast as the apiserver answers instead of once per retry period.
async fn wake_on_change(
    api: Api<Lease>,
    name: String,
    identity: String,
    changed: std::sync::Arc<Notify>,
) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, cfg));
    let ours = |lease: &Lease| {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(identity.as_str())
    };
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(lease)) if ours(&lease) => {}
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
            Ok(_) => {}
            // The watcher retries by itself; the poll covers the gap.
            Err(e) => {
                tracing::debug!(error = %e, "Lease watch error");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
    leadership: Leadership,
    observed: Option<Observed>,
}

impl Elector {
    /// One round: renew, take over, or follow. Returns when to look again.
    async fn step(&mut self, candidate: bool) -> Instant {
        let poll = Instant::now() + self.s.retry_period;
        let lease = match timed(self.s.call_timeout(), self.api.get_opt(&self.s.name)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.s.name, "cannot read the Lease");
                return poll;
            }
        };
        let Some(lease) = lease else {
            if candidate {
                self.create().await;
            }
            return poll;
        };
        let seen_at = Instant::now();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let fresh = self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != rv);
        if fresh {
            self.observed = Some(Observed {
                resource_version: rv,
                at: seen_at,
            });
        }
        let observed_at = self.observed.as_ref().map_or(seen_at, |o| o.at);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder == self.s.identity {
            if candidate {
                self.renew(lease).await;
            }
            return poll;
        }
        // Another holder: ours no more, whatever we thought.
        let address = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADDRESS_ANNOTATION))
            .cloned();
        // The longer of ours and the holder's own setting (replicas of different versions).
        let written = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let expires = observed_at.checked_add(self.s.lease_duration.max(written));
        let released = holder.is_empty();
        let expired = expires.is_none_or(|at| Instant::now() >= at);
        if !(released || expired) {
            self.leadership.follow(address);
            return expires.map_or(poll, |at| poll.min(at));
        }
        self.leadership.follow(None);
        if !candidate {
            return poll;
        }
        // The previous holder allocated at most until its fence: before it wrote the release,
        // or before its last write (which we observed at `observed_at`) plus the renew deadline.
        let last_old_allocation = if released {
            Some(observed_at)
        } else {
            observed_at.checked_add(self.s.renew_deadline)
        };
        self.take_over(lease, spec, last_old_allocation).await;
        poll
    }

    async fn create(&mut self) {
        let now = Timestamp::now();
        let lease = Lease {
            metadata: self.metadata(ObjectMeta {
                name: Some(self.s.name.clone()),
                namespace: Some(self.s.namespace.clone()),
                ..ObjectMeta::default()
            }),
            spec: Some(self.spec(now, None, 0)),
        };
        let started = Instant::now();
        match timed(
            self.s.call_timeout(),
            self.api.create(&PostParams::default(), &lease),
        )
        .await
        {
            // Nobody held it that we know of, but a leader whose Lease was deleted may still be
            // inside its term: wait as if it had renewed just now.
            Ok(_) => self.begin(started, started.checked_add(self.s.renew_deadline)),
            Err(LeaseError::Api(kube::Error::Api(s))) if s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, lease = %self.s.name, "cannot create the Lease"),
        }
    }

    async fn renew(&mut self, current: Lease) {
        let spec = current.spec.clone().unwrap_or_default();
        let mut next = current;
        next.metadata = self.metadata(next.metadata);
        next.spec = Some(self.spec(
            Timestamp::now(),
            spec.acquire_time.clone(),
            spec.lease_transitions.unwrap_or(0),
        ));
        let started = Instant::now();
        match self.replace(&next).await {
            Ok(()) => match started.checked_add(self.s.renew_deadline) {
                Some(fence) if self.leadership.term().is_some() => self.leadership.renewed(fence),
                // Our identity holds it but this process had no term (cannot happen with a
                // per-process nonce unless the Lease was edited): start one conservatively.
                _ => self.begin(started, started.checked_add(self.s.renew_deadline)),
            },
            Err(e) => tracing::warn!(error = %e, lease = %self.s.name, "renewing the Lease failed"),
        }
    }

    async fn take_over(
        &mut self,
        current: Lease,
        spec: LeaseSpec,
        last_old_allocation: Option<Instant>,
    ) {
        let mut next = current;
        next.metadata = self.metadata(next.metadata);
        next.spec = Some(self.spec(
            Timestamp::now(),
            None,
            spec.lease_transitions.unwrap_or(0).saturating_add(1),
        ));
        let started = Instant::now();
        match self.replace(&next).await {
            Ok(()) => self.begin(started, last_old_allocation),
            // Another candidate won; the next round follows it.
            Err(LeaseError::Api(kube::Error::Api(s))) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.s.name, "taking over the Lease failed")
            }
        }
    }

    /// A term starting with a write that began at `started`. Allocation waits for the previous
    /// leader's last possible allocation plus the takeover grace (`None`: unknowable, so the
    /// term never allocates; only an overflow of the clock could get here).
    fn begin(&mut self, started: Instant, last_old_allocation: Option<Instant>) {
        let from = last_old_allocation.and_then(|t| t.checked_add(self.s.takeover_grace));
        let fence = started.checked_add(self.s.renew_deadline);
        match (from, fence) {
            (Some(from), Some(fence)) => self.leadership.begin(from.max(started), fence),
            _ => tracing::error!("lease timing overflows the clock; not allocating"),
        }
        // Our own write changed the Lease: expiry (if we lose it) counts from now.
        self.observed = None;
    }

    /// Stop allocating first, then release so a standby takes over at once.
    async fn step_down(&mut self) {
        let was_leading = self.leadership.term().is_some();
        self.leadership.follow(None);
        if !was_leading {
            return;
        }
        match self.release().await {
            Ok(()) => tracing::info!(lease = %self.s.name, "released the Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the Lease; a standby takes over when it expires")
            }
        }
    }

    async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = timed(self.s.call_timeout(), self.api.get_opt(&self.s.name)).await?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Some(a) = lease.metadata.annotations.as_mut() {
            a.remove(ADDRESS_ANNOTATION);
        }
        self.replace(&lease).await
    }

    /// `replace` carries metadata.resourceVersion: a concurrent writer makes this a 409.
    async fn replace(&self, lease: &Lease) -> Result<(), LeaseError> {
        timed(
            self.s.call_timeout(),
            self.api
                .replace(&self.s.name, &PostParams::default(), lease),
        )
        .await
        .map(|_| ())
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.s.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn metadata(&self, mut meta: ObjectMeta) -> ObjectMeta {
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        match &self.s.advertise {
            Some(a) => {
                annotations.insert(ADDRESS_ANNOTATION.to_string(), a.clone());
            }
            None => {
                annotations.remove(ADDRESS_ANNOTATION);
            }
        }
        meta
    }
}

/// Read the Lease now: the leader's advertised address (for a forwarder whose leader did not
/// answer), unless the holder is `identity` (us) or nobody.
pub async fn read_leader(
    api: Api<Lease>,
    name: String,
    identity: String,
    timeout: Duration,
) -> Option<String> {
    let lease = timed(timeout, api.get_opt(&name)).await.ok()??;
    let holder = lease.spec.as_ref()?.holder_identity.clone()?;
    if holder.is_empty() || holder == identity {
        return None;
    }
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(ADDRESS_ANNOTATION)
        .cloned()
}
