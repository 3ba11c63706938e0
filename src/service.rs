//! What we read of a Service, extracted once from the Kubernetes object.
//!
//! Everything downstream (index, engine, webhook, reconciler, plan) works on [`SvcInfo`], so the
//! rules about which fields mean what live here and nowhere else.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::ipam::Family;

/// The address annotation read by kube-vip (primary contract with the data plane).
pub const LB_IPS_ANNOTATION: &str = "kube-vip.io/loadbalancerIPs";
/// Written by kube-vip with the DHCP lease it obtained (`v4[,v6]`).
pub const REQUESTED_IP_ANNOTATION: &str = "kube-vip.io/requestedIP";
/// Interface hint for kube-vip, from `interface-<ns>` / `interface-global`.
pub const INTERFACE_ANNOTATION: &str = "kube-vip.io/serviceInterface";
/// Label the peer puts on Services it manages; kept for drop-in compatibility.
pub const IMPLEMENTATION_LABEL: &str = "implementation";
pub const IMPLEMENTATION_VALUE: &str = "kube-vip";
/// Names the pool object (VIPPool) a Service draws its address from.
pub const POOL_ANNOTATION: &str = "lb.kube-vip.io/pool";

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a Service port. The apiserver only admits these three, but the webhook
/// sees objects before validation, so anything else is kept distinct rather than guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Protocol {
        match s {
            // The apiserver defaults an empty protocol to TCP before mutating webhooks run.
            None | Some("") | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(_) => Protocol::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Other => "other",
        }
    }
}

/// One (port, protocol) pair: the unit of clash when addresses are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: i32,
    pub protocol: Protocol,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol.as_str(), self.port)
    }
}

/// Most (port, protocol) pairs a Service may carry. Kubernetes itself has no count limit on
/// `spec.ports` (only uniqueness of (port, protocol) and the 1.5 MiB object size); 20,000 is the
/// largest port list it can publish for a Service: the EndpointSlice controller copies every
/// Service port into each slice and the apiserver refuses slices with more than 20,000 ports.
/// Past it a Service could not have endpoints, so nothing legitimate is refused.
pub const MAX_PORTS: usize = 20_000;
/// Longest Service name or `generateName` we accept: the generic Kubernetes object name limit
/// (DNS subdomain). Service names are in fact DNS labels (63), checked by the apiserver later.
pub const MAX_NAME_LEN: usize = 253;
/// Longest namespace name: namespaces are DNS labels.
pub const MAX_NAMESPACE_LEN: usize = 63;

/// `ports` sorted and without duplicates: the form every port list takes before two are
/// compared (a duplicate pair would be refused by the apiserver anyway).
pub fn normalized_ports(ports: &[PortKey]) -> Vec<PortKey> {
    let mut out = ports.to_vec();
    out.sort_unstable();
    out.dedup();
    out
}

/// The first (in sort order) (port, protocol) pair the two lists have in common. A list with
/// no ports at all is treated as clashing with everything: without ports we cannot prove
/// sharing is safe.
///
/// O(s log l) for sorted lists of lengths s <= l (each pair of the shorter list is looked up in
/// the longer one), so comparing a huge list with many small ones stays cheap; unsorted input
/// is sorted first. Never quadratic.
pub fn port_clash(a: &[PortKey], b: &[PortKey]) -> Option<PortKey> {
    if a.is_empty() {
        return b.first().copied().or(Some(PortKey {
            port: 0,
            protocol: Protocol::Other,
        }));
    }
    if b.is_empty() {
        return a.first().copied();
    }
    let (a_sorted, b_sorted);
    let a = if a.is_sorted() {
        a
    } else {
        a_sorted = normalized_ports(a);
        &a_sorted
    };
    let b = if b.is_sorted() {
        b
    } else {
        b_sorted = normalized_ports(b);
        &b_sorted
    };
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short
        .iter()
        .find(|p| long.binary_search(p).is_ok())
        .copied()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// The fields of a Service that allocation reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SvcInfo {
    pub namespace: String,
    pub name: String,
    pub generate_name: Option<String>,
    pub load_balancer: bool,
    pub class: Option<String>,
    pub lb_ips_annotation: Option<String>,
    pub spec_lb_ip: Option<String>,
    pub requested_ip_annotation: Option<String>,
    pub status_ips: Vec<String>,
    /// `None` when unset (at CREATE the apiserver has not defaulted it yet).
    pub policy: Option<FamilyPolicy>,
    pub families: Vec<Family>,
    pub ports: Vec<PortKey>,
    pub has_implementation_label: bool,
    /// Every label, for pool objects' service selectors.
    pub labels: BTreeMap<String, String>,
    /// The pool object named by [`POOL_ANNOTATION`], trimmed; `None` when absent or blank.
    pub pool: Option<String>,
}

/// Addresses a Service holds, for the used-address index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub ips: Vec<IpAddr>,
    /// Entries that are not IP addresses (typos, DNS names): skipped and counted, never fatal.
    pub malformed: Vec<String>,
}

impl SvcInfo {
    pub fn from_service(svc: &Service) -> SvcInfo {
        let meta = &svc.metadata;
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let spec = svc.spec.as_ref();
        let policy = spec
            .and_then(|s| s.ip_family_policy.as_deref())
            .and_then(|p| match p {
                "SingleStack" => Some(FamilyPolicy::SingleStack),
                "PreferDualStack" => Some(FamilyPolicy::PreferDualStack),
                "RequireDualStack" => Some(FamilyPolicy::RequireDualStack),
                _ => None,
            });
        SvcInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            generate_name: meta.generate_name.clone().filter(|g| !g.is_empty()),
            load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
            class: spec.and_then(|s| s.load_balancer_class.clone()),
            lb_ips_annotation: annotation(LB_IPS_ANNOTATION),
            spec_lb_ip: spec.and_then(|s| s.load_balancer_ip.clone()),
            requested_ip_annotation: annotation(REQUESTED_IP_ANNOTATION),
            status_ips: svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
                .unwrap_or_default(),
            policy,
            families: spec
                .and_then(|s| s.ip_families.as_ref())
                .map(|f| f.iter().filter_map(|f| Family::from_k8s(f)).collect())
                .unwrap_or_default(),
            // Sorted and deduplicated once here, so that clash checks are merges, not scans.
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .map(|ports| {
                    let mut keys: Vec<PortKey> = ports
                        .iter()
                        .map(|p| PortKey {
                            port: p.port,
                            protocol: Protocol::parse(p.protocol.as_deref()),
                        })
                        .collect();
                    keys.sort_unstable();
                    keys.dedup();
                    keys
                })
                .unwrap_or_default(),
            has_implementation_label: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(IMPLEMENTATION_LABEL))
                .is_some_and(|v| v == IMPLEMENTATION_VALUE),
            labels: meta.labels.clone().unwrap_or_default(),
            pool: annotation(POOL_ANNOTATION)
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty()),
        }
    }

    /// Without what only pool selection reads (labels, the pool annotation), for the
    /// used-address index: a relist or a Services file holds one per Service at once, and at
    /// 100k Services their labels alone were ~80 MiB at readiness (`cargo bench --bench
    /// cache_scale`). Services still to allocate are read again in full by the reconciler.
    pub fn for_index(mut self) -> SvcInfo {
        self.labels = BTreeMap::new();
        self.pool = None;
        self
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.name.clone())
    }

    /// A human name even for `generateName` Services, whose name is empty at admission.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.generate_name) {
            (n, Some(g)) if n.is_empty() => format!("{}/{}<generated>", self.namespace, g),
            _ => format!("{}/{}", self.namespace, self.name),
        }
    }

    /// The user's own address choice: a non-empty annotation wins over `spec.loadBalancerIP`.
    pub fn requested(&self) -> Option<Requested<'_>> {
        fn non_empty(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        if let Some(v) = non_empty(&self.lb_ips_annotation) {
            return Some(Requested {
                value: v,
                source: RequestSource::Annotation,
            });
        }
        non_empty(&self.spec_lb_ip).map(|v| Requested {
            value: v,
            source: RequestSource::SpecLoadBalancerIp,
        })
    }

    /// Every address this Service occupies: annotation, `spec.loadBalancerIP`, status ingress and
    /// the DHCP result. Only LoadBalancer Services hold addresses (a type change frees them).
    /// `0.0.0.0` is the DHCP placeholder, not an address, and is not held.
    pub fn held(&self) -> Held {
        let mut held = Held::default();
        if !self.load_balancer {
            return held;
        }
        let lists = [
            self.lb_ips_annotation.as_deref(),
            self.spec_lb_ip.as_deref(),
            self.requested_ip_annotation.as_deref(),
        ];
        let entries = lists
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .chain(self.status_ips.iter().map(String::as_str));
        for entry in entries.map(str::trim).filter(|e| !e.is_empty()) {
            match entry.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => {}
                Ok(ip) => {
                    if !held.ips.contains(&ip) {
                        held.ips.push(ip);
                    }
                }
                Err(_) => held.malformed.push(entry.to_string()),
            }
        }
        held
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestSource {
    Annotation,
    SpecLoadBalancerIp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requested<'a> {
    pub value: &'a str,
    pub source: RequestSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> SvcInfo {
        SvcInfo::from_service(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn reads_every_address_source_and_skips_malformed() {
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "a", "name": "b", "annotations": {
                "kube-vip.io/loadbalancerIPs": "10.0.0.1, fd00::1,,bogus",
                "kube-vip.io/requestedIP": "192.168.1.9"}},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": "10.0.0.1",
                     "ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.7"}, {"hostname": "x"}]}}
        }));
        let held = s.held();
        let ips: Vec<String> = held.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "fd00::1", "192.168.1.9", "10.0.0.7"]);
        assert_eq!(held.malformed, ["bogus"]);
        assert_eq!(
            s.ports,
            [
                PortKey {
                    port: 53,
                    protocol: Protocol::Udp
                },
                PortKey {
                    port: 80,
                    protocol: Protocol::Tcp
                }
            ]
        );
    }

    #[test]
    fn for_index_drops_only_what_pool_selection_reads() {
        let full = svc(serde_json::json!({
            "metadata": {"namespace": "a", "name": "b",
                "labels": {"tier": "web", "implementation": "kube-vip"},
                "annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1",
                                "lb.kube-vip.io/pool": "web"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}
        }));
        assert!(!full.labels.is_empty() && full.pool.is_some());
        let slim = full.clone().for_index();
        assert!(slim.labels.is_empty() && slim.pool.is_none());
        // Everything else, and so what the index holds, is unchanged.
        assert_eq!(
            SvcInfo {
                labels: full.labels.clone(),
                pool: full.pool.clone(),
                ..slim.clone()
            },
            full
        );
        assert_eq!(slim.held(), full.held());
    }

    #[test]
    fn non_load_balancer_holds_nothing_and_dhcp_placeholder_is_not_held() {
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "a", "name": "b",
                         "annotations": {"kube-vip.io/loadbalancerIPs": "10.0.0.1"}},
            "spec": {"type": "ClusterIP"}
        }));
        assert!(s.held().ips.is_empty());
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "a", "name": "b",
                         "annotations": {"kube-vip.io/loadbalancerIPs": "0.0.0.0"}},
            "spec": {"type": "LoadBalancer"}
        }));
        assert!(s.held().ips.is_empty());
    }

    #[test]
    fn annotation_wins_over_spec_and_blank_is_no_request() {
        let mut s = SvcInfo {
            lb_ips_annotation: Some("  ".into()),
            spec_lb_ip: Some("10.1.1.1".into()),
            ..Default::default()
        };
        assert_eq!(
            s.requested().map(|r| r.source),
            Some(RequestSource::SpecLoadBalancerIp)
        );
        s.lb_ips_annotation = Some("10.2.2.2".into());
        assert_eq!(s.requested().map(|r| r.value), Some("10.2.2.2"));
        s.lb_ips_annotation = None;
        s.spec_lb_ip = Some(String::new());
        assert!(s.requested().is_none());
    }

    #[test]
    fn clash_is_port_and_protocol() {
        let tcp53 = PortKey {
            port: 53,
            protocol: Protocol::Tcp,
        };
        let udp53 = PortKey {
            port: 53,
            protocol: Protocol::Udp,
        };
        assert_eq!(port_clash(&[tcp53], &[udp53]), None);
        assert_eq!(port_clash(&[tcp53, udp53], &[udp53]), Some(udp53));
        assert!(port_clash(&[], &[udp53]).is_some());
        assert!(port_clash(&[tcp53], &[]).is_some());
    }
}
