//! The gauges of reserved addresses inside pools (nodes, the API endpoint: SPEC 4.9).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::PoolStat;

/// Series of `pool_reserved_address` (one per reserved address inside a pool, naming it and
/// its owner) at most: a pool laid over the node subnet of a large cluster would otherwise add
/// one series per node. The count per pool (`pool_reserved_addresses`) is always complete, and
/// `status` lists every one.
pub const MAX_NAMED_RESERVED: usize = 64;

/// An address the network already uses (a node's, the API endpoint's) inside a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedStat {
    pub pool: String,
    /// `"IPv4"` or `"IPv6"`.
    pub family: &'static str,
    pub address: String,
    /// What it is: `node worker-1's InternalIP`.
    pub owner: String,
}

/// `pool_reserved_addresses` for every pool and family (0 included: an alert can tell "none"
/// from "not exported"), and `pool_reserved_address` naming the first [`MAX_NAMED_RESERVED`].
pub(super) fn reserved_gauges(
    encoder: &mut DescriptorEncoder,
    pools: &[PoolStat],
    reserved: &[ReservedStat],
) -> fmt::Result {
    if !pools.is_empty() {
        let mut metric = encoder.encode_descriptor(
            "pool_reserved_addresses",
            "Addresses of the pool the network already uses (nodes, the API endpoint); never handed out.",
            None,
            MetricType::Gauge,
        )?;
        for p in pools {
            let n = reserved
                .iter()
                .filter(|r| r.pool == p.pool && r.family == p.family)
                .count();
            let labels = [("pool", p.pool.as_str()), ("family", p.family)];
            metric
                .encode_family(&labels)?
                .encode_gauge(&u64::try_from(n).unwrap_or(u64::MAX))?;
        }
    }
    if reserved.is_empty() {
        return Ok(());
    }
    let help = format!(
        "1 for an address of the pool the network already uses, naming it and what it is \
         (at most {MAX_NAMED_RESERVED} series)."
    );
    let mut metric =
        encoder.encode_descriptor("pool_reserved_address", &help, None, MetricType::Gauge)?;
    for r in reserved.iter().take(MAX_NAMED_RESERVED) {
        let labels = [
            ("pool", r.pool.as_str()),
            ("address", r.address.as_str()),
            ("owner", r.owner.as_str()),
        ];
        metric.encode_family(&labels)?.encode_gauge(&1u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Metrics, StatsSource};
    use super::*;

    struct Reserved(usize);

    impl StatsSource for Reserved {
        fn pools(&self) -> Vec<PoolStat> {
            ["range-global", "cidr-web"]
                .map(|pool| PoolStat {
                    pool: pool.into(),
                    family: "IPv4",
                    size: 256,
                    used: 0,
                })
                .into()
        }
        fn reservations(&self) -> usize {
            0
        }
        fn config_errors(&self) -> usize {
            0
        }
        fn config_present(&self) -> bool {
            true
        }
        fn reserved_in_pools(&self) -> Vec<ReservedStat> {
            (0..self.0)
                .map(|i| ReservedStat {
                    pool: "range-global".into(),
                    family: "IPv4",
                    address: format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    owner: format!("node w{i}'s InternalIP"),
                })
                .collect()
        }
    }

    #[test]
    fn counts_are_complete_and_named_series_capped() {
        let text = Metrics::new(Arc::new(Reserved(MAX_NAMED_RESERVED + 6))).encode();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let count = |pool: &str| {
            let prefix = format!(
                "kube_vip_webhook_pool_reserved_addresses{{pool=\"{pool}\",family=\"IPv4\"}} "
            );
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(str::to_string)
        };
        assert_eq!(count("range-global").as_deref(), Some("70"));
        // A pool without any: 0, not absent.
        assert_eq!(count("cidr-web").as_deref(), Some("0"));
        let named: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("kube_vip_webhook_pool_reserved_address{"))
            .collect();
        assert_eq!(named.len(), MAX_NAMED_RESERVED);
        assert!(
            named[0].contains("address=\"10.0.0.1\"")
                && named[0].contains("owner=\"node w0's InternalIP\""),
            "{}",
            named[0]
        );
        // None at all: no named series.
        let text = Metrics::new(Arc::new(Reserved(0))).encode();
        assert!(!text.contains("pool_reserved_address{"), "{text}");
    }
}
