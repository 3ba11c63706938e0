//! Prometheus metrics: one `prometheus-client` registry, every name prefixed `kube_vip_webhook_`.
//!
//! Event-driven metrics (admissions, reconciles, events) are counters/histograms updated by the
//! code paths; state metrics (pool usage, reservations, config health) are read from a
//! [`StatsSource`] at scrape time by a collector, so they are never stale.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The process's metrics. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    admission_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    reconciles: Family<OutcomeLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
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
        let admission_duration: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(admission_histogram);
        registry.register_with_unit(
            "admission_duration",
            "Time to answer an admission request, by operation",
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
        registry.register_collector(Box::new(StatsCollector(stats)));
        Metrics {
            registry,
            admissions,
            admission_duration,
            reconciles,
            events,
        }
    }

    /// Count one admission answer and record how long it took.
    pub fn observe_admission(&self, operation: &str, outcome: &str, elapsed: Duration) {
        let labels = AdmissionLabels {
            operation: operation.to_string(),
            outcome: outcome.to_string(),
        };
        self.admissions.get_or_create(&labels).inc();
        self.admission_duration
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
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
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        plain_gauge(
            &mut encoder,
            "reservations",
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
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_counts_never_overflow() {
        assert_eq!(addresses(1u128 << 64), 18446744073709551616.0);
        assert!(addresses(u128::MAX).is_finite());
        assert_eq!(addresses(0), 0.0);
    }
}
