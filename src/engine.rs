//! The allocation decision: (Service, config, used addresses, options) -> what to write, or why not.
//!
//! Pure and synchronous. The webhook, the reconciler and `plan` all call [`decide`]; the caller
//! owns locking and reservations (see `state`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::{Config, FamilyPool};
use crate::index::{HolderId, UsedIndex};
use crate::ipam::{self, AddressSet, Family};
use crate::pools::{Candidate, PoolSet, select};
use crate::service::{
    FamilyPolicy, IMPLEMENTATION_LABEL, IMPLEMENTATION_VALUE, LB_IPS_ANNOTATION, PortKey,
    RequestSource, SvcInfo, normalized_ports, port_clash,
};

mod allocate;
mod bounds;
mod reserved;

pub use bounds::{MAX_QUOTED, MAX_REQUESTED_ENTRIES, MAX_REQUESTED_LEN, check_bounds};
use bounds::{entries, field_name, limits, quoted};

pub const DEFAULT_CLASS: &str = "kube-vip.io/kube-vip-class";

/// Sharers named in a warning; the rest are counted.
const NAMED_SHARERS: usize = 3;

/// Which Services are ours (SPEC 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassMode {
    /// Default: LoadBalancer Services without `spec.loadBalancerClass`.
    Classless,
    /// `KUBEVIP_ENABLE_LOADBALANCERCLASS=true`: exactly this class.
    Class(String),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub class_mode: ClassMode,
    /// The cluster's primary family, used while `ipFamilies` is not yet defaulted (CREATE).
    pub default_family: Family,
    /// Also write the deprecated `spec.loadBalancerIP` (data planes too old for the annotation).
    pub write_spec_load_balancer_ip: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            class_mode: ClassMode::Classless,
            default_family: Family::V4,
            write_spec_load_balancer_ip: false,
        }
    }
}

impl Options {
    /// What the reconciler (and `plan` without requests) allocates for: ours, and no address yet.
    pub fn needs_allocation(&self, svc: &SvcInfo) -> bool {
        self.handles(svc) && svc.requested().is_none()
    }

    pub fn handles(&self, svc: &SvcInfo) -> bool {
        svc.load_balancer
            && match &self.class_mode {
                ClassMode::Classless => svc.class.is_none(),
                ClassMode::Class(c) => svc.class.as_deref() == Some(c.as_str()),
            }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not ours, or nothing to decide (already has its address).
    Skipped(String),
    /// Fresh addresses from `pool`; `shared` when one of them is reused under `allow-share`.
    Allocated {
        ips: Vec<IpAddr>,
        pool: String,
        shared: bool,
    },
    /// The user's own addresses, validated and admitted (SPEC 4.4).
    Requested { ips: Vec<IpAddr> },
    /// The requested address clashes with another Service.
    Denied(String),
    /// Admitted without an address (no pool, pool exhausted, family unavailable).
    NoAddress(String),
}

impl Outcome {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Skipped(_) => "skipped",
            Outcome::Allocated { shared: true, .. } => "shared",
            Outcome::Allocated { .. } => "allocated",
            Outcome::Requested { .. } => "requested",
            Outcome::Denied(_) => "denied",
            Outcome::NoAddress(_) => "no_address",
        }
    }

    /// Addresses this decision gives the Service (to reserve, and `plan`'s `ips`).
    pub fn ips(&self) -> &[IpAddr] {
        match self {
            Outcome::Allocated { ips, .. } | Outcome::Requested { ips } => ips,
            _ => &[],
        }
    }
}

/// Metadata/spec additions to write; empty maps mean nothing to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub spec_load_balancer_ip: Option<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.annotations.is_empty()
            && self.labels.is_empty()
            && self.spec_load_balancer_ip.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub changes: Changes,
    pub warnings: Vec<String>,
}

impl Decision {
    fn new(outcome: Outcome) -> Self {
        Decision {
            outcome,
            changes: Changes::default(),
            warnings: Vec::new(),
        }
    }
}

/// Everything the decision reads besides the Service.
pub struct View<'a> {
    pub config: &'a Config,
    /// Where the ConfigMap lives, for messages (`kube-system/kubevip`).
    pub config_name: &'a str,
    pub index: &'a UsedIndex,
    pub options: &'a Options,
    /// Holders that are this very Service or request: never a conflict with itself.
    pub me: &'a [HolderId],
}

/// Pool objects (VIPPools) and what choosing among them reads, beside the ConfigMap.
#[derive(Clone, Copy, Debug)]
pub struct Pools<'a> {
    pub set: &'a PoolSet,
    /// Labels of the Service's namespace; `None` when not known (yet).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// Whether the webhook handles `svc`: SPEC 3's rule, or a class some pool object names.
pub fn handles(options: &Options, pools: &PoolSet, svc: &SvcInfo) -> bool {
    options.handles(svc)
        || (svc.load_balancer
            && !pools.is_empty()
            && svc.class.as_deref().is_some_and(|c| pools.claims_class(c)))
}

/// [`check_bounds`] with pool objects: a Service of a class a pool names is bounded too.
pub fn check_bounds_with(svc: &SvcInfo, options: &Options, pools: &PoolSet) -> Option<String> {
    if handles(options, pools, svc) {
        limits(svc)
    } else {
        None
    }
}

/// Decide what `svc` gets from the ConfigMap's pools alone. `old` is the previous object on UPDATE.
pub fn decide(svc: &SvcInfo, old: Option<&SvcInfo>, view: &View<'_>) -> Decision {
    let none = PoolSet::default();
    let pools = Pools {
        set: &none,
        namespace_labels: None,
    };
    decide_with(svc, old, view, &pools)
}

/// Decide what `svc` gets: pool objects first, then the ConfigMap's pool (`pools::select`).
pub fn decide_with(
    svc: &SvcInfo,
    old: Option<&SvcInfo>,
    view: &View<'_>,
    pools: &Pools<'_>,
) -> Decision {
    if let Some(why) = check_bounds_with(svc, view.options, pools.set) {
        return Decision::new(Outcome::Denied(why));
    }
    if !handles(view.options, pools.set, svc) {
        let why = if !svc.load_balancer {
            "not a LoadBalancer Service".to_string()
        } else {
            match (&view.options.class_mode, &svc.class) {
                (ClassMode::Classless, Some(c)) => {
                    format!("loadBalancerClass {c:?} is not handled")
                }
                (ClassMode::Class(want), got) => {
                    format!("loadBalancerClass {got:?} is not the handled class {want:?}")
                }
                _ => "not handled".to_string(),
            }
        };
        return Decision::new(Outcome::Skipped(why));
    }
    match svc.requested() {
        Some(req) => {
            let kept = old.filter(|o| {
                handles(view.options, pools.set, o)
                    && o.requested().map(|r| r.value) == Some(req.value)
            });
            requested(svc, req.value, req.source, kept, view, pools)
        }
        None => allocate::allocate(svc, view, pools),
    }
}

/// `kept`: the previous object on an UPDATE that keeps the requested value unchanged.
fn requested(
    svc: &SvcInfo,
    value: &str,
    source: RequestSource,
    kept: Option<&SvcInfo>,
    view: &View<'_>,
    pools: &Pools<'_>,
) -> Decision {
    let field = field_name(source);
    let mut warnings = Vec::new();
    let mut ips = Vec::new();
    for entry in entries(value) {
        match entry.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if is_dns_name(entry) => warnings.push(format!(
                "{field}: entry {} is a DNS name; kube-vip resolves it and it is not checked for conflicts",
                quoted(entry)
            )),
            Err(_) => {
                return Decision::new(Outcome::Denied(format!(
                    "{field}: entry {} is neither an IP address nor a DNS name",
                    quoted(entry)
                )));
            }
        }
    }
    if kept.is_none() {
        // Nodes, the API endpoint and exclusions are never anyone's (SPEC 4.9).
        for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
            if let Some(why) = reserved::refusal(&svc.namespace, *ip, view) {
                return Decision::new(Outcome::Denied(format!(
                    "{field}: {why}; choose another address"
                )));
            }
        }
    }
    let mut decision = Decision::new(Outcome::Requested { ips: ips.clone() });
    // An unchanged choice is not validated again (an unrelated edit of a Service that already
    // clashes is never denied), except for the (port, protocol) pairs the UPDATE adds: those
    // must not clash with the address's other holders.
    let checked: Option<Cow<'_, [PortKey]>> = match kept {
        None => Some(Cow::Borrowed(&svc.ports)),
        Some(old) => added_ports(&svc.ports, &old.ports),
    };
    if let Some(ports) = checked {
        for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
            for holder in view.index.holders(*ip) {
                // A reserved address a kept choice holds was reported when it became reserved
                // (AddressConflict); it does not block edits of the Service.
                if view.me.contains(&holder.id) || matches!(holder.id, HolderId::Reserved(_)) {
                    continue;
                }
                if let Some(pair) = port_clash(&ports, holder.ports()) {
                    return Decision::new(Outcome::Denied(format!(
                        "{field}: address {ip} is already used by Service {} on {pair}; \
                         choose another address or other ports",
                        holder.label
                    )));
                }
            }
        }
    }
    if kept.is_none() {
        // Addresses a pool object carves out are used by the network (gateways): never pinned.
        if let Some((ip, pool)) = ips
            .iter()
            .find_map(|ip| pools.set.excluded_by(*ip).map(|p| (ip, p)))
        {
            return Decision::new(Outcome::Denied(format!(
                "{field}: address {ip} is excluded by VIPPool {} (spec.exclude: the network uses it); \
                 choose another address",
                pool.name
            )));
        }
        // A change of the user's choice is a new request (SPEC 4.6): say what it shares.
        let selection = select(
            svc,
            view.options.handles(svc),
            pools.namespace_labels,
            pools.set,
            view.config,
        );
        for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
            let others = view
                .index
                .holders(*ip)
                .iter()
                .filter(|h| !view.me.contains(&h.id));
            let count = others.clone().count();
            let home = selection.candidates.iter().find(|c| c.contains(*ip));
            let share = match home {
                Some(c) => c.allow_share,
                None => view.config.allow_share(&svc.namespace),
            };
            if count > 0 && !share {
                // A few names are enough; an address may have any number of holders.
                let names: Vec<&str> = others.take(NAMED_SHARERS).map(|h| &*h.label).collect();
                let more = count.saturating_sub(NAMED_SHARERS);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                let setting = match home.and_then(|c| c.object) {
                    Some(o) => format!("allowShare is not enabled for VIPPool {}", o.name),
                    None => format!(
                        "allow-share is not enabled for namespace {:?}",
                        svc.namespace
                    ),
                };
                warnings.push(format!(
                    "address {ip} is shared with {}{more} (no port clash); {setting}, \
                     requested addresses may still share",
                    names.join(", "),
                ));
            }
            let inside = home.is_some() || selection.disabled.iter().any(|p| p.pool.contains(*ip));
            if !inside && pools.set.is_empty() {
                warnings.push(format!(
                    "address {ip} is outside the address pool for namespace {:?}; admitted as requested",
                    svc.namespace
                ));
            } else if !inside {
                let keys: Vec<&str> = selection.candidates.iter().map(Candidate::key).collect();
                let keys = if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                };
                warnings.push(format!(
                    "address {ip} is outside every address pool this Service may use ({keys}); admitted as requested"
                ));
            }
        }
    }
    decision.warnings = warnings;
    if source == RequestSource::SpecLoadBalancerIp {
        decision
            .changes
            .annotations
            .insert(LB_IPS_ANNOTATION.to_string(), value.to_string());
    }
    if !svc.has_implementation_label {
        decision.changes.labels.insert(
            IMPLEMENTATION_LABEL.to_string(),
            IMPLEMENTATION_VALUE.to_string(),
        );
    }
    decision
}

/// The pairs `new` has and `old` had not; `None` when there are none. Losing every port is
/// adding "all ports" (a Service without ports clashes with everything).
fn added_ports<'a>(new: &'a [PortKey], old: &[PortKey]) -> Option<Cow<'a, [PortKey]>> {
    if new.is_empty() {
        return (!old.is_empty()).then_some(Cow::Borrowed(new));
    }
    let old = normalized_ports(old);
    let added: Vec<PortKey> = new
        .iter()
        .filter(|p| old.binary_search(p).is_err())
        .copied()
        .collect();
    (!added.is_empty()).then_some(Cow::Owned(added))
}

/// Why a pool gave no address of a family; turned into words only when no pool could serve the
/// Service (with 100 pools tried, formatting every miss cost more than the search).
#[derive(Clone, Debug)]
pub(crate) enum Miss<'a> {
    NoFamily,
    Empty,
    /// Every address of the pool is excluded (the message names the exclusions).
    Excluded(String),
    /// `set` is the pool's, `capacity` what is left of it after exclusions.
    Exhausted {
        capacity: u128,
        set: &'a AddressSet,
    },
}

impl Miss<'_> {
    pub(crate) fn explain(
        &self,
        svc: &SvcInfo,
        candidate: &Candidate<'_>,
        family: Family,
    ) -> String {
        let (key, ns) = (candidate.key(), &svc.namespace);
        match self {
            Miss::NoFamily => format!("pool {key} for namespace {ns:?} has no {family} addresses"),
            Miss::Empty => {
                let see = match candidate.object {
                    Some(_) => "see its Invalid condition",
                    None => "see the ConfigMap errors",
                };
                format!("pool {key} for namespace {ns:?} has no usable {family} entries ({see})")
            }
            Miss::Excluded(why) => why.clone(),
            Miss::Exhausted { capacity, set } => format!(
                "pool {key} for namespace {ns:?} is exhausted: all {capacity} {family} addresses of {set} are in use"
            ),
        }
    }
}

/// An address of `family` from the candidate pool: a shareable one when sharing is allowed,
/// else the next free one. Err says why not ([`Miss::explain`]).
fn pick<'a>(
    svc: &SvcInfo,
    candidate: &Candidate<'a>,
    family: Family,
    view: &View<'_>,
) -> Result<(IpAddr, bool), Miss<'a>> {
    let pool = candidate.pool;
    let share = candidate.allow_share;
    let set = match pool.family(family) {
        None => return Err(Miss::NoFamily),
        Some(FamilyPool::Dhcp) => return Ok((IpAddr::V4(Ipv4Addr::UNSPECIFIED), false)),
        Some(FamilyPool::Set(set)) => set,
    };
    if set.is_empty() {
        return Err(Miss::Empty);
    }
    let usable =
        reserved::usable(pool, family, &svc.namespace, set, view).map_err(Miss::Excluded)?;
    let pool_set = set;
    let set = usable.as_ref();
    let order = view.config.search_order();
    if share && let Some(ip) = shareable(svc, set, view) {
        return Ok((ip, true));
    }
    let free = if candidate.avoid_buggy_ips {
        ipam::next_free(set, view.index.addrs(), order)
    } else {
        ipam::next_free_any(set, view.index.addrs(), order)
    };
    free.map(|ip| (ip, false)).ok_or_else(|| Miss::Exhausted {
        capacity: if candidate.avoid_buggy_ips {
            set.capacity()
        } else {
            set.size()
        },
        set: pool_set,
    })
}

/// First held address of the pool (search order) whose every holder has no (port, protocol)
/// in common with `svc` (SPEC 4.5).
///
/// The index answers for holders in general by jumping over runs of clashing addresses; holders
/// that are this very Service or request (`view.me`) never clash with it, which the index cannot
/// know, so the few addresses they hold are checked one by one and the earlier answer wins.
fn shareable(svc: &SvcInfo, set: &AddressSet, view: &View<'_>) -> Option<IpAddr> {
    let order = view.config.search_order();
    let general = view.index.first_shareable(set, order, &svc.ports);
    let mine = view
        .me
        .iter()
        .flat_map(|id| view.index.addresses_of(id))
        .copied()
        .filter(|ip| set.is_allocatable(*ip))
        .filter(|ip| {
            view.index
                .holders(*ip)
                .iter()
                .all(|h| view.me.contains(&h.id) || port_clash(&svc.ports, h.ports()).is_none())
        });
    general.into_iter().chain(mine).reduce(|a, b| {
        let b_first = match order {
            ipam::SearchOrder::Ascending => ipam::to_u128(b) < ipam::to_u128(a),
            ipam::SearchOrder::Descending => ipam::to_u128(b) > ipam::to_u128(a),
        };
        if b_first { b } else { a }
    })
}

fn other(f: Family) -> Family {
    match f {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

/// RFC 1123 host name (kube-vip accepts DNS names in the annotation).
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.chars().any(|c| c.is_ascii_alphabetic())
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
