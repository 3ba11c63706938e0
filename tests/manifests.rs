//! The install story as files: `manifest/`, `webhook/`, `certs/`, the Dockerfile.
//!
//! * Every YAML document is read into its typed k8s-openapi struct (strict structs below for the
//!   cert-manager kinds) and written back; the two must be equal. k8s-openapi ignores unknown
//!   fields, so this round trip is what catches a misspelled or misplaced field.
//! * Each install route is rendered as `kubectl apply -k` would (a small kustomize: `resources`
//!   and JSON 6902 `patches`, all our kustomizations use; anything else is refused) and checked
//!   for agreement across files: names, namespaces, ports, Secret names, ServiceAccount references.
//! * RBAC: [`API_CALLS`] (in `support/api_calls.rs`) lists every call the binary makes; the rules
//!   bound to our ServiceAccount must allow each of them and nothing beyond. `tests/rbac_coverage.rs`
//!   proves the table against the requests the real code sends to the fake apiserver.
//!
//! Every check returns its problems as text, and `checks_catch_broken_manifests` breaks the real
//! manifests on purpose to prove the checks can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[path = "support/api_calls.rs"]
mod api_calls;
#[path = "support/kustomize.rs"]
mod kustomize;
use api_calls::{API_CALLS, ApiCall, At, For, calls_for};
use kustomize::{Doc, identity, load_docs, rel, render, repo, str_at};

// ---------------------------------------------------------------------------------------------
// The fixed names the binary is written against.

const NAME: &str = "kube-vip-webhook";
const NAMESPACE: &str = "kube-system";
const POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kube-vip-webhook");
const WEBHOOK_NAME: &str = "loadbalancer-ips.kube-vip.io";
const CONFIG_MAP: &str = "kubevip";
const TLS_SECRET: &str = "kube-vip-webhook-tls";
const TLS_DIR: &str = "/etc/kube-vip-webhook/tls";
const SELF_SIGNED_SECRET: &str = "kube-vip-webhook-selfsigned";
const RUN_AS: i64 = 65532;
const ROUTES: [&str; 2] = ["cert-manager", "self-signed"];
/// The optional monitoring kustomization, applied next to either route.
const MONITORING: &str = "manifest/monitoring";
const METRICS_SERVICE: &str = "kube-vip-webhook-metrics";

// ---------------------------------------------------------------------------------------------
// Strict cert-manager schema (only the fields we use; anything else is refused).

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CmObject<S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: S,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    self_signed: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<CaIssuer>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuer {
    secret_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_names: Option<Vec<String>>,
    #[serde(rename = "isCA", default, skip_serializing_if = "Option::is_none")]
    is_ca: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_before: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usages: Option<Vec<KeyUsage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_key: Option<PrivateKey>,
    issuer_ref: IssuerRef,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrivateKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<KeyAlgorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<KeyEncoding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation_policy: Option<RotationPolicy>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct IssuerRef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
enum KeyAlgorithm {
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "ECDSA")]
    Ecdsa,
    Ed25519,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
enum KeyEncoding {
    #[serde(rename = "PKCS1")]
    Pkcs1,
    #[serde(rename = "PKCS8")]
    Pkcs8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
enum RotationPolicy {
    Never,
    Always,
}

/// cert-manager's key usage names (`KeyUsage` in its API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum KeyUsage {
    Signing,
    #[serde(rename = "digital signature")]
    DigitalSignature,
    #[serde(rename = "content commitment")]
    ContentCommitment,
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    #[serde(rename = "key agreement")]
    KeyAgreement,
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    #[serde(rename = "cert sign")]
    CertSign,
    #[serde(rename = "crl sign")]
    CrlSign,
    #[serde(rename = "server auth")]
    ServerAuth,
    #[serde(rename = "client auth")]
    ClientAuth,
}

/// A Go `time.Duration` string as cert-manager takes it (`2160h`, `1h30m`, `90s`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
struct GoDuration {
    text: String,
    seconds: u64,
}

impl TryFrom<String> for GoDuration {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let mut seconds = 0u64;
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(format!("duration {text:?}: unexpected {c:?}")),
            };
            let n: u64 = number
                .parse()
                .map_err(|_| format!("duration {text:?}: unit {c:?} without a number"))?;
            seconds += n * unit;
            number.clear();
        }
        if !number.is_empty() || seconds == 0 {
            return Err(format!("duration {text:?}: expected e.g. 2160h or 1h30m"));
        }
        Ok(GoDuration { text, seconds })
    }
}

impl From<GoDuration> for String {
    fn from(d: GoDuration) -> String {
        d.text
    }
}

type Issuer = CmObject<IssuerSpec>;
type Certificate = CmObject<CertificateSpec>;

// Strict Prometheus Operator schema (monitoring.coreos.com/v1; only the fields we use).

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MonitorEndpoint {
    port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PrometheusRuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

type ServiceMonitor = CmObject<ServiceMonitorSpec>;
type PrometheusRule = CmObject<PrometheusRuleSpec>;

// ---------------------------------------------------------------------------------------------
// Typed documents.

#[derive(Debug, Clone)]
enum Obj {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    Role(Box<Role>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    RoleBinding(Box<RoleBinding>),
    Pdb(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    ConfigMap(Box<ConfigMap>),
    Webhook(Box<MutatingWebhookConfiguration>),
    Issuer(Box<Issuer>),
    Certificate(Box<Certificate>),
    Lease(Box<Lease>),
    Secret(Box<Secret>),
    /// Only in `manifest/examples/nodes.yaml` (input for `plan --nodes`): checked, not kept.
    Node,
    ServiceMonitor(Box<ServiceMonitor>),
    PrometheusRule(Box<PrometheusRule>),
    Crd(Box<CustomResourceDefinition>),
    /// An example VIPPool (parsed without errors).
    Pool,
}

/// Reads into `T` and back; any field `T` does not know (or re-types) is reported.
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T =
        serde_json::from_value(value.clone()).map_err(|e| format!("does not parse: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialize: {e}"))?;
    match first_difference(&without_nulls(value), &back, "") {
        None => Ok(typed),
        Some(d) => Err(format!(
            "not understood by the typed schema (misspelt, misplaced or mistyped field?): {d}"
        )),
    }
}

/// `null` means absent in Kubernetes objects.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn first_difference(written: &Value, typed: &Value, path: &str) -> Option<String> {
    match (written, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    None => return Some(format!("{p} is dropped")),
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{path}/{k} appears"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}/{i}"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: written {a}, read back {b}")),
    }
}

fn typed(doc: &Doc) -> Result<Obj, String> {
    let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
    let kind = doc.value["kind"].as_str().unwrap_or_default();
    let v = &doc.value;
    let obj = match (api_version, kind) {
        ("apps/v1", "Deployment") => Obj::Deployment(round_trip(v)?),
        ("v1", "Service") => Obj::Service(round_trip(v)?),
        ("v1", "ServiceAccount") => Obj::ServiceAccount(round_trip(v)?),
        ("v1", "ConfigMap") => Obj::ConfigMap(round_trip(v)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Obj::ClusterRole(round_trip(v)?),
        ("rbac.authorization.k8s.io/v1", "Role") => Obj::Role(round_trip(v)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Obj::ClusterRoleBinding(round_trip(v)?)
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Obj::RoleBinding(round_trip(v)?),
        ("policy/v1", "PodDisruptionBudget") => Obj::Pdb(round_trip(v)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Obj::NetworkPolicy(round_trip(v)?),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            Obj::Webhook(round_trip(v)?)
        }
        ("cert-manager.io/v1", "Issuer") => {
            let issuer: Box<Issuer> = round_trip(v)?;
            let s = &issuer.spec;
            if s.self_signed.is_some() == s.ca.is_some() {
                return Err("an Issuer needs exactly one of selfSigned, ca".into());
            }
            Obj::Issuer(issuer)
        }
        ("cert-manager.io/v1", "Certificate") => Obj::Certificate(round_trip(v)?),
        ("coordination.k8s.io/v1", "Lease") => Obj::Lease(round_trip(v)?),
        ("v1", "Secret") => Obj::Secret(round_trip(v)?),
        ("v1", "Node") => {
            round_trip::<k8s_openapi::api::core::v1::Node>(v)?;
            Obj::Node
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => Obj::ServiceMonitor(round_trip(v)?),
        ("monitoring.coreos.com/v1", "PrometheusRule") => Obj::PrometheusRule(round_trip(v)?),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => Obj::Crd(round_trip(v)?),
        ("lb.kube-vip.io/v1alpha1", "VIPPool") => {
            // The type writes the defaulted avoidBuggyIPs back: make it explicit before comparing.
            let mut v = v.clone();
            if v["spec"].get("avoidBuggyIPs").is_none() {
                v["spec"]["avoidBuggyIPs"] = Value::Bool(true);
            }
            let pool: kube_vip_webhook::pools::VIPPool = round_trip(&v)?;
            let parsed = kube_vip_webhook::pools::parse_object(&pool);
            if !parsed.errors.is_empty() {
                return Err(format!("VIPPool errors: {:?}", parsed.errors));
            }
            Obj::Pool
        }
        _ => return Err(format!("unexpected apiVersion/kind {api_version}/{kind}")),
    };
    Ok(obj)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", rel(dir)))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn all_yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in ["manifest", "webhook", "certs"] {
        yaml_files(&repo().join(d), &mut files);
    }
    files
}

fn is_kustomization(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "kustomization.yaml")
}

// ---------------------------------------------------------------------------------------------
// A rendered install route, typed.

struct Route {
    name: &'static str,
    docs: Vec<Doc>,
    objs: Vec<Obj>,
}

macro_rules! pick {
    ($fn:ident, $variant:ident, $ty:ty) => {
        fn $fn(&self) -> Vec<&$ty> {
            self.objs
                .iter()
                .filter_map(|o| match o {
                    Obj::$variant(x) => Some(&**x),
                    _ => None,
                })
                .collect()
        }
    };
}

impl Route {
    fn load(name: &'static str) -> Route {
        let rendered =
            render(&repo().join("manifest/overlays").join(name)).unwrap_or_else(|e| panic!("{e}"));
        Route::from_docs(name, rendered.docs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn from_docs(name: &'static str, docs: Vec<Doc>) -> Result<Route, String> {
        let objs = docs
            .iter()
            .map(|d| typed(d).map_err(|e| format!("{}: {e}", d.origin)))
            .collect::<Result<_, _>>()?;
        Ok(Route { name, docs, objs })
    }

    /// The route with one document changed (for the tests that prove the checks can fail).
    fn mutated(&self, kind: &str, name: &str, edit: impl Fn(&mut Value)) -> Result<Route, String> {
        let mut docs = self.docs.clone();
        let mut hit = false;
        for d in docs.iter_mut() {
            if str_at(&d.value, "/kind") == kind && str_at(&d.value, "/metadata/name") == name {
                edit(&mut d.value);
                hit = true;
            }
        }
        assert!(hit, "no {kind} {name} in route {}", self.name);
        Route::from_docs(self.name, docs)
    }

    pick!(deployments, Deployment, Deployment);
    pick!(services, Service, Service);
    pick!(service_accounts, ServiceAccount, ServiceAccount);
    pick!(cluster_roles, ClusterRole, ClusterRole);
    pick!(roles, Role, Role);
    pick!(
        cluster_role_bindings,
        ClusterRoleBinding,
        ClusterRoleBinding
    );
    pick!(role_bindings, RoleBinding, RoleBinding);
    pick!(pdbs, Pdb, PodDisruptionBudget);
    pick!(network_policies, NetworkPolicy, NetworkPolicy);
    pick!(webhooks, Webhook, MutatingWebhookConfiguration);
    pick!(issuers, Issuer, Issuer);
    pick!(certificates, Certificate, Certificate);
    pick!(leases, Lease, Lease);
    pick!(secrets, Secret, Secret);
    pick!(service_monitors, ServiceMonitor, ServiceMonitor);
    pick!(prometheus_rules, PrometheusRule, PrometheusRule);
    pick!(config_maps, ConfigMap, ConfigMap);
    pick!(crds, Crd, CustomResourceDefinition);
}

fn only<'a, T>(what: &str, items: Vec<&'a T>, problems: &mut Vec<String>) -> Option<&'a T> {
    if items.len() == 1 {
        items.into_iter().next()
    } else {
        problems.push(format!(
            "expected exactly one {what}, found {}",
            items.len()
        ));
        None
    }
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn ns_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

/// Does `selector` (matchLabels only; we use nothing else) select pods labelled `labels`?
fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        Some(s) if s.match_expressions.as_ref().is_none_or(Vec::is_empty) => {
            let ml = s.match_labels.clone().unwrap_or_default();
            !ml.is_empty() && ml.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        _ => false,
    }
}

fn pod_spec(d: &Deployment) -> Option<&PodSpec> {
    d.spec.as_ref()?.template.spec.as_ref()
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn container(d: &Deployment) -> Option<&Container> {
    match pod_spec(d).map(|p| p.containers.as_slice()) {
        Some([c]) => Some(c),
        _ => None,
    }
}

fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

/// Value of `--flag=value` in the container args.
fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    c.args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn container_port(c: &Container, name: &str) -> Option<i32> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// A Service targetPort / probe port resolved against the container's ports.
fn resolve_port(c: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(n) => c
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == *n)
            .then_some(*n),
        IntOrString::String(name) => container_port(c, name),
    }
}

fn listen_port(addr: &str) -> Option<i32> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// Mebibytes of a memory quantity (only the suffixes we use).
fn mebibytes(q: &str) -> Option<u64> {
    if let Some(n) = q.strip_suffix("Mi") {
        n.parse().ok()
    } else if let Some(n) = q.strip_suffix("Gi") {
        n.parse::<u64>().ok().map(|g| g * 1024)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Checks. Each returns its problems.

/// One NetworkPolicy selecting the webhook pods, isolating ingress, allowing only the https port.
fn check_network_policy(
    r: &Route,
    c: &Container,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut p = Vec::new();
    let Some(np) = only("NetworkPolicy", r.network_policies(), &mut p) else {
        return p;
    };
    if name_of(&np.metadata) != NAME || ns_of(&np.metadata) != NAMESPACE {
        p.push(format!("NetworkPolicy should be {NAMESPACE}/{NAME}"));
    }
    let Some(spec) = np.spec.as_ref() else {
        p.push("NetworkPolicy has no spec".into());
        return p;
    };
    if !selects(spec.pod_selector.as_ref(), labels) {
        p.push("NetworkPolicy does not select the webhook pods".into());
    }
    if !spec.policy_types.iter().flatten().any(|t| t == "Ingress") {
        p.push("NetworkPolicy does not isolate ingress (policyTypes lacks Ingress)".into());
    }
    let https = container_port(c, "https");
    let rules = spec.ingress.clone().unwrap_or_default();
    if rules.is_empty() {
        p.push("NetworkPolicy allows nothing: the apiserver cannot reach the webhook".into());
    }
    for rule in &rules {
        let ports = rule.ports.clone().unwrap_or_default();
        if ports.is_empty() {
            p.push("NetworkPolicy has an ingress rule for every port; allow https only".into());
        }
        for port in &ports {
            let resolved = port.port.as_ref().and_then(|t| resolve_port(c, t));
            if resolved != https || port.end_port.is_some() {
                p.push(format!(
                    "NetworkPolicy allows port {:?}; only the https port belongs there",
                    port.port
                ));
            }
        }
    }
    p
}

fn check_workload(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(d), Some(svc), Some(sa), Some(pdb)) = (
        only("Deployment", r.deployments(), &mut p),
        only("Service", r.services(), &mut p),
        only("ServiceAccount", r.service_accounts(), &mut p),
        only("PodDisruptionBudget", r.pdbs(), &mut p),
    ) else {
        return p;
    };
    for (kind, meta) in [
        ("Deployment", &d.metadata),
        ("Service", &svc.metadata),
        ("ServiceAccount", &sa.metadata),
        ("PodDisruptionBudget", &pdb.metadata),
    ] {
        if name_of(meta) != NAME || ns_of(meta) != NAMESPACE {
            p.push(format!(
                "{kind} is {}/{}, expected {NAMESPACE}/{NAME}",
                ns_of(meta),
                name_of(meta)
            ));
        }
    }
    let labels = pod_labels(d);
    if labels.get(POD_LABEL.0).map(String::as_str) != Some(POD_LABEL.1) {
        p.push(format!(
            "pod template lacks label {}={}",
            POD_LABEL.0, POD_LABEL.1
        ));
    }
    let Some(spec) = d.spec.as_ref() else {
        p.push("Deployment has no spec".into());
        return p;
    };
    if !selects(Some(&spec.selector), &labels) {
        p.push("Deployment selector does not match its pod labels".into());
    }
    let replicas = spec.replicas.unwrap_or(1);
    if replicas != 2 {
        p.push(format!("Deployment has {replicas} replicas, expected 2"));
    }

    // Service -> pods and ports.
    let svc_spec = svc.spec.clone().unwrap_or_default();
    let svc_selector = svc_spec.selector.clone().unwrap_or_default();
    if svc_selector.is_empty() || !svc_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        p.push("Service selector does not match the Deployment's pod labels".into());
    }
    if pdb
        .spec
        .as_ref()
        .is_none_or(|s| !selects(s.selector.as_ref(), &labels))
    {
        p.push("PodDisruptionBudget selector does not match the Deployment's pod labels".into());
    }
    if pdb.spec.as_ref().and_then(|s| s.min_available.clone()) != Some(IntOrString::Int(1)) {
        p.push("PodDisruptionBudget minAvailable should be 1 (of 2 replicas)".into());
    }

    let Some(pod) = pod_spec(d) else {
        p.push("Deployment has no pod spec".into());
        return p;
    };
    if pod.service_account_name.as_deref() != Some(name_of(&sa.metadata))
        || ns_of(&sa.metadata) != ns_of(&d.metadata)
    {
        p.push("Deployment does not run as the ServiceAccount".into());
    }
    let Some(c) = container(d) else {
        p.push("Deployment should have exactly one container".into());
        return p;
    };
    for sp in svc_spec.ports.iter().flatten() {
        match sp.target_port.as_ref().map(|t| resolve_port(c, t)) {
            Some(Some(_)) => {}
            _ => p.push(format!(
                "Service port {} targets {:?}, which is not a container port",
                sp.port, sp.target_port
            )),
        }
    }
    let svc_port = |name: &str| {
        svc_spec
            .ports
            .iter()
            .flatten()
            .find(|sp| sp.name.as_deref() == Some(name))
    };
    match svc_port("https") {
        Some(sp)
            if sp.port == 443 && sp.target_port == Some(IntOrString::String("https".into())) => {}
        _ => p.push("Service needs port https: 443 -> targetPort https".into()),
    }
    // The admin port (/metrics) is not for whoever can reach the Service (issue 11).
    let admin_port = container_port(c, "admin");
    for sp in svc_spec.ports.iter().flatten() {
        if sp.target_port.as_ref().and_then(|t| resolve_port(c, t)) == admin_port {
            p.push(format!(
                "Service port {} exposes the admin port; only https belongs on the webhook Service",
                sp.port
            ));
        }
    }
    p.extend(check_network_policy(r, c, &labels));

    // Args and ports agree.
    let a = args(c);
    if a.first() != Some(&"serve") {
        p.push(format!("container args should start with serve: {a:?}"));
    }
    let https = container_port(c, "https");
    let admin = container_port(c, "admin");
    if https.is_none() || flag(c, "listen").and_then(listen_port) != https {
        p.push("--listen port differs from container port https".into());
    }
    if admin.is_none() || flag(c, "admin-listen").and_then(listen_port) != admin {
        p.push("--admin-listen port differs from container port admin".into());
    }
    if https == admin {
        p.push("https and admin must be different ports".into());
    }

    // Probes on the admin port.
    let probe = |what: &str, probe: Option<&Probe>, path: &str, p: &mut Vec<String>| match probe
        .and_then(|pr| pr.http_get.as_ref())
    {
        Some(g)
            if g.path.as_deref() == Some(path)
                && resolve_port(c, &g.port) == admin
                && admin.is_some()
                && g.scheme.as_deref().is_none_or(|s| s == "HTTP") => {}
        _ => p.push(format!(
            "{what} should be HTTP GET {path} on the admin port"
        )),
    };
    probe("livenessProbe", c.liveness_probe.as_ref(), "/livez", &mut p);
    probe(
        "readinessProbe",
        c.readiness_probe.as_ref(),
        "/readyz",
        &mut p,
    );
    if c.startup_probe.is_some() {
        probe("startupProbe", c.startup_probe.as_ref(), "/livez", &mut p);
    }

    // Environment.
    let pod_ns = c.env.iter().flatten().find(|e| e.name == "POD_NAMESPACE");
    let from_downward = pod_ns
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .is_some_and(|f| f.field_path == "metadata.namespace");
    if !from_downward {
        p.push("POD_NAMESPACE should come from the downward API (metadata.namespace)".into());
    }
    for (k, v) in [
        ("KUBEVIP_NAMESPACE", NAMESPACE),
        ("KUBEVIP_CONFIG_MAP", CONFIG_MAP),
        ("RUST_LOG", "info"),
    ] {
        if env_value(c, k) != Some(v) {
            p.push(format!("env {k} should be {v}"));
        }
    }
    let mut env_names = BTreeSet::new();
    for e in c.env.iter().flatten() {
        if !env_names.insert(&e.name) {
            p.push(format!("env {} is set twice", e.name));
        }
    }

    // Image.
    match c.image.as_deref().and_then(|i| i.rsplit_once(':')) {
        Some((_, tag)) if tag != "latest" && !tag.contains('/') => {}
        _ => p.push("image needs a fixed tag".into()),
    }

    // Hardening.
    let psc = pod.security_context.clone().unwrap_or_default();
    if psc.run_as_non_root != Some(true)
        || psc.run_as_user != Some(RUN_AS)
        || psc.run_as_group != Some(RUN_AS)
    {
        p.push(format!("pod should run as non-root {RUN_AS}:{RUN_AS}"));
    }
    if psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()) != Some("RuntimeDefault") {
        p.push("pod seccompProfile should be RuntimeDefault".into());
    }
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        p.push("pod must not share host namespaces".into());
    }
    let csc = c.security_context.clone().unwrap_or_default();
    let caps = csc.capabilities.clone().unwrap_or_default();
    if csc.allow_privilege_escalation != Some(false)
        || csc.read_only_root_filesystem != Some(true)
        || csc.privileged == Some(true)
        || csc.run_as_user.is_some_and(|u| u != RUN_AS)
        || !caps.drop.iter().flatten().any(|d| d == "ALL")
        || caps.add.as_ref().is_some_and(|a| !a.is_empty())
    {
        p.push("container securityContext should forbid privilege escalation, make the root filesystem read-only and drop ALL capabilities".into());
    }

    // Volumes: mounted read-only, no writable scratch space (the binary needs none in a cluster).
    let volumes: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        if !volumes.contains(m.name.as_str()) {
            p.push(format!("volumeMount {} has no volume", m.name));
        }
        if m.read_only != Some(true) {
            p.push(format!("volumeMount {} should be readOnly", m.name));
        }
    }
    if pod.volumes.iter().flatten().any(|v| v.empty_dir.is_some()) {
        p.push("no emptyDir: the binary writes nothing to disk".into());
    }

    // Resources.
    let res = c.resources.clone().unwrap_or_default();
    let req = res.requests.unwrap_or_default();
    let lim = res.limits.unwrap_or_default();
    let req_mem = req.get("memory").and_then(|q| mebibytes(&q.0));
    let lim_mem = lim.get("memory").and_then(|q| mebibytes(&q.0));
    match (req.get("cpu"), req_mem, lim_mem) {
        (Some(_), Some(rm), Some(lm)) if lm >= rm => {}
        _ => p.push(
            "container needs cpu and memory requests and a memory limit >= the request".into(),
        ),
    }
    p
}

fn check_webhook(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(cfg), Some(svc), Some(d)) = (
        only("MutatingWebhookConfiguration", r.webhooks(), &mut p),
        only("Service", r.services(), &mut p),
        only("Deployment", r.deployments(), &mut p),
    ) else {
        return p;
    };
    if name_of(&cfg.metadata) != NAME {
        p.push(format!(
            "MutatingWebhookConfiguration is {}, expected {NAME}",
            name_of(&cfg.metadata)
        ));
    }
    let hooks = cfg.webhooks.clone().unwrap_or_default();
    let [w] = hooks.as_slice() else {
        p.push(format!("expected one webhook, found {}", hooks.len()));
        return p;
    };
    if w.name != WEBHOOK_NAME {
        p.push(format!(
            "webhook is named {}, expected {WEBHOOK_NAME}",
            w.name
        ));
    }
    // clientConfig -> Service -> container port -> --listen.
    match &w.client_config.service {
        Some(s) => {
            if s.name != name_of(&svc.metadata) || s.namespace != ns_of(&svc.metadata) {
                p.push(format!(
                    "clientConfig.service {}/{} is not the webhook Service",
                    s.namespace, s.name
                ));
            }
            if s.path.as_deref() != Some("/mutate") {
                p.push(format!(
                    "clientConfig.service.path is {:?}, expected /mutate",
                    s.path
                ));
            }
            let port = s.port.unwrap_or(443);
            let sp = svc
                .spec
                .iter()
                .flat_map(|sp| sp.ports.iter().flatten())
                .find(|sp| sp.port == port);
            let target = sp
                .and_then(|sp| sp.target_port.as_ref())
                .zip(container(d))
                .and_then(|(t, c)| resolve_port(c, t));
            let listen = container(d)
                .and_then(|c| flag(c, "listen"))
                .and_then(listen_port);
            if target.is_none() || target != listen {
                p.push(format!(
                    "clientConfig port {port} does not reach the container's --listen port"
                ));
            }
        }
        None => p.push("clientConfig must name the Service (not a url)".into()),
    }
    if w.client_config.url.is_some() {
        p.push("clientConfig.url must not be set".into());
    }
    let rules = w.rules.clone().unwrap_or_default();
    let [rule] = rules.as_slice() else {
        p.push(format!("expected one rule, found {}", rules.len()));
        return p;
    };
    let strs = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    if strs(&rule.operations) != ["CREATE", "UPDATE"]
        || strs(&rule.api_groups) != [""]
        || strs(&rule.api_versions) != ["v1"]
        || strs(&rule.resources) != ["services"]
        || rule.scope.as_deref() != Some("*")
    {
        p.push(format!(
            "rule should be CREATE+UPDATE on core/v1 services, scope *: {rule:?}"
        ));
    }
    match w.match_conditions.as_deref() {
        Some([m]) if m.expression == "object.spec.type == 'LoadBalancer'" => {}
        other => p.push(format!(
            "matchConditions should be exactly object.spec.type == 'LoadBalancer': {other:?}"
        )),
    }
    if w.failure_policy.as_deref() != Some("Ignore") {
        p.push("failurePolicy should be Ignore".into());
    }
    if w.side_effects != "NoneOnDryRun" {
        p.push("sideEffects should be NoneOnDryRun".into());
    }
    if !w.timeout_seconds.is_some_and(|t| (1..=5).contains(&t)) {
        p.push("timeoutSeconds should be set, at most 5".into());
    }
    if w.admission_review_versions != ["v1"] {
        p.push("admissionReviewVersions should be [v1]".into());
    }
    if w.reinvocation_policy.as_deref() != Some("Never") {
        p.push("reinvocationPolicy should be Never".into());
    }
    let empty = |s: &Option<LabelSelector>| {
        s.as_ref().is_none_or(|s| {
            s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
        })
    };
    if !empty(&w.namespace_selector) || !empty(&w.object_selector) {
        p.push("no namespaceSelector/objectSelector: every namespace".into());
    }
    if w.client_config.ca_bundle.is_some() {
        p.push(
            "caBundle is filled in at run time (cainjector or the binary), not in the manifest"
                .into(),
        );
    }
    p
}

/// Bindings name our ServiceAccount and roles that exist; every role is bound.
fn check_rbac_refs(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let Some(sa) = only("ServiceAccount", r.service_accounts(), &mut p) else {
        return p;
    };
    let cluster_roles: BTreeSet<&str> = r
        .cluster_roles()
        .iter()
        .map(|c| name_of(&c.metadata))
        .collect();
    let roles: BTreeSet<(&str, &str)> = r
        .roles()
        .iter()
        .map(|c| (ns_of(&c.metadata), name_of(&c.metadata)))
        .collect();
    let mut bound_cluster = BTreeSet::new();
    let mut bound_roles = BTreeSet::new();
    let mut bindings: Vec<(
        &str,
        &str,
        &k8s_openapi::api::rbac::v1::RoleRef,
        Vec<k8s_openapi::api::rbac::v1::Subject>,
    )> = Vec::new();
    for b in r.cluster_role_bindings() {
        bindings.push((
            "ClusterRoleBinding",
            "",
            &b.role_ref,
            b.subjects.clone().unwrap_or_default(),
        ));
    }
    for b in r.role_bindings() {
        bindings.push((
            "RoleBinding",
            ns_of(&b.metadata),
            &b.role_ref,
            b.subjects.clone().unwrap_or_default(),
        ));
    }
    for (kind, ns, role_ref, subjects) in bindings {
        let who = format!("{kind} {ns}/{}", role_ref.name);
        let ours = subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == name_of(&sa.metadata)
            && subjects[0].namespace.as_deref() == Some(ns_of(&sa.metadata));
        if !ours {
            p.push(format!(
                "{who}: subjects should be exactly our ServiceAccount, got {subjects:?}"
            ));
        }
        if role_ref.api_group != "rbac.authorization.k8s.io" {
            p.push(format!("{who}: roleRef.apiGroup {}", role_ref.api_group));
        }
        match role_ref.kind.as_str() {
            "ClusterRole" if cluster_roles.contains(role_ref.name.as_str()) => {
                bound_cluster.insert(role_ref.name.as_str());
            }
            "Role" if kind == "RoleBinding" && roles.contains(&(ns, role_ref.name.as_str())) => {
                bound_roles.insert((ns, role_ref.name.as_str()));
            }
            _ => p.push(format!(
                "{who}: refers to a {} that is not installed",
                role_ref.kind
            )),
        }
    }
    for c in cluster_roles.difference(&bound_cluster) {
        p.push(format!("ClusterRole {c} is not bound"));
    }
    for (ns, n) in roles.difference(&bound_roles) {
        p.push(format!("Role {ns}/{n} is not bound"));
    }
    p
}

/// One (group, resource, verb) granted to our ServiceAccount.
#[derive(Debug, Clone)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    /// `None`: every namespace (and cluster-scoped resources).
    namespace: Option<String>,
    /// `None`: any object.
    name: Option<String>,
    from: String,
}

fn grants(r: &Route) -> (Vec<Grant>, Vec<String>) {
    let mut out = Vec::new();
    let mut p = Vec::new();
    let sa_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == NAME
                && s.namespace.as_deref() == Some(NAMESPACE)
        })
    };
    let cluster_rules = |name: &str| -> Vec<PolicyRule> {
        r.cluster_roles()
            .iter()
            .filter(|c| name_of(&c.metadata) == name)
            .flat_map(|c| c.rules.clone().unwrap_or_default())
            .collect()
    };
    let mut bound: Vec<(Option<String>, String, Vec<PolicyRule>)> = Vec::new();
    for b in r
        .cluster_role_bindings()
        .into_iter()
        .filter(|b| sa_subject(&b.subjects))
    {
        bound.push((
            None,
            format!("ClusterRole {}", b.role_ref.name),
            cluster_rules(&b.role_ref.name),
        ));
    }
    for b in r
        .role_bindings()
        .into_iter()
        .filter(|b| sa_subject(&b.subjects))
    {
        let ns = ns_of(&b.metadata).to_string();
        let rules = if b.role_ref.kind == "ClusterRole" {
            cluster_rules(&b.role_ref.name)
        } else {
            r.roles()
                .iter()
                .filter(|x| ns_of(&x.metadata) == ns && name_of(&x.metadata) == b.role_ref.name)
                .flat_map(|x| x.rules.clone().unwrap_or_default())
                .collect()
        };
        bound.push((
            Some(ns.clone()),
            format!("{} {ns}/{}", b.role_ref.kind, b.role_ref.name),
            rules,
        ));
    }
    for (namespace, from, rules) in bound {
        for rule in rules {
            if rule
                .non_resource_urls
                .as_ref()
                .is_some_and(|u| !u.is_empty())
            {
                p.push(format!("{from}: nonResourceURLs are never needed"));
            }
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            let names: Vec<Option<String>> = match rule.resource_names.clone() {
                Some(n) if !n.is_empty() => n.into_iter().map(Some).collect(),
                _ => vec![None],
            };
            for field in [&groups, &resources, &rule.verbs] {
                if field.iter().any(|x| x.contains('*')) {
                    p.push(format!("{from}: wildcard in {field:?}"));
                }
            }
            for g in &groups {
                for res in &resources {
                    for v in &rule.verbs {
                        for n in &names {
                            out.push(Grant {
                                group: g.clone(),
                                resource: res.clone(),
                                verb: v.clone(),
                                namespace: namespace.clone(),
                                name: n.clone(),
                                from: from.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    (out, p)
}

/// Would `g` let `c` through?
fn allows(g: &Grant, c: &ApiCall) -> bool {
    let scope = match (&g.namespace, c.at) {
        (None, _) => true,
        (Some(ns), At::In(want)) => ns == want,
        (Some(_), At::EveryNamespace | At::ClusterScoped) => false,
    };
    let name = match (&g.name, c.name) {
        (None, _) => true,
        (Some(n), Some(want)) => n == want,
        (Some(_), None) => false,
    };
    g.group == c.group && g.resource == c.resource && g.verb == c.verb && scope && name
}

/// Is `g` no broader than what some call needs?
fn justified(g: &Grant, calls: &[ApiCall]) -> bool {
    calls.iter().any(|c| {
        let scope = match (&g.namespace, c.at) {
            (None, At::EveryNamespace | At::ClusterScoped) => true,
            (None, At::In(_)) => false,
            (Some(ns), At::In(want)) => ns == want,
            (Some(_), At::EveryNamespace) => true,
            (Some(_), At::ClusterScoped) => false,
        };
        let name = match (&g.name, c.name) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(want)) => n == want,
            (Some(_), None) => true,
        };
        g.group == c.group && g.resource == c.resource && g.verb == c.verb && scope && name
    })
}

fn check_rbac_calls(r: &Route, calls: &[ApiCall]) -> Vec<String> {
    let (grants, mut p) = grants(r);
    for c in calls {
        if !grants.iter().any(|g| allows(g, c)) {
            p.push(format!(
                "not allowed: {} {}/{} at {:?} name {:?}",
                c.verb, c.group, c.resource, c.at, c.name
            ));
        }
    }
    for g in &grants {
        if !justified(g, calls) {
            let scope = g.namespace.as_deref().unwrap_or("every namespace");
            p.push(format!(
                "{}: grants {} {}/{} in {scope} on {} beyond what the code calls",
                g.from,
                g.verb,
                g.group,
                g.resource,
                g.name.as_deref().unwrap_or("any object")
            ));
        }
    }
    p
}

fn check_cert_manager(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(d), Some(cfg), Some(svc)) = (
        only("Deployment", r.deployments(), &mut p),
        only("MutatingWebhookConfiguration", r.webhooks(), &mut p),
        only("Service", r.services(), &mut p),
    ) else {
        return p;
    };
    let (Some(c), Some(pod)) = (container(d), pod_spec(d)) else {
        p.push("Deployment should have one container".into());
        return p;
    };
    let issuers = r.issuers();
    let certs = r.certificates();
    let issuer = |name: &str, ns: &str| {
        issuers
            .iter()
            .copied()
            .find(|i| name_of(&i.metadata) == name && ns_of(&i.metadata) == ns)
    };
    let is_ca = |cert: &Certificate| cert.spec.is_ca == Some(true);
    let serving: Vec<&Certificate> = certs.iter().copied().filter(|c| !is_ca(c)).collect();
    let Some(serving) = only("serving Certificate", serving, &mut p) else {
        return p;
    };
    let ns = ns_of(&svc.metadata);
    let svc_name = name_of(&svc.metadata);
    let dns = serving.spec.dns_names.clone().unwrap_or_default();
    for want in [
        format!("{svc_name}.{ns}.svc"),
        format!("{svc_name}.{ns}.svc.cluster.local"),
    ] {
        if !dns.contains(&want) {
            p.push(format!("serving Certificate dnsNames lack {want}"));
        }
    }
    if ns_of(&serving.metadata) != ns_of(&d.metadata) {
        p.push(
            "serving Certificate must be in the Deployment's namespace (its Secret is mounted)"
                .into(),
        );
    }
    if serving.spec.secret_name != TLS_SECRET {
        p.push(format!(
            "serving Certificate secretName {} is not {TLS_SECRET}",
            serving.spec.secret_name
        ));
    }
    if !serving
        .spec
        .usages
        .iter()
        .flatten()
        .any(|u| *u == KeyUsage::ServerAuth)
    {
        p.push("serving Certificate needs usage server auth".into());
    }
    if serving.spec.private_key.as_ref().and_then(|k| k.encoding) != Some(KeyEncoding::Pkcs8) {
        p.push("serving key should be PKCS8 (what the binary's PEM loader reads)".into());
    }
    for cert in &certs {
        if let (Some(dur), Some(before)) = (&cert.spec.duration, &cert.spec.renew_before)
            && before.seconds >= dur.seconds
        {
            p.push(format!(
                "Certificate {}: renewBefore must be shorter than duration",
                name_of(&cert.metadata)
            ));
        }
    }
    // serving <- CA Issuer <- CA Certificate <- selfSigned Issuer.
    let issued_by = |cert: &Certificate| {
        let r = &cert.spec.issuer_ref;
        if r.kind.as_deref().unwrap_or("Issuer") != "Issuer"
            || r.group.as_deref().unwrap_or("cert-manager.io") != "cert-manager.io"
        {
            return None;
        }
        issuer(&r.name, ns_of(&cert.metadata))
    };
    let chain_ok = issued_by(serving)
        .and_then(|ca_issuer| ca_issuer.spec.ca.as_ref())
        .and_then(|ca| {
            certs.iter().copied().find(|c| {
                is_ca(c)
                    && c.spec.secret_name == ca.secret_name
                    && ns_of(&c.metadata) == ns_of(&serving.metadata)
            })
        })
        .and_then(issued_by)
        .is_some_and(|root| root.spec.self_signed.is_some());
    if !chain_ok {
        p.push("serving Certificate must be issued by a CA Issuer whose CA Certificate comes from a selfSigned Issuer, all in one namespace".into());
    }
    // The Deployment serves that Secret.
    let volume = pod.volumes.iter().flatten().find(|v| {
        v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
            == Some(serving.spec.secret_name.as_str())
    });
    let mount = volume.and_then(|v| c.volume_mounts.iter().flatten().find(|m| m.name == v.name));
    match (volume, mount) {
        (Some(v), Some(m)) if m.mount_path == TLS_DIR && m.read_only == Some(true) => {
            if v.secret
                .as_ref()
                .and_then(|s| s.items.as_ref())
                .is_some_and(|i| !i.is_empty())
            {
                p.push(
                    "the TLS Secret volume must not remap keys (tls.crt, tls.key are expected)"
                        .into(),
                );
            }
        }
        _ => p.push(format!(
            "Secret {} must be mounted read-only at {TLS_DIR}",
            serving.spec.secret_name
        )),
    }
    if flag(c, "tls-cert-file") != Some(&format!("{TLS_DIR}/tls.crt"))
        || flag(c, "tls-key-file") != Some(&format!("{TLS_DIR}/tls.key"))
    {
        p.push(
            "--tls-cert-file/--tls-key-file must point at tls.crt/tls.key in the mounted Secret"
                .into(),
        );
    }
    if args(c).contains(&"--self-signed") {
        p.push("--self-signed must not be set with cert-manager".into());
    }
    let inject = cfg
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("cert-manager.io/inject-ca-from"));
    let want = format!(
        "{}/{}",
        ns_of(&serving.metadata),
        name_of(&serving.metadata)
    );
    if inject != Some(&want) {
        p.push(format!(
            "cert-manager.io/inject-ca-from should be {want}, is {inject:?}"
        ));
    }
    p
}

fn check_self_signed(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(d), Some(cfg), Some(svc)) = (
        only("Deployment", r.deployments(), &mut p),
        only("MutatingWebhookConfiguration", r.webhooks(), &mut p),
        only("Service", r.services(), &mut p),
    ) else {
        return p;
    };
    let Some(c) = container(d) else {
        p.push("Deployment should have one container".into());
        return p;
    };
    if !args(c).contains(&"--self-signed") {
        p.push("--self-signed missing".into());
    }
    if flag(c, "cert-secret") != Some(SELF_SIGNED_SECRET) {
        p.push(format!(
            "--cert-secret should be {SELF_SIGNED_SECRET} (the Secret the RBAC allows)"
        ));
    }
    if flag(c, "webhook-configuration") != Some(name_of(&cfg.metadata)) {
        p.push("--webhook-configuration is not the installed MutatingWebhookConfiguration".into());
    }
    if flag(c, "service-name") != Some(name_of(&svc.metadata))
        || ns_of(&svc.metadata) != ns_of(&d.metadata)
    {
        p.push("--service-name is not the webhook Service in the pod's namespace".into());
    }
    if flag(c, "tls-cert-file").is_some() || flag(c, "tls-key-file").is_some() {
        p.push("--tls-cert-file/--tls-key-file must not be set with --self-signed".into());
    }
    if pod_spec(d).is_some_and(|s| s.volumes.iter().flatten().any(|v| v.secret.is_some())) {
        p.push("no Secret volume: the binary reads its Secret through the API".into());
    }
    if !r.issuers().is_empty() || !r.certificates().is_empty() {
        p.push("no cert-manager objects in the self-signed route".into());
    }
    // Pre-created empty, so RBAC needs no `create` (which it cannot limit by name).
    match only("Secret", r.secrets(), &mut p) {
        Some(sec)
            if name_of(&sec.metadata) == SELF_SIGNED_SECRET
                && ns_of(&sec.metadata) == ns_of(&d.metadata)
                && sec.type_.as_deref() == Some("Opaque")
                && sec.data.as_ref().is_none_or(|d| d.is_empty()) => {}
        Some(_) => p.push(format!(
            "the Secret should be {SELF_SIGNED_SECRET}, Opaque, empty, in the pod's namespace"
        )),
        None => {}
    }
    if cfg
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("cert-manager.io/inject-ca-from"))
    {
        p.push("no inject-ca-from annotation in the self-signed route".into());
    }
    p
}

/// The Lease exists from the start (no RBAC `create`), without a holder, where the binary
/// looks for it (`--lease-name`, the pod's namespace).
fn check_lease(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(d), Some(lease)) = (
        only("Deployment", r.deployments(), &mut p),
        only("Lease", r.leases(), &mut p),
    ) else {
        return p;
    };
    let wanted = container(d)
        .and_then(|c| flag(c, "lease-name"))
        .unwrap_or(NAME);
    if name_of(&lease.metadata) != wanted || ns_of(&lease.metadata) != ns_of(&d.metadata) {
        p.push(format!(
            "the Lease should be {wanted} in the pod's namespace {}",
            ns_of(&d.metadata)
        ));
    }
    if lease
        .spec
        .as_ref()
        .is_some_and(|s| s.holder_identity.is_some())
    {
        p.push("the shipped Lease must have no holder".into());
    }
    p
}

/// The one CRD, the VIPPool, exactly as the type generates it (its RBAC is in the API table).
fn check_crd(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(crd) = only("CustomResourceDefinition", r.crds(), &mut p) {
        use kube::CustomResourceExt;
        let want = kube_vip_webhook::pools::VIPPool::crd();
        if serde_json::to_value(crd).ok() != serde_json::to_value(&want).ok() {
            p.push(
                "the VIPPool CRD differs from the type (UPDATE_CRD=1 cargo test --test crd)".into(),
            );
        }
    }
    p
}

fn check_route(r: &Route) -> Vec<String> {
    let mut p = check_workload(r);
    p.extend(check_crd(r));
    p.extend(check_lease(r));
    p.extend(check_webhook(r));
    p.extend(check_rbac_refs(r));
    p.extend(check_rbac_calls(r, &calls_for(r.name)));
    p.extend(match r.name {
        "cert-manager" => check_cert_manager(r),
        _ => check_self_signed(r),
    });
    p
}

/// The monitoring objects next to an install route (they point at its Deployment).
fn load_monitoring() -> Route {
    let rendered = render(&repo().join(MONITORING)).unwrap_or_else(|e| panic!("{e}"));
    let mut docs = Route::load("cert-manager").docs;
    docs.extend(rendered.docs);
    Route::from_docs("monitoring", docs).unwrap_or_else(|e| panic!("{e}"))
}

fn check_monitoring(r: &Route) -> Vec<String> {
    let mut p = Vec::new();
    let (Some(d), Some(sm), Some(_rules)) = (
        only("Deployment", r.deployments(), &mut p),
        only("ServiceMonitor", r.service_monitors(), &mut p),
        only("PrometheusRule", r.prometheus_rules(), &mut p),
    ) else {
        return p;
    };
    let Some(c) = container(d) else {
        p.push("Deployment should have exactly one container".into());
        return p;
    };
    let admin = flag(c, "admin-listen").and_then(listen_port);
    let pods = pod_labels(d);
    let services = r.services();
    let Some(metrics) = services
        .iter()
        .find(|s| name_of(&s.metadata) == METRICS_SERVICE)
    else {
        p.push(format!("no Service {METRICS_SERVICE}"));
        return p;
    };
    if ns_of(&metrics.metadata) != ns_of(&d.metadata) {
        p.push(format!(
            "{METRICS_SERVICE} is not in the Deployment's namespace"
        ));
    }
    let spec = metrics.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() || !selector.iter().all(|(k, v)| pods.get(k) == Some(v)) {
        p.push(format!(
            "{METRICS_SERVICE} selector does not match the Deployment's pod labels"
        ));
    }
    let ports = spec.ports.clone().unwrap_or_default();
    for port in &ports {
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        if resolve_port(c, &target).is_none() || resolve_port(c, &target) != admin {
            p.push(format!(
                "{METRICS_SERVICE} port {} targets {target:?}, not the admin port (--admin-listen)",
                port.name.clone().unwrap_or_default()
            ));
        }
    }
    // The ServiceMonitor scrapes the metrics Service and nothing else (never the webhook's).
    let labels_of = |s: &Service| s.metadata.labels.clone().unwrap_or_default();
    for s in &services {
        let selected = selects(Some(&sm.spec.selector), &labels_of(s));
        if name_of(&s.metadata) == METRICS_SERVICE && !selected {
            p.push(format!(
                "the ServiceMonitor does not select {METRICS_SERVICE}"
            ));
        }
        if name_of(&s.metadata) != METRICS_SERVICE && selected {
            p.push(format!(
                "the ServiceMonitor also selects Service {}",
                name_of(&s.metadata)
            ));
        }
    }
    let namespaces = sm.spec.namespace_selector.as_ref().map(|n| &n.match_names);
    if !namespaces.is_some_and(|n| n.iter().any(|ns| ns == ns_of(&metrics.metadata))) {
        p.push("the ServiceMonitor's namespaceSelector misses the metrics Service".into());
    }
    for e in &sm.spec.endpoints {
        if !ports
            .iter()
            .any(|port| port.name.as_deref() == Some(&e.port))
        {
            p.push(format!(
                "the ServiceMonitor scrapes port {}, which {METRICS_SERVICE} does not have",
                e.port
            ));
        }
        if e.path.as_deref().unwrap_or("/metrics") != "/metrics" {
            p.push("the ServiceMonitor path should be /metrics".into());
        }
    }
    // The dashboard ConfigMap: found by Grafana's sidecar label, and valid JSON.
    let dashboards: Vec<&ConfigMap> = r
        .config_maps()
        .into_iter()
        .filter(|cm| name_of(&cm.metadata) == "kube-vip-webhook-dashboard")
        .collect();
    if let Some(cm) = only("dashboard ConfigMap", dashboards, &mut p) {
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        if labels.get("grafana_dashboard").map(String::as_str) != Some("1") {
            p.push("the dashboard ConfigMap lacks grafana_dashboard: \"1\"".into());
        }
        for (key, json) in cm.data.iter().flatten() {
            if let Err(e) = serde_json::from_str::<Value>(json) {
                p.push(format!("dashboard {key} is not JSON: {e}"));
            }
        }
    }
    p
}

#[test]
fn monitoring_agrees_with_the_install() {
    assert_no_problems("monitoring", &check_monitoring(&load_monitoring()));
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_yaml_document_is_a_known_kind_and_round_trips() {
    let mut problems = Vec::new();
    let mut count = 0;
    for f in all_yaml_files().iter().filter(|f| !is_kustomization(f)) {
        match load_docs(f) {
            Ok(docs) => {
                for d in docs {
                    count += 1;
                    if let Err(e) = typed(&d) {
                        problems.push(format!("{}: {e}", d.origin));
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    assert_no_problems("manifest documents", &problems);
    assert!(
        count >= 20,
        "only {count} documents found: is the walk broken?"
    );
}

#[test]
fn kustomizations_render_and_cover_every_manifest_file() {
    let files = all_yaml_files();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for k in files.iter().filter(|f| is_kustomization(f)) {
        let dir = k.parent().unwrap();
        match render(dir) {
            Ok(r) => {
                for d in &r.docs {
                    if let Err(e) = typed(d) {
                        problems.push(format!("{}: {e}", d.origin));
                    }
                }
                used.extend(r.files);
            }
            Err(e) => problems.push(e),
        }
    }
    // Deliberately outside every kustomization: the pools are the operator's, and the examples
    // are inputs for `plan` and `serve --standalone`.
    let standalone = |f: &Path| {
        let r = rel(f);
        r == "manifest/configmap-example.yaml" || r.starts_with("manifest/examples/")
    };
    for f in files
        .iter()
        .filter(|f| !used.contains(*f) && !standalone(f))
    {
        problems.push(format!("{} is in no kustomization", rel(f)));
    }
    for route in ROUTES {
        assert!(
            repo()
                .join("manifest/overlays")
                .join(route)
                .join("kustomization.yaml")
                .is_file()
        );
    }
    assert_no_problems("kustomizations", &problems);
}

#[test]
fn cert_manager_route_agrees_across_files() {
    assert_no_problems(
        "cert-manager route",
        &check_route(&Route::load("cert-manager")),
    );
}

#[test]
fn self_signed_route_agrees_across_files() {
    assert_no_problems(
        "self-signed route",
        &check_route(&Route::load("self-signed")),
    );
}

#[test]
fn rbac_allows_exactly_the_api_calls_of_each_route() {
    for route in ROUTES {
        let r = Route::load(route);
        assert_no_problems(route, &check_rbac_calls(&r, &calls_for(route)));
    }
    // The cert-manager route must not carry the self-signed route's rights.
    let cm = Route::load("cert-manager");
    let extra = check_rbac_calls(&cm, API_CALLS);
    assert!(
        extra
            .iter()
            .filter(|e| e.starts_with("not allowed"))
            .count()
            == API_CALLS
                .iter()
                .filter(|c| c.route == For::SelfSigned)
                .count(),
        "{extra:?}"
    );
}

#[test]
fn routes_differ_only_in_certificate_wiring() {
    let cm = Route::load("cert-manager");
    let ss = Route::load("self-signed");
    let hooks = |r: &Route| serde_json::to_value(&r.webhooks()[0].webhooks).unwrap();
    assert_eq!(
        hooks(&cm),
        hooks(&ss),
        "the two MutatingWebhookConfigurations declare different webhooks"
    );
    // Everything from manifest/base is identical, except the Deployment the overlays patch.
    let base = render(&repo().join("manifest/base")).unwrap();
    for d in base.docs.iter().filter(|d| d.value["kind"] != "Deployment") {
        for r in [&cm, &ss] {
            let same = r.docs.iter().any(|x| x.value == d.value);
            assert!(same, "{} differs in route {}", d.origin, r.name);
        }
    }
}

#[test]
fn example_configmap_is_the_one_the_deployment_reads_and_parses_cleanly() {
    let path = repo().join("manifest/configmap-example.yaml");
    let docs = load_docs(&path).unwrap();
    let [doc] = docs.as_slice() else {
        panic!("one ConfigMap expected")
    };
    let Obj::ConfigMap(cm) = typed(doc).unwrap() else {
        panic!("not a ConfigMap")
    };
    let route = Route::load("cert-manager");
    let c = container(route.deployments()[0]).unwrap();
    assert_eq!(
        Some(name_of(&cm.metadata)),
        env_value(c, "KUBEVIP_CONFIG_MAP")
    );
    assert_eq!(Some(ns_of(&cm.metadata)), env_value(c, "KUBEVIP_NAMESPACE"));

    let data = cm.data.clone().unwrap_or_default();
    let cfg = kube_vip_webhook::config::Config::from_data(&data);
    assert!(cfg.errors().is_empty(), "{:?}", cfg.errors());
    for ns in ["default", "team-a", "team-b"] {
        assert!(
            cfg.pool_for(ns).is_some_and(|p| !p.is_empty()),
            "no pool for {ns}"
        );
    }
    // The commented-out `  # key: value` lines are documentation an operator will uncomment:
    // each must be a valid entry on its own.
    let text = fs::read_to_string(&path).unwrap();
    let data_section = text.split_once("\ndata:\n").unwrap().1;
    let mut commented = 0;
    for line in data_section.lines() {
        let Some(entry) = line.strip_prefix("  # ") else {
            continue;
        };
        let Some((key, value)) = entry.split_once(": ") else {
            continue;
        };
        if !key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            continue;
        }
        commented += 1;
        let value = value.trim_matches('"');
        let one = BTreeMap::from([(key.to_string(), value.to_string())]);
        let cfg = kube_vip_webhook::config::Config::from_data(&one);
        assert!(
            cfg.errors().is_empty(),
            "commented example {key}: {value}: {:?}",
            cfg.errors()
        );
    }
    assert!(commented >= 6, "only {commented} commented examples found");
}

fn parse_serve_args(route: &str) -> Result<kube_vip_webhook::cli::ServeArgs, String> {
    use clap::Parser;
    use kube_vip_webhook::cli::{Cli, Command};
    let r = Route::load(ROUTES.into_iter().find(|x| *x == route).unwrap());
    let c = container(r.deployments()[0]).unwrap();
    let argv = std::iter::once("kube-vip-webhook").chain(args(c));
    match Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Command::Serve(a) => Ok(*a),
        other => Err(format!("not serve: {other:?}")),
    }
}

#[test]
fn cert_manager_route_args_parse_with_the_real_cli() {
    let a = parse_serve_args("cert-manager").unwrap();
    assert_eq!(a.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(a.admin_listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        a.tls_cert_file,
        Some(PathBuf::from(format!("{TLS_DIR}/tls.crt")))
    );
    assert_eq!(
        a.tls_key_file,
        Some(PathBuf::from(format!("{TLS_DIR}/tls.key")))
    );
    assert!(!a.standalone);
}

#[test]
fn self_signed_route_args_parse_with_the_real_cli() {
    parse_serve_args("self-signed").unwrap();
}

/// Our renderer against the real kustomize, where `kubectl` is installed.
#[test]
fn renderer_matches_kubectl_kustomize_when_available() {
    let dirs = ROUTES
        .iter()
        .map(|r| repo().join("manifest/overlays").join(r))
        .chain([repo().join(MONITORING)]);
    for dir in dirs {
        let route = rel(&dir);
        let out = match std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("kubectl not available ({e}); skipping the comparison with kustomize");
                return;
            }
        };
        assert!(
            out.status.success(),
            "kubectl kustomize {route}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let theirs: BTreeMap<String, Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|de| Value::deserialize(de).unwrap())
            .map(|v| (identity(&v), v))
            .collect();
        let ours: BTreeMap<String, Value> = render(&dir)
            .unwrap()
            .docs
            .into_iter()
            .map(|d| (identity(&d.value), d.value))
            .collect();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{route}: different objects"
        );
        for (id, v) in &ours {
            assert_eq!(
                first_difference(v, &theirs[id], ""),
                None,
                "{route}: {id} renders differently"
            );
        }
    }
}

#[test]
fn dockerfile_agrees_with_the_deployment() {
    let text = fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    fn directive<'a>(lines: &[&'a str], name: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .collect()
    }
    let r = Route::load("cert-manager");
    let d = r.deployments()[0];
    let c = container(d).unwrap();

    assert_eq!(
        directive(&lines, "USER ").last().copied(),
        Some(format!("{RUN_AS}:{RUN_AS}").as_str()),
        "image user"
    );
    let exposed: BTreeSet<i32> = directive(&lines, "EXPOSE ")
        .into_iter()
        .flat_map(|l| l.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    let ports: BTreeSet<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(exposed, ports, "EXPOSE vs containerPorts");
    assert_eq!(
        directive(&lines, "ENTRYPOINT ").last().copied(),
        Some(r#"["/usr/local/bin/kube-vip-webhook"]"#)
    );
    assert!(text.contains("cargo build --release --locked --bin kube-vip-webhook"));
    assert!(
        text.contains("gcr.io/distroless/cc-debian12:nonroot"),
        "runtime image"
    );
    assert_eq!(directive(&lines, "FROM ").len(), 2, "multi-stage build");
    let ignore = fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).collect();
    for must in ["target", ".git"] {
        assert!(ignored.contains(must), ".dockerignore lacks {must}");
    }
    for needed in ["src", "Cargo.toml", "Cargo.lock", "tests", "benches"] {
        assert!(
            !ignored.contains(needed),
            ".dockerignore must keep {needed} (cargo reads it)"
        );
    }
}

/// The checks above would be worthless if they could not fail: break the real manifests on
/// purpose, one way at a time, and expect the matching complaint.
#[test]
fn checks_catch_broken_manifests() {
    let cm = Route::load("cert-manager");
    let ss = Route::load("self-signed");
    assert_no_problems("baseline", &check_route(&cm));

    let expect = |what: &str, route: &Route, problems: Vec<String>, needle: &str| {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{what}: expected a problem containing {needle:?} in route {}, got {problems:?}",
            route.name
        );
    };
    let broken = |r: &Route, kind: &str, name: &str, edit: fn(&mut Value)| {
        r.mutated(kind, name, edit).unwrap()
    };

    // The admin port on the webhook Service; a NetworkPolicy opening it, or every port.
    let r = broken(&cm, "Service", NAME, |v| {
        v["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "admin", "port": 8080, "targetPort": "admin"}))
    });
    expect(
        "admin on Service",
        &r,
        check_route(&r),
        "exposes the admin port",
    );
    let r = broken(&cm, "NetworkPolicy", NAME, |v| {
        v["spec"]["ingress"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"port": 8080}))
    });
    expect(
        "admin in policy",
        &r,
        check_route(&r),
        "only the https port",
    );
    let r = broken(&cm, "NetworkPolicy", NAME, |v| {
        v["spec"]["ingress"][0]
            .as_object_mut()
            .unwrap()
            .remove("ports");
    });
    expect("all ports", &r, check_route(&r), "every port");

    // RBAC: an extra verb, a lost resourceNames restriction, a missing verb, a wildcard.
    let r = broken(&cm, "ClusterRole", NAME, |v| {
        v["rules"][0]["verbs"]
            .as_array_mut()
            .unwrap()
            .push("delete".into())
    });
    expect("extra verb", &r, check_route(&r), "grants delete /services");
    let r = broken(&cm, "Role", NAME, |v| {
        for rule in v["rules"].as_array_mut().unwrap() {
            rule.as_object_mut().unwrap().remove("resourceNames");
        }
    });
    expect(
        "no resourceNames",
        &r,
        check_route(&r),
        "grants list /configmaps in kube-system on any object",
    );
    let r = broken(&cm, "Role", NAME, |v| {
        v["rules"].as_array_mut().unwrap().pop();
    });
    expect(
        "no lease rule",
        &r,
        check_route(&r),
        "not allowed: watch coordination.k8s.io/leases",
    );
    let r = broken(&cm, "Lease", NAME, |v| {
        v["spec"] = serde_json::json!({"holderIdentity": "someone"});
    });
    expect(
        "lease with a holder",
        &r,
        check_route(&r),
        "must have no holder",
    );
    let r = broken(&cm, "ClusterRole", NAME, |v| {
        v["rules"][1]["apiGroups"] = serde_json::json!([""])
    });
    expect(
        "core events instead of events.k8s.io",
        &r,
        check_route(&r),
        "not allowed: create events.k8s.io/events",
    );
    let r = broken(&ss, "ClusterRole", "kube-vip-webhook-selfsigned", |v| {
        v["rules"][0]["resources"] = serde_json::json!(["*"])
    });
    expect("wildcard", &r, check_route(&r), "wildcard");
    let r = broken(&cm, "ClusterRoleBinding", NAME, |v| {
        v["subjects"][0]["name"] = "default".into()
    });
    expect(
        "wrong subject",
        &r,
        check_route(&r),
        "subjects should be exactly our ServiceAccount",
    );

    // Ports and names across files.
    let r = broken(&cm, "Deployment", NAME, |v| {
        v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "tls".into()
    });
    expect(
        "renamed container port",
        &r,
        check_route(&r),
        "which is not a container port",
    );
    let r = broken(&cm, "Deployment", NAME, |v| {
        v["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] =
            "https".into()
    });
    expect(
        "probe on the wrong port",
        &r,
        check_route(&r),
        "readinessProbe",
    );
    let r = broken(&cm, "Service", NAME, |v| {
        v["spec"]["selector"]["app.kubernetes.io/name"] = "other".into()
    });
    expect("selector", &r, check_route(&r), "Service selector");
    let r = broken(&cm, "MutatingWebhookConfiguration", NAME, |v| {
        v["webhooks"][0]["clientConfig"]["service"]["path"] = "/validate".into()
    });
    expect("webhook path", &r, check_route(&r), "/mutate");
    let r = broken(&cm, "MutatingWebhookConfiguration", NAME, |v| {
        v["webhooks"][0]["rules"][0]["resources"] = serde_json::json!(["services/status"])
    });
    expect("status subresource", &r, check_route(&r), "rule should be");
    let r = broken(&cm, "Deployment", NAME, |v| {
        v["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
            false.into()
    });
    expect("writable root", &r, check_route(&r), "read-only");

    // Certificates.
    let r = broken(&cm, "Certificate", NAME, |v| {
        v["spec"]["dnsNames"] = serde_json::json!(["kube-vip-webhook.default.svc"])
    });
    expect(
        "dnsNames",
        &r,
        check_route(&r),
        "dnsNames lack kube-vip-webhook.kube-system.svc",
    );
    let r = broken(&cm, "Certificate", NAME, |v| {
        v["spec"]["secretName"] = "other".into()
    });
    expect("secretName", &r, check_route(&r), "must be mounted");
    let r = broken(&cm, "MutatingWebhookConfiguration", NAME, |v| {
        v["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] =
            "kube-system/kube-vip-webhook-ca".into()
    });
    expect(
        "inject-ca-from",
        &r,
        check_route(&r),
        "inject-ca-from should be kube-system/kube-vip-webhook",
    );
    let r = broken(&ss, "Deployment", NAME, |v| {
        v["spec"]["template"]["spec"]["containers"][0]["args"][4] = "--cert-secret=other".into()
    });
    expect("cert-secret", &r, check_route(&r), "--cert-secret");

    // Monitoring.
    let mon = load_monitoring();
    assert_no_problems("monitoring baseline", &check_monitoring(&mon));
    let r = broken(&mon, "Service", METRICS_SERVICE, |v| {
        v["spec"]["ports"][0]["targetPort"] = "https".into()
    });
    expect(
        "metrics port",
        &r,
        check_monitoring(&r),
        "not the admin port",
    );
    let r = broken(&mon, "ServiceMonitor", NAME, |v| {
        v["spec"]["selector"]["matchLabels"]
            .as_object_mut()
            .unwrap()
            .remove("app.kubernetes.io/component");
    });
    expect(
        "monitor selects the webhook Service",
        &r,
        check_monitoring(&r),
        "also selects Service kube-vip-webhook",
    );
    let r = broken(&mon, "ServiceMonitor", NAME, |v| {
        v["spec"]["endpoints"][0]["port"] = "metrics".into()
    });
    expect(
        "monitor port",
        &r,
        check_monitoring(&r),
        "scrapes port metrics",
    );
    let r = broken(&mon, "Service", METRICS_SERVICE, |v| {
        v["spec"]["selector"]["app.kubernetes.io/name"] = "other".into()
    });
    expect(
        "metrics selector",
        &r,
        check_monitoring(&r),
        "selector does not match",
    );

    // The typed round trip refuses what k8s-openapi would silently drop.
    let mut doc = cm
        .docs
        .iter()
        .find(|d| d.value["kind"] == "Deployment")
        .unwrap()
        .clone();
    let c0 = &mut doc.value["spec"]["template"]["spec"]["containers"][0];
    let probe = c0
        .as_object_mut()
        .unwrap()
        .remove("readinessProbe")
        .unwrap();
    c0["readinesProbe"] = probe;
    let err = typed(&doc).unwrap_err();
    assert!(err.contains("readinesProbe"), "{err}");
    let mut doc = cm
        .docs
        .iter()
        .find(|d| d.value["kind"] == "Certificate" && d.value["metadata"]["name"] == NAME)
        .unwrap()
        .clone();
    doc.value["spec"]["dnsName"] = serde_json::json!(["x"]);
    assert!(typed(&doc).unwrap_err().contains("dnsName"));
    doc.value["spec"].as_object_mut().unwrap().remove("dnsName");
    doc.value["spec"]["duration"] = "90d".into();
    assert!(typed(&doc).is_err(), "90d is not a Go duration");
}
