//! Realistic CREATE AdmissionReviews of LoadBalancer Services, as the apiserver sends them after
//! `kubectl apply`: labels, the last-applied annotation, managedFields, two ports, a selector.

use std::fmt::Write as _;

/// Which Services the requests create.
#[derive(Clone, Copy, Debug)]
pub enum Mix {
    /// `ipFamilies` unset (the cluster's primary family, IPv4), 80/TCP and 443/TCP.
    V4,
    /// SingleStack IPv6.
    V6,
    /// A quarter each: unset, SingleStack IPv6, RequireDualStack, PreferDualStack (IPv6 first).
    DualStack,
    /// Three quarters on 80/TCP and 443/TCP (they clash with every existing holder), one quarter
    /// on a single UDP port out of 2000 (they share the first addresses).
    Sharing,
}

const HEAD: &str =
    r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":""#;
/// Where the 36-character request uid starts in every body.
pub const UID_AT: usize = HEAD.len();

/// The review for request number `n` of a run tagged `tag` (names and uids are unique per run).
pub fn body(mix: Mix, dry_run: bool, tag: u32, n: u64) -> String {
    let ns = format!("team-{:02}", n % 40);
    let name = format!("web-{tag:04x}-{n:07}");
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        tag,
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xffff_ffff_ffff
    );
    let variant = n % 4;
    let families = match (mix, variant) {
        (Mix::V6, _) | (Mix::DualStack, 1) => {
            r#""ipFamilies":["IPv6"],"ipFamilyPolicy":"SingleStack","#
        }
        (Mix::DualStack, 2) => {
            r#""ipFamilies":["IPv4","IPv6"],"ipFamilyPolicy":"RequireDualStack","#
        }
        (Mix::DualStack, 3) => {
            r#""ipFamilies":["IPv6","IPv4"],"ipFamilyPolicy":"PreferDualStack","#
        }
        _ => "",
    };
    let ports = match (mix, variant) {
        (Mix::Sharing, 0) => format!(
            r#"[{{"name":"syslog","protocol":"UDP","port":{},"targetPort":5514}}]"#,
            5000 + (n / 4) % 2000
        ),
        _ => r#"[{"name":"http","protocol":"TCP","port":80,"targetPort":8080},{"name":"https","protocol":"TCP","port":443,"targetPort":8443}]"#.to_string(),
    };
    let last_applied = format!(
        r#"{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"annotations\":{{}},\"labels\":{{\"app.kubernetes.io/instance\":\"{name}\",\"app.kubernetes.io/name\":\"web\",\"app.kubernetes.io/part-of\":\"shop\"}},\"name\":\"{name}\",\"namespace\":\"{ns}\"}},\"spec\":{{\"ports\":{ports_escaped},\"selector\":{{\"app.kubernetes.io/instance\":\"{name}\"}},\"type\":\"LoadBalancer\"}}}}\n"#,
        ports_escaped = ports.replace('"', "\\\"")
    );
    let mut s = String::with_capacity(4096);
    s.push_str(HEAD);
    s.push_str(&uid);
    let _ = write!(
        s,
        r#"","kind":{{"group":"","version":"v1","kind":"Service"}},"resource":{{"group":"","version":"v1","resource":"services"}},"requestKind":{{"group":"","version":"v1","kind":"Service"}},"requestResource":{{"group":"","version":"v1","resource":"services"}},"name":"{name}","namespace":"{ns}","operation":"CREATE","userInfo":{{"username":"system:serviceaccount:argocd:argocd-application-controller","uid":"5b0a5b8e-2d7c-4a6e-9a53-0f6d8a1f4c21","groups":["system:serviceaccounts","system:serviceaccounts:argocd","system:authenticated"],"extra":{{"authentication.kubernetes.io/pod-name":["argocd-application-controller-0"]}}}},"object":{{"kind":"Service","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"{ns}","creationTimestamp":null,"labels":{{"app.kubernetes.io/instance":"{name}","app.kubernetes.io/name":"web","app.kubernetes.io/part-of":"shop"}},"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{last_applied}"}},"managedFields":[{{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"2025-05-01T10:00:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:annotations":{{".":{{}},"f:kubectl.kubernetes.io/last-applied-configuration":{{}}}},"f:labels":{{".":{{}},"f:app.kubernetes.io/instance":{{}},"f:app.kubernetes.io/name":{{}},"f:app.kubernetes.io/part-of":{{}}}}}},"f:spec":{{"f:allocateLoadBalancerNodePorts":{{}},"f:externalTrafficPolicy":{{}},"f:internalTrafficPolicy":{{}},"f:ports":{{".":{{}},"k:{{\"port\":80,\"protocol\":\"TCP\"}}":{{".":{{}},"f:name":{{}},"f:port":{{}},"f:protocol":{{}},"f:targetPort":{{}}}}}},"f:selector":{{}},"f:sessionAffinity":{{}},"f:type":{{}}}}}}}}]}},"spec":{{"ports":{ports},"selector":{{"app.kubernetes.io/instance":"{name}"}},{families}"type":"LoadBalancer","sessionAffinity":"None","externalTrafficPolicy":"Cluster","internalTrafficPolicy":"Cluster","allocateLoadBalancerNodePorts":true}},"status":{{"loadBalancer":{{}}}}}},"oldObject":null,"dryRun":{dry_run},"options":{{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1","fieldManager":"kubectl-client-side-apply","fieldValidation":"Strict"}}}}}}"#
    );
    s
}
