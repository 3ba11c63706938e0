//! The API calls the binary makes, for RBAC: `tests/manifests.rs` checks that the rules bound to
//! our ServiceAccount allow each of them and nothing beyond; `tests/rbac_coverage.rs` checks,
//! against the fake apiserver's request log of the real code, that the code makes each of them
//! and nothing else.
//!
//! Self-contained; include with `#[path = "support/api_calls.rs"] mod api_calls;`.
// Each test binary uses a different part of this table's helpers.
#![allow(dead_code)]

/// Fixed names the binary is written against (its defaults; the manifests keep them).
pub const NAME: &str = "kube-vip-webhook";
pub const NAMESPACE: &str = "kube-system";
pub const CONFIG_MAP: &str = "kubevip";
pub const SELF_SIGNED_SECRET: &str = "kube-vip-webhook-selfsigned";

/// Where a call lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Across namespaces (a cluster-wide list/watch), or in whatever namespace the object is in.
    EveryNamespace,
    /// In this namespace only.
    In(&'static str),
    /// A cluster-scoped resource.
    ClusterScoped,
}

/// Which install route makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    Both,
    SelfSigned,
}

#[derive(Debug, Clone, Copy)]
pub struct ApiCall {
    pub route: For,
    pub group: &'static str,
    /// Plural, with `/subresource` when one is called.
    pub resource: &'static str,
    pub verb: &'static str,
    pub at: At,
    /// The object name the request carries (in the URL, or in a `metadata.name` field selector
    /// for list/watch); `None` for create and for calls on arbitrary objects.
    pub name: Option<&'static str>,
}

const fn call(
    route: For,
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    at: At,
    name: Option<&'static str>,
) -> ApiCall {
    ApiCall {
        route,
        group,
        resource,
        verb,
        at,
        name,
    }
}

pub const API_CALLS: &[ApiCall] = &[
    // Service reflector: every Service in the cluster is the used-address view.
    call(For::Both, "", "services", "list", At::EveryNamespace, None),
    call(For::Both, "", "services", "watch", At::EveryNamespace, None),
    // Reconciler: annotation + label on Services the webhook did not handle.
    call(For::Both, "", "services", "patch", At::EveryNamespace, None),
    // The cluster's primary IP family.
    call(
        For::Both,
        "",
        "services",
        "get",
        At::In("default"),
        Some("kubernetes"),
    ),
    // kube-runtime events::Recorder (events.k8s.io/v1), in the namespace of the object: create
    // only (every Event is new, never a series PATCH: see cluster::context).
    call(
        For::Both,
        "events.k8s.io",
        "events",
        "create",
        At::EveryNamespace,
        None,
    ),
    // The pool ConfigMap: a watcher lists and watches it with fieldSelector metadata.name, which
    // the apiserver authorises as that name. Never a GET (the watcher is the only reader).
    call(
        For::Both,
        "",
        "configmaps",
        "list",
        At::In(NAMESPACE),
        Some(CONFIG_MAP),
    ),
    call(
        For::Both,
        "",
        "configmaps",
        "watch",
        At::In(NAMESPACE),
        Some(CONFIG_MAP),
    ),
    // Leader election: get and update to acquire, renew and release; list and watch (field
    // selector metadata.name) so a released Lease wakes the candidates at once. The Lease itself
    // is created by the manifests (manifest/base/lease.yaml): RBAC cannot limit `create` by name.
    call(
        For::Both,
        "coordination.k8s.io",
        "leases",
        "get",
        At::In(NAMESPACE),
        Some(NAME),
    ),
    call(
        For::Both,
        "coordination.k8s.io",
        "leases",
        "update",
        At::In(NAMESPACE),
        Some(NAME),
    ),
    call(
        For::Both,
        "coordination.k8s.io",
        "leases",
        "list",
        At::In(NAMESPACE),
        Some(NAME),
    ),
    call(
        For::Both,
        "coordination.k8s.io",
        "leases",
        "watch",
        At::In(NAMESPACE),
        Some(NAME),
    ),
    // Addresses the network already uses (SPEC 4.9): every Node (cluster-wide watcher), the
    // apiservers' EndpointSlice `default/kubernetes` and `kube-public/cluster-info` (each a
    // watcher with fieldSelector metadata.name, authorised as that name).
    call(For::Both, "", "nodes", "list", At::ClusterScoped, None),
    call(For::Both, "", "nodes", "watch", At::ClusterScoped, None),
    call(
        For::Both,
        "discovery.k8s.io",
        "endpointslices",
        "list",
        At::In("default"),
        Some("kubernetes"),
    ),
    call(
        For::Both,
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        At::In("default"),
        Some("kubernetes"),
    ),
    call(
        For::Both,
        "",
        "configmaps",
        "list",
        At::In("kube-public"),
        Some("cluster-info"),
    ),
    call(
        For::Both,
        "",
        "configmaps",
        "watch",
        At::In("kube-public"),
        Some("cluster-info"),
    ),
    // Self-signed bootstrap: the certificate Secret (created empty by the self-signed overlay,
    // filled and renewed by update) and our webhook's caBundle.
    call(
        For::SelfSigned,
        "",
        "secrets",
        "get",
        At::In(NAMESPACE),
        Some(SELF_SIGNED_SECRET),
    ),
    call(
        For::SelfSigned,
        "",
        "secrets",
        "update",
        At::In(NAMESPACE),
        Some(SELF_SIGNED_SECRET),
    ),
    call(
        For::SelfSigned,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "get",
        At::ClusterScoped,
        Some(NAME),
    ),
    call(
        For::SelfSigned,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
        At::ClusterScoped,
        Some(NAME),
    ),
    // VIPPools (cluster-scoped, issue 13): the pool watch on every replica, and the status the
    // allocating replica writes (merge patch on the status subresource).
    call(
        For::Both,
        "lb.kube-vip.io",
        "vippools",
        "list",
        At::ClusterScoped,
        None,
    ),
    call(
        For::Both,
        "lb.kube-vip.io",
        "vippools",
        "watch",
        At::ClusterScoped,
        None,
    ),
    call(
        For::Both,
        "lb.kube-vip.io",
        "vippools/status",
        "patch",
        At::ClusterScoped,
        None,
    ),
    // Namespace labels (metadata only) for VIPPool namespace selectors.
    call(For::Both, "", "namespaces", "list", At::ClusterScoped, None),
    call(
        For::Both,
        "",
        "namespaces",
        "watch",
        At::ClusterScoped,
        None,
    ),
];

pub fn calls_for(route: &str) -> Vec<ApiCall> {
    API_CALLS
        .iter()
        .filter(|c| c.route == For::Both || (c.route == For::SelfSigned && route == "self-signed"))
        .copied()
        .collect()
}
