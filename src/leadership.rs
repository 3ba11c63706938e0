//! Who may allocate, right now: the one answer every allocation asks first.
//!
//! A replica allocates only while all of these hold (docs/design.md, "High availability"):
//! * its caches have synced (it knows every used address);
//! * it holds a leadership term it can prove: `now < fence`, where the fence is the start of its
//!   last successful Lease write plus the renew deadline, on this process's monotonic clock.
//!   Every other candidate waits a full lease duration, on its own monotonic clock, from the moment
//!   it *observed* that write, before it takes over; renew deadline < lease duration, so this
//!   replica has stopped before another can start;
//! * `now >= from`: the term's start has waited out the previous leader's last possible
//!   allocation plus the takeover grace, so whatever it answered has reached our cache.
//!
//! Without leader election (one replica) only the first condition applies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// Lease annotation carrying the leader's webhook address, so followers can forward to it.
pub const ADDRESS_ANNOTATION: &str = "kube-vip-webhook.kube-vip.io/leader-address";

/// Shared by the webhook, the reconciler and the election loop; clones share the state.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    elected: bool,
    /// Where the role is reported (`leader`, `leader_transitions_total`).
    metrics: Option<Arc<Metrics>>,
    synced: AtomicBool,
    lease: Mutex<LeaseView>,
    /// Bumped each time this replica starts allocating (a term's `from` passed with synced
    /// caches): everything waiting is reconciled once.
    started: watch::Sender<u64>,
    /// Bumped each time a term begins, so whoever announces starts can wait for its `from`.
    terms: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct LeaseView {
    term: Option<Term>,
    /// The current leader's webhook address (`host:port`), when another replica leads.
    leader_address: Option<String>,
}

/// One period of leadership of this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Allocation may begin at this instant.
    pub from: Instant,
    /// Allocation must have stopped by this instant unless a renewal moves it.
    pub fence: Instant,
    announced: bool,
}

impl Leadership {
    /// No election: this is the only replica; it allocates once synced.
    pub fn single(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.set_leader(true);
        }
        Self::new(false, metrics)
    }

    /// Leader-elected: allocates only within a term granted by the election loop.
    pub fn elected(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.set_leader(false);
        }
        Self::new(true, metrics)
    }

    fn new(elected: bool, metrics: Option<Arc<Metrics>>) -> Self {
        Leadership {
            inner: Arc::new(Inner {
                elected,
                metrics,
                synced: AtomicBool::new(false),
                lease: Mutex::new(LeaseView::default()),
                started: watch::Sender::new(0),
                terms: watch::Sender::new(0),
            }),
        }
    }

    fn lease(&self) -> MutexGuard<'_, LeaseView> {
        // The view is replaced whole under the lock; a panic elsewhere cannot leave it torn.
        self.inner.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May this replica hand out addresses at `now`?
    pub fn may_allocate(&self, now: Instant) -> bool {
        if !self.inner.synced.load(Ordering::SeqCst) {
            return false;
        }
        if !self.inner.elected {
            return true;
        }
        self.lease()
            .term
            .is_some_and(|t| now >= t.from && now < t.fence)
    }

    /// Holds an unexpired term (it may still be waiting for `from`): speaks for the cluster
    /// (Events), even before it may allocate.
    pub fn is_leader(&self, now: Instant) -> bool {
        !self.inner.elected || self.lease().term.is_some_and(|t| now < t.fence)
    }

    pub fn is_elected(&self) -> bool {
        self.inner.elected
    }

    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::SeqCst)
    }

    /// The caches have synced (the Service list and the ConfigMap).
    pub fn set_synced(&self) {
        self.inner.synced.store(true, Ordering::SeqCst);
        self.announce_if_started(Instant::now());
    }

    /// Where to forward admissions: the leader's address, when another replica leads.
    pub fn leader_address(&self) -> Option<String> {
        self.lease().leader_address.clone()
    }

    /// The current term, if this replica leads.
    pub fn term(&self) -> Option<Term> {
        self.lease().term
    }

    /// Election loop: this replica just took the Lease. Its term allows allocation from `from`
    /// until `fence` (both on this process's monotonic clock).
    pub fn begin(&self, from: Instant, fence: Instant) {
        let mut view = self.lease();
        view.leader_address = None;
        view.term = Some(Term {
            from,
            fence,
            announced: false,
        });
        drop(view);
        self.report(true);
        tracing::info!(
            allocating_in = ?from.saturating_duration_since(Instant::now()),
            "acquired the lease"
        );
        self.inner.terms.send_modify(|n| *n += 1);
    }

    /// Changes each time a term begins.
    pub fn term_changes(&self) -> watch::Receiver<u64> {
        self.inner.terms.subscribe()
    }

    /// Election loop: a renewal of our own Lease succeeded; the term may run until `fence`.
    pub fn renewed(&self, fence: Instant) {
        if let Some(t) = &mut self.lease().term {
            t.fence = t.fence.max(fence);
        }
    }

    /// Election loop: another replica leads (or nobody does); stop at once.
    pub fn follow(&self, leader_address: Option<String>) {
        let mut view = self.lease();
        let was_leading = view.term.take().is_some();
        view.leader_address = leader_address;
        drop(view);
        if was_leading {
            tracing::warn!("no longer the leader; not allocating");
            self.report(false);
        }
    }

    fn report(&self, leading: bool) {
        if let Some(m) = &self.inner.metrics {
            m.set_leader(leading);
        }
    }

    /// Announce the start of allocation once per term, when `from` has passed and the caches
    /// have synced. Returns when the term will start, if it has not yet.
    pub fn announce_if_started(&self, now: Instant) -> Option<Instant> {
        let synced = self.synced();
        let mut view = self.lease();
        if !self.inner.elected {
            drop(view);
            if synced {
                self.inner.started.send_modify(|n| *n += 1);
            }
            return None;
        }
        let term = view.term.as_mut()?;
        if term.announced {
            return None;
        }
        if now < term.from {
            return Some(term.from);
        }
        if synced && now < term.fence {
            term.announced = true;
            drop(view);
            tracing::info!("allocating");
            self.inner.started.send_modify(|n| *n += 1);
        }
        None
    }

    /// One item each time this replica starts allocating (reconcile everything once).
    pub fn started_stream(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let rx = self.inner.started.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_single_replica_allocates_once_synced() {
        let l = Leadership::single(None);
        let now = Instant::now();
        assert!(!l.may_allocate(now));
        l.set_synced();
        assert!(l.may_allocate(now));
        assert!(l.is_leader(now));
    }

    #[test]
    fn an_elected_replica_allocates_only_inside_its_term_after_sync() {
        let l = Leadership::elected(None);
        let t0 = Instant::now();
        l.begin(t0 + 5 * S, t0 + 10 * S);
        assert!(!l.may_allocate(t0 + 6 * S), "caches not synced");
        l.set_synced();
        assert!(
            !l.may_allocate(t0 + 4 * S),
            "before the takeover grace ends"
        );
        assert!(
            l.is_leader(t0 + 4 * S),
            "leads (speaks) before it allocates"
        );
        assert!(l.may_allocate(t0 + 5 * S));
        assert!(l.may_allocate(t0 + 10 * S - Duration::from_nanos(1)));
        assert!(!l.may_allocate(t0 + 10 * S), "fenced: no renewal in time");
        // A renewal moves the fence, keeps the start.
        l.renewed(t0 + 12 * S);
        assert!(l.may_allocate(t0 + 11 * S));
        assert_eq!(l.term().map(|t| t.from), Some(t0 + 5 * S));
        l.follow(Some("10.0.0.2:8443".into()));
        assert!(!l.may_allocate(t0 + 6 * S));
        assert_eq!(l.leader_address().as_deref(), Some("10.0.0.2:8443"));
    }

    #[test]
    fn the_start_is_announced_once_per_term() {
        let l = Leadership::elected(None);
        let mut rx = l.inner.started.subscribe();
        let t0 = Instant::now();
        l.begin(t0 + 2 * S, t0 + 10 * S);
        assert_eq!(l.announce_if_started(t0), Some(t0 + 2 * S));
        assert_eq!(l.announce_if_started(t0 + 3 * S), None);
        assert!(!rx.has_changed().unwrap_or(false), "not synced yet");
        l.set_synced(); // the real clock is before `from`: nothing yet
        assert!(!rx.has_changed().unwrap_or(false));
        l.announce_if_started(t0 + 3 * S);
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        l.announce_if_started(t0 + 4 * S);
        assert!(!rx.has_changed().unwrap_or(false), "announced once");
        l.follow(None);
        l.begin(t0 + 20 * S, t0 + 30 * S);
        l.announce_if_started(t0 + 21 * S);
        assert!(
            rx.has_changed().unwrap_or(false),
            "a new term is announced again"
        );
    }
}
