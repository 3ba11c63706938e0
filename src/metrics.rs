//! Prometheus metrics: one `prometheus-client` registry, every name prefixed `kube_vip_webhook_`.
//!
//! Event-driven metrics (admissions, reconciles, events) are counters/histograms updated by the
//! code paths; state metrics (pool usage, reservations, config health) are read from a
//! [`StatsSource`] at scrape time by a collector, so they are never stale.
//!
//! Gauges that only mean something in some modes (leader, waiting Services, the certificate's
//! expiry, when the ConfigMap was loaded) are absent until set: a default 0 would read as "no
//! leader" in standalone mode, or as a certificate that expired in 1970, and fire alerts.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod reserved;
use reserved::reserved_gauges;
pub use reserved::{MAX_NAMED_RESERVED, ReservedStat};

/// Prefix of every metric name.
pub const PREFIX: &str = "kube_vip_webhook";

/// Admission latency buckets in seconds: the allocation itself is sub-millisecond; the upper
/// buckets catch lock contention and slow clients up to the webhook timeout range.
const ADMISSION_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Usage of one pool, as the allocator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStat {
    /// Pool key as configured (e.g. `cidr-default`, `range-team-a`).
    pub pool: String,
    /// `"IPv4"` or `"IPv6"`.
    pub family: &'static str,
    /// Allocatable addresses in the pool.
    pub size: u128,
    /// Addresses in the pool currently held by Services or reservations.
    pub used: u128,
}

/// One pool object (VIPPool), as the metrics report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolObjectStat {
    /// `vippool/<name>`, as the pool gauges label it.
    pub pool: String,
    /// Entries of its spec that are ignored (what its `Invalid` condition lists).
    pub invalid_entries: usize,
}

/// Allocator state read at scrape time. Implemented by the allocator state.
pub trait StatsSource: Send + Sync + 'static {
    /// Every configured pool.
    fn pools(&self) -> Vec<PoolStat>;
    /// Admission reservations not yet confirmed by the Service cache.
    fn reservations(&self) -> usize;
    /// Problems found in the current configuration.
    fn config_errors(&self) -> usize;
    /// Whether the configuration (ConfigMap) exists.
    fn config_present(&self) -> bool;
    /// Every pool object, in the order they are tried.
    fn pool_objects(&self) -> Vec<PoolObjectStat> {
        Vec::new()
    }
    /// Reserved addresses inside pools, sorted by pool and address (never handed out).
    fn reserved_in_pools(&self) -> Vec<ReservedStat> {
        Vec::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Reads the served certificate's expiry at scrape time; `None` when it cannot be read.
pub type CertificateSource = Box<dyn Fn() -> Option<SystemTime> + Send + Sync>;

/// The expiry of the certificate in a PEM file, read at each scrape: the files route re-reads
/// the same file for each new connection, so this is what the next connection is served (an
/// invalid new file is logged by the TLS layer and the previous certificate stays in service).
pub fn certificate_file(path: std::path::PathBuf) -> CertificateSource {
    Box::new(move || {
        let pem = std::fs::read_to_string(&path).ok()?;
        crate::tls::not_after(&pem).ok()
    })
}

/// The expiry of a certificate held in memory (self-signed route: `pem` returns what is served).
pub fn certificate_pem(pem: impl Fn() -> String + Send + Sync + 'static) -> CertificateSource {
    Box::new(move || crate::tls::not_after(&pem()).ok())
}

/// Values exported only once set (see the module comment), read by [`OptionalCollector`].
#[derive(Default)]
struct Optional {
    services_waiting: Mutex<Option<u64>>,
    leader: Mutex<Option<bool>>,
    config_loaded: Mutex<Option<SystemTime>>,
    certificate: Mutex<Option<CertificateSource>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single assignment or read: nothing is left half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process's metrics. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    admission_duration: Family<AdmissionLabels, Histogram, fn() -> Histogram>,
    reconciles: Family<OutcomeLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    leader_transitions: Counter,
    ready: Gauge,
    optional: Arc<Optional>,
}

impl fmt::Debug for Optional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Optional")
    }
}

fn admission_histogram() -> Histogram {
    Histogram::new(ADMISSION_BUCKETS)
}

impl Metrics {
    /// A registry with every metric registered; `stats` is read on each scrape.
    pub fn new(stats: Arc<dyn StatsSource>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by operation (CREATE, UPDATE, OTHER) and outcome",
            admissions.clone(),
        );
        let admission_duration: Family<AdmissionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(admission_histogram);
        registry.register_with_unit(
            "admission_duration",
            "Time to answer an admission request, by operation and outcome",
            Unit::Seconds,
            admission_duration.clone(),
        );
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciler passes over a Service, by outcome",
            reconciles.clone(),
        );
        let events = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "events",
            "Kubernetes Events emitted, by reason",
            events.clone(),
        );
        let leader_transitions = Counter::default();
        registry.register(
            "leader_transitions",
            "Times this replica became or stopped being the Lease holder",
            leader_transitions.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while this replica is ready for admission traffic (caches synced, not shutting down)",
            ready.clone(),
        );
        registry.register_collector(Box::new(StatsCollector(stats)));
        let optional = Arc::new(Optional::default());
        registry.register_collector(Box::new(OptionalCollector(optional.clone())));
        Metrics {
            registry,
            admissions,
            admission_duration,
            reconciles,
            events,
            leader_transitions,
            ready,
            optional,
        }
    }

    /// Handled LoadBalancer Services that have no address yet (cluster mode).
    pub fn set_services_waiting(&self, count: usize) {
        *lock(&self.optional.services_waiting) = Some(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Whether this replica holds the Lease (cluster mode). Only a change counts as a transition.
    pub fn set_leader(&self, leading: bool) {
        let was = lock(&self.optional.leader).replace(leading);
        if was.is_some_and(|was| was != leading) {
            self.leader_transitions.inc();
        }
    }

    /// The pool ConfigMap was read and parsed at `at` (its bad entries count in `config_errors`).
    pub fn set_config_loaded(&self, at: SystemTime) {
        *lock(&self.optional.config_loaded) = Some(at);
    }

    /// Where the served certificate's expiry is read at each scrape (replaces any earlier source).
    pub fn set_certificate_source(&self, source: CertificateSource) {
        *lock(&self.optional.certificate) = Some(source);
    }

    /// Readiness as `/readyz` reports it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Count one admission answer and record how long it took.
    pub fn observe_admission(&self, operation: &str, outcome: &str, elapsed: Duration) {
        let labels = AdmissionLabels {
            operation: operation.to_string(),
            outcome: outcome.to_string(),
        };
        self.admissions.get_or_create(&labels).inc();
        self.admission_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Count one reconcile of a Service.
    pub fn inc_reconcile(&self, outcome: &str) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Count one emitted Kubernetes Event.
    pub fn inc_event(&self, reason: &str) {
        self.events
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// OpenMetrics text exposition of everything (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would only come from a collector,
        // and then the partial output is still the best answer a scrape can get.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Reads the allocator state on every scrape.
struct StatsCollector(Arc<dyn StatsSource>);

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatsCollector")
    }
}

/// Pool sizes can exceed any integer gauge (an IPv6 /64 is 2^64 addresses), so they are exported
/// as f64: the conversion rounds but never overflows (u128::MAX ~ 3.4e38 < f64::MAX).
fn addresses(n: u128) -> f64 {
    n as f64
}

fn pool_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    pools: &[PoolStat],
    value: impl Fn(&PoolStat) -> u128,
) -> fmt::Result {
    if pools.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for p in pools {
        let labels = [("pool", p.pool.as_str()), ("family", p.family)];
        metric
            .encode_family(&labels)?
            .encode_gauge(&addresses(value(p)))?;
    }
    Ok(())
}

fn plain_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let pools = self.0.pools();
        pool_gauge(
            &mut encoder,
            "pool_addresses",
            "Allocatable addresses in the pool.",
            &pools,
            |p| p.size,
        )?;
        pool_gauge(
            &mut encoder,
            "pool_addresses_used",
            "Addresses of the pool in use.",
            &pools,
            |p| p.used,
        )?;
        pool_gauge(
            &mut encoder,
            "pool_addresses_free",
            "Addresses of the pool still free.",
            &pools,
            |p| p.size.saturating_sub(p.used),
        )?;
        reserved_gauges(&mut encoder, &pools, &self.0.reserved_in_pools())?;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        plain_gauge(
            &mut encoder,
            "reservations_pending",
            "Admission reservations not yet confirmed by the Service cache.",
            count(self.0.reservations()),
        )?;
        plain_gauge(
            &mut encoder,
            "config_errors",
            "Problems found in the current pool configuration.",
            count(self.0.config_errors()),
        )?;
        plain_gauge(
            &mut encoder,
            "config_present",
            "1 if the pool ConfigMap exists, 0 otherwise.",
            u64::from(self.0.config_present()),
        )?;
        let objects = self.0.pool_objects();
        // Always exported, 0 included: the ConfigMap-missing alert is silent only while it is
        // above 0, and an absent series would hide a cluster that lost its pools.
        plain_gauge(
            &mut encoder,
            "vippools",
            "VIPPool objects the allocator reads (pools besides the ConfigMap).",
            count(objects.len()),
        )?;
        pool_object_errors(&mut encoder, &objects)
    }
}

/// Per pool object, how many of its entries are ignored; valid pools read 0, so a fixed pool's
/// series drops to 0 instead of disappearing. Kept apart from `config_errors` (the ConfigMap's),
/// so an alert can name the pool object to fix.
fn pool_object_errors(encoder: &mut DescriptorEncoder, objects: &[PoolObjectStat]) -> fmt::Result {
    if objects.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "vippool_invalid_entries",
        "Entries of the VIPPool's spec that are ignored (its Invalid condition lists them).",
        None,
        MetricType::Gauge,
    )?;
    for o in objects {
        let n = u64::try_from(o.invalid_entries).unwrap_or(u64::MAX);
        metric
            .encode_family(&[("pool", o.pool.as_str())])?
            .encode_gauge(&n)?;
    }
    Ok(())
}

/// Emits the [`Optional`] values that are set.
struct OptionalCollector(Arc<Optional>);

impl fmt::Debug for OptionalCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OptionalCollector")
    }
}

/// Seconds since the Unix epoch, negative before it (a certificate's notAfter can be anything).
fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn timestamp_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    at: Option<SystemTime>,
) -> fmt::Result {
    let Some(at) = at else { return Ok(()) };
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?
        .encode_gauge(&unix_seconds(at))
}

impl Collector for OptionalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let o = &self.0;
        if let Some(n) = *lock(&o.services_waiting) {
            plain_gauge(
                &mut encoder,
                "services_waiting",
                "Handled LoadBalancer Services without an address, waiting for one.",
                n,
            )?;
        }
        if let Some(leading) = *lock(&o.leader) {
            plain_gauge(
                &mut encoder,
                "leader",
                "1 if this replica holds the Lease (runs the reconciler), 0 otherwise.",
                u64::from(leading),
            )?;
        }
        timestamp_gauge(
            &mut encoder,
            "config_last_load_timestamp",
            "When the pool ConfigMap was last read and parsed (Unix time).",
            *lock(&o.config_loaded),
        )?;
        // The source reads a file or a PEM: done outside the lock would need a clone of the
        // closure; a scrape is rare and the read is short, so it runs under the lock.
        let not_after = lock(&o.certificate).as_ref().and_then(|source| source());
        timestamp_gauge(
            &mut encoder,
            "serving_certificate_not_after_timestamp",
            "When the serving certificate expires (its notAfter, Unix time).",
            not_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoPools;

    impl StatsSource for NoPools {
        fn pools(&self) -> Vec<PoolStat> {
            Vec::new()
        }
        fn reservations(&self) -> usize {
            2
        }
        fn config_errors(&self) -> usize {
            0
        }
        fn config_present(&self) -> bool {
            true
        }
    }

    /// The value of the one sample of `name` (no labels), if exported.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn mode_specific_gauges_are_absent_until_set() {
        let m = Metrics::new(Arc::new(NoPools));
        let text = m.encode();
        for name in [
            "kube_vip_webhook_services_waiting",
            "kube_vip_webhook_leader",
            "kube_vip_webhook_config_last_load_timestamp_seconds",
            "kube_vip_webhook_serving_certificate_not_after_timestamp_seconds",
        ] {
            assert_eq!(
                sample(&text, name),
                None,
                "{name} exported before being set"
            );
        }
        assert_eq!(
            sample(&text, "kube_vip_webhook_reservations_pending"),
            Some(2.0)
        );

        m.set_services_waiting(3);
        m.set_leader(true);
        m.set_config_loaded(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        m.set_certificate_source(Box::new(|| {
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        }));
        m.set_ready(true);
        let text = m.encode();
        let at = |name| sample(&text, name);
        assert_eq!(at("kube_vip_webhook_services_waiting"), Some(3.0));
        assert_eq!(at("kube_vip_webhook_leader"), Some(1.0));
        assert_eq!(at("kube_vip_webhook_ready"), Some(1.0));
        assert_eq!(
            at("kube_vip_webhook_config_last_load_timestamp_seconds"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            at("kube_vip_webhook_serving_certificate_not_after_timestamp_seconds"),
            Some(1_800_000_000.0)
        );
    }

    /// Two pool objects, one with two ignored entries.
    struct Objects;

    impl StatsSource for Objects {
        fn pools(&self) -> Vec<PoolStat> {
            Vec::new()
        }
        fn reservations(&self) -> usize {
            0
        }
        fn config_errors(&self) -> usize {
            0
        }
        fn config_present(&self) -> bool {
            false
        }
        fn pool_objects(&self) -> Vec<PoolObjectStat> {
            vec![
                PoolObjectStat {
                    pool: "vippool/bad".into(),
                    invalid_entries: 2,
                },
                PoolObjectStat {
                    pool: "vippool/good".into(),
                    invalid_entries: 0,
                },
            ]
        }
    }

    #[test]
    fn pool_objects_are_counted_and_their_invalid_entries_labelled_by_pool() {
        // Without pool objects: 0 (the ConfigMap-missing alert reads it), no per-pool series.
        let text = Metrics::new(Arc::new(NoPools)).encode();
        assert_eq!(sample(&text, "kube_vip_webhook_vippools"), Some(0.0));
        assert!(!text.contains("vippool_invalid_entries{"), "{text}");

        let text = Metrics::new(Arc::new(Objects)).encode();
        assert_eq!(sample(&text, "kube_vip_webhook_vippools"), Some(2.0));
        let at = |pool: &str| {
            sample(
                &text,
                &format!("kube_vip_webhook_vippool_invalid_entries{{pool=\"{pool}\"}}"),
            )
        };
        assert_eq!(at("vippool/bad"), Some(2.0));
        // A valid pool reads 0, not absent: its series does not vanish when it is fixed.
        assert_eq!(at("vippool/good"), Some(0.0));
    }

    #[test]
    fn an_unreadable_certificate_is_absent_not_zero() {
        let m = Metrics::new(Arc::new(NoPools));
        m.set_certificate_source(Box::new(|| None));
        let name = "kube_vip_webhook_serving_certificate_not_after_timestamp_seconds";
        assert_eq!(sample(&m.encode(), name), None);
    }

    #[test]
    fn leader_transitions_count_changes_only() {
        let m = Metrics::new(Arc::new(NoPools));
        let transitions =
            |m: &Metrics| sample(&m.encode(), "kube_vip_webhook_leader_transitions_total");
        m.set_leader(false); // the initial state is not a transition
        m.set_leader(false);
        assert_eq!(transitions(&m), Some(0.0));
        m.set_leader(true);
        m.set_leader(true);
        m.set_leader(false);
        assert_eq!(transitions(&m), Some(2.0));
        assert_eq!(sample(&m.encode(), "kube_vip_webhook_leader"), Some(0.0));
    }

    #[test]
    fn timestamps_before_the_epoch_are_negative() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5.0);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1.5);
    }

    #[test]
    fn address_counts_never_overflow() {
        assert_eq!(addresses(1u128 << 64), 18446744073709551616.0);
        assert!(addresses(u128::MAX).is_finite());
        assert_eq!(addresses(0), 0.0);
    }
}
