//! Addresses the network already uses, never handed out whatever the pools say (SPEC 4.9).
//!
//! Two kinds, entering allocation two ways:
//! * Individual addresses the cluster reports: every Node's `InternalIP` and `ExternalIP`, and
//!   the API endpoint (the server of `kube-public/cluster-info`'s kubeconfig when it is an IP,
//!   the addresses of the `default/kubernetes` EndpointSlices). There are a handful per node, so
//!   they are holders in the used-address index ([`crate::index::HolderId::Reserved`]) without
//!   ports: the next-free search jumps over them like over any used address, sharing never picks
//!   them (no ports clash with every port), and a pinned one is denied naming its owner.
//! * Exclusions (`exclude-*` keys, `--exclude`): operator ranges that may be large (a /16), so
//!   they are subtracted from pools as intervals ([`crate::config::Exclusion`]), never inserted
//!   address by address.
//!
//! This module is pure: Kubernetes objects in, [`Holding`]s out. The allocator keeps them per
//! [`Source`] and replaces a source as a whole when its object changes (incremental, like
//! Services: nothing is rescanned).

pub mod objects;

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// Everything that reserves addresses as read once (`plan`, `status`): each source's holdings
/// and the operator's `--exclude`.
#[derive(Clone, Debug, Default)]
pub struct Network {
    pub sources: Vec<(Source, Vec<Holding>)>,
    pub exclude: Option<crate::config::Exclusion>,
}

/// Where reserved addresses come from; each is replaced as a whole when its object changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A Node, by name.
    Node(String),
    /// The server of `kube-public/cluster-info`'s kubeconfig.
    ClusterInfo,
    /// An EndpointSlice of the `default/kubernetes` Service, by name.
    EndpointSlice(String),
}

/// The kinds of [`Source`], each watched (and relisted) on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Node,
    ClusterInfo,
    EndpointSlice,
}

impl Source {
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Node(_) => SourceKind::Node,
            Source::ClusterInfo => SourceKind::ClusterInfo,
            Source::EndpointSlice(_) => SourceKind::EndpointSlice,
        }
    }
}

/// Addresses a source reserves under one description of what they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// What the addresses are, completing "address 10.0.0.5 is ...": `node worker-1's
    /// InternalIP`. Unique per source and role, so it also identifies the index holder.
    pub owner: String,
    /// Sorted, without duplicates.
    pub ips: Vec<IpAddr>,
}

impl Holding {
    /// A holding of `ips` (sorted and deduplicated here); `None` when there is none.
    pub fn new(owner: String, mut ips: Vec<IpAddr>) -> Option<Holding> {
        ips.sort_unstable();
        ips.dedup();
        (!ips.is_empty()).then_some(Holding { owner, ips })
    }
}

/// One reserved address, what it is, and the pools that contain it (`status`, `plan`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ReservedAddress {
    #[serde(serialize_with = "as_string")]
    pub address: IpAddr,
    pub owner: String,
    /// Pool keys whose addresses include it (after exclusions): allocation skips it there.
    pub pools: Vec<String>,
}

/// A reserved address inside a pool: what the Warning Event on the ConfigMap and the metric
/// name. Sorted by pool, then address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InPool {
    pub pool: String,
    #[serde(serialize_with = "as_string")]
    pub address: IpAddr,
    pub owner: String,
}

impl fmt::Display for InPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {} is {}", self.address, self.pool, self.owner)
    }
}

fn as_string<S: serde::Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(ip)
}

/// The host of a kubeconfig `server` URL when it is an IP address: `https://10.0.0.5:6443`,
/// `https://[fd00::5]:6443`, `10.0.0.5`. `None` for a DNS name (resolving it is not ours to
/// do: the answer may differ from the apiserver's clients').
pub fn server_ip(server: &str) -> Option<IpAddr> {
    let rest = server.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    // userinfo@host:port: the host is after the last '@'.
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else if host_port.matches(':').count() > 1 {
        host_port // a bare IPv6 address without a port
    } else {
        host_port.split(':').next()?
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_that_are_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(server_ip("https://10.0.0.5:6443"), ip("10.0.0.5"));
        assert_eq!(server_ip(" https://10.0.0.5 "), ip("10.0.0.5"));
        assert_eq!(server_ip("https://10.0.0.5:6443/prefix?x"), ip("10.0.0.5"));
        assert_eq!(server_ip("https://[fd00::5]:6443"), ip("fd00::5"));
        assert_eq!(server_ip("https://[fd00::5]"), ip("fd00::5"));
        assert_eq!(server_ip("fd00::5"), ip("fd00::5"));
        assert_eq!(server_ip("10.0.0.5"), ip("10.0.0.5"));
        assert_eq!(server_ip("https://user@10.0.0.5:443"), ip("10.0.0.5"));
        assert_eq!(server_ip("https://api.example.com:6443"), None);
        assert_eq!(server_ip("https://10.0.0.300:6443"), None);
        assert_eq!(server_ip(""), None);
    }

    #[test]
    fn holdings_are_sorted_and_never_empty() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = Holding::new(
            "x".into(),
            vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")],
        )
        .unwrap();
        assert_eq!(h.ips, [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(Holding::new("x".into(), Vec::new()), None);
    }
}
