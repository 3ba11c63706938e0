//! The `VIPPool` custom resource (`vippools.lb.kube-vip.io`): the type the API serves, its
//! OpenAPI schema, and the CRD generated from it (`manifest/base/crd.yaml`, kept equal to
//! [`VIPPool::crd`] by `tests/crd.rs`).
//!
//! The schema checks the shape of every address entry with patterns (RE2, as the apiserver reads
//! them; CEL's IP/CIDR functions need Kubernetes 1.31). What a pattern cannot say (a reversed
//! range, an IPv6 address with too many groups) the parser reports in the `Invalid` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the pool objects.
pub const GROUP: &str = "lb.kube-vip.io";
/// `apiVersion` of the pool objects.
pub const API_VERSION: &str = "lb.kube-vip.io/v1alpha1";
/// Kind of the pool objects.
pub const KIND: &str = "VIPPool";
/// How a pool object is named where ConfigMap pools are named by key (metrics, Events,
/// messages): `vippool/<name>`, the form `kubectl get` accepts. ConfigMap keys never hold `/`.
pub const KEY_PREFIX: &str = "vippool/";

/// Most entries in `spec.addresses` or `spec.exclude`: each is an interval the allocator keeps,
/// and a pool is written by hand; a thousand is far beyond any real pool.
pub const MAX_ENTRIES: usize = 1024;
/// Longest entry: an IPv6 range written in full with embedded IPv4 is 91 characters.
pub const MAX_ENTRY_LEN: usize = 100;

/// One IPv4 octet, without leading zeros (as Rust's and Go's parsers read them).
macro_rules! octet {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    };
}
macro_rules! v4 {
    () => {
        concat!(octet!(), "(\\.", octet!(), "){3}")
    };
}
macro_rules! hex {
    () => {
        "[0-9a-fA-F]{1,4}"
    };
}
/// Every textual IPv6 form (RFC 4291 2.2), without lookarounds (RE2 has none). The forms with
/// an embedded IPv4 address accept a few too many groups; the parser refuses those.
macro_rules! v6 {
    () => {
        concat!(
            "((",
            hex!(),
            ":){7}",
            hex!(),
            "|(",
            hex!(),
            ":){1,7}:|(",
            hex!(),
            ":){1,6}:",
            hex!(),
            "|(",
            hex!(),
            ":){1,5}(:",
            hex!(),
            "){1,2}|(",
            hex!(),
            ":){1,4}(:",
            hex!(),
            "){1,3}|(",
            hex!(),
            ":){1,3}(:",
            hex!(),
            "){1,4}|(",
            hex!(),
            ":){1,2}(:",
            hex!(),
            "){1,5}|",
            hex!(),
            ":(:",
            hex!(),
            "){1,6}|:((:",
            hex!(),
            "){1,7}|:)|((",
            hex!(),
            ":){6}|::(",
            hex!(),
            ":){0,5}|(",
            hex!(),
            ":){1,5}:(",
            hex!(),
            ":){0,4})",
            v4!(),
            ")"
        )
    };
}

/// An address entry: a CIDR, a `start-end` range of one family, or a single address.
pub const ENTRY_PATTERN: &str = concat!(
    "^(",
    v4!(),
    "(/(3[0-2]|[12]?[0-9])|-",
    v4!(),
    ")?|",
    v6!(),
    "(/(12[0-8]|1[01][0-9]|[1-9]?[0-9])|-",
    v6!(),
    ")?)$"
);

/// A network interface name Linux could accept (no `/`, `:` or spaces, at most 15 bytes).
pub const INTERFACE_PATTERN: &str = "^[^/:\\s]{1,15}$";

/// A `loadBalancerClass` as Services carry it: a label-style key with a prefix.
pub const CLASS_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A pool of load-balancer addresses, and which Services may draw from it.
// Every `printcolumn(...)` names its `type_`: clippy reads the repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "lb.kube-vip.io",
    version = "v1alpha1",
    kind = "VIPPool",
    plural = "vippools",
    singular = "vippool",
    shortname = "vpool",
    category = "kube-vip",
    status = "VIPPoolStatus",
    derive = "PartialEq",
    doc = "A pool of load-balancer addresses for kube-vip, and which Services may draw from it. \
           Pools are tried by priority (higher first, ties by name), before the kubevip ConfigMap's.",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "IPv4 Free", type_ = "integer", json_path = ".status.ipv4.free"),
    printcolumn(name = "IPv6 Free", type_ = "integer", json_path = ".status.ipv6.free"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Disabled",
        type_ = "boolean",
        json_path = ".spec.disabled",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VIPPoolSpec {
    /// Addresses handed out: CIDRs (10.0.0.0/24), start-end ranges of one family
    /// (10.0.0.10-10.0.0.20) or single addresses; IPv4 and IPv6 may be mixed.
    #[schemars(
        length(min = 1, max = MAX_ENTRIES),
        inner(regex(pattern = ENTRY_PATTERN), length(max = MAX_ENTRY_LEN))
    )]
    pub addresses: Vec<String>,
    /// Addresses of `addresses` never handed out (gateways, hosts), same forms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_ENTRIES),
        inner(regex(pattern = ENTRY_PATTERN), length(max = MAX_ENTRY_LEN))
    )]
    pub exclude: Vec<String>,
    /// Only Services whose labels match (absent: every Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in namespaces whose labels match (absent: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Only Services with this spec.loadBalancerClass; Services of this class are then handled
    /// (absent: the Services the webhook handles anyway, class-less ones by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CLASS_PATTERN), length(max = 317))]
    pub load_balancer_class: Option<String>,
    /// Pools are tried from the highest priority down; equal priorities by name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// A new Service may reuse an address already held when no (port, protocol) pair clashes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_share: bool,
    /// Also annotate allocated Services with kube-vip.io/serviceInterface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = INTERFACE_PATTERN))]
    pub interface: Option<String>,
    /// Never hand out IPv4 addresses ending in .0 or .255 (some clients and routers mishandle them).
    // Named as the contract spells it (camelCase would give `avoidBuggyIps`).
    #[serde(default = "yes", rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Drain: Services keep the addresses they hold, nothing new is handed out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

impl Default for VIPPoolSpec {
    /// No addresses, every other field as the API defaults it.
    fn default() -> Self {
        VIPPoolSpec {
            addresses: Vec::new(),
            exclude: Vec::new(),
            service_selector: None,
            namespace_selector: None,
            load_balancer_class: None,
            priority: 0,
            allow_share: false,
            interface: None,
            avoid_buggy_ips: true,
            disabled: false,
        }
    }
}

/// What the allocating replica last saw of the pool (written rate-limited, by the leader only).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VIPPoolStatus {
    /// The metadata.generation these counts and conditions are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    /// Ready (addresses can be handed out), Conflict (overlaps another pool), Invalid (entries
    /// or selectors ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Addresses of one family. Counts above 2^63-1 (IPv6 prefixes shorter than /65) are shown as
/// 9223372036854775807; the metrics carry the exact size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct FamilyUsage {
    /// Addresses that can be handed out.
    pub size: i64,
    /// Held by Services (or being admitted).
    pub used: i64,
    pub free: i64,
}

impl FamilyUsage {
    /// From exact counts, saturating at `i64::MAX`.
    pub fn new(size: u128, used: u128) -> FamilyUsage {
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        FamilyUsage {
            size: clamp(size),
            used: clamp(used),
            free: clamp(size.saturating_sub(used)),
        }
    }
}
