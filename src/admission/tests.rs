//! The lean decode against the full one: same acceptance, same request, same `SvcInfo`, same
//! presence of the metadata maps.

use k8s_openapi::api::core::v1::Service;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::decode_service_review;
use crate::service::SvcInfo;
use crate::webhook::Present;

fn full(body: &[u8]) -> serde_json::Result<AdmissionReview<Service>> {
    serde_json::from_slice(body)
}

/// What the webhook reads of a decoded request.
fn seen(req: &AdmissionRequest<Service>) -> Value {
    let obj = |o: &Option<Service>| {
        o.as_ref().map(|s| {
            let p = Present::of(s);
            format!(
                "{:?} annotations={} labels={}",
                SvcInfo::from_service(s),
                p.annotations,
                p.labels
            )
        })
    };
    json!({
        "uid": req.uid, "kind": format!("{:?}", req.kind), "resource": format!("{:?}", req.resource),
        "subResource": req.sub_resource, "name": req.name, "namespace": req.namespace,
        "operation": format!("{:?}", req.operation), "dryRun": req.dry_run,
        "object": obj(&req.object), "oldObject": obj(&req.old_object),
    })
}

fn assert_same(review: &Value) {
    let body = serde_json::to_vec(review).unwrap();
    let (lean, full) = (decode_service_review(&body), full(&body));
    match (lean, full) {
        (Ok(l), Ok(f)) => {
            assert_eq!(l.types, f.types);
            let (l, f): (
                Result<AdmissionRequest<Service>, _>,
                Result<AdmissionRequest<Service>, _>,
            ) = (l.try_into(), f.try_into());
            match (l, f) {
                (Ok(l), Ok(f)) => {
                    assert_eq!(l.types, f.types);
                    assert_eq!(seen(&l), seen(&f), "{review}");
                }
                (Err(_), Err(_)) => {}
                (l, f) => panic!(
                    "request: lean {:?} full {:?}: {review}",
                    l.is_ok(),
                    f.is_ok()
                ),
            }
        }
        (Err(_), Err(_)) => {}
        (l, f) => panic!(
            "lean {:?} full {:?}: {review}",
            l.map(|_| ()),
            f.map(|_| ())
        ),
    }
}

fn review(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "requestKind": {"group": "", "version": "v1", "kind": "Service"},
            "name": "web", "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters"], "extra": {"k": ["v"]}},
            "object": object, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl"}
        }
    })
}

fn realistic() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "web", "namespace": "shop", "creationTimestamp": null,
            "labels": {"app": "web", "implementation": "kube-vip"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}\n",
                "kube-vip.io/loadbalancerIPs": "10.0.0.5,fd00::5",
                "kube-vip.io/serviceInterface": "eth1",
                "kube-vip.io/requestedIP": "10.0.0.9"
            },
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {".": {}}}}}]
        },
        "spec": {
            "type": "LoadBalancer", "loadBalancerIP": "10.0.0.7", "loadBalancerClass": "x/y",
            "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                      {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                      {"port": 443}],
            "selector": {"app": "web"}, "sessionAffinity": "None", "clusterIPs": ["10.96.0.10"]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.8", "ipMode": "VIP"}, {"hostname": "lb.example"}]}}
    })
}

#[test]
fn realistic_reviews_decode_the_same() {
    assert_same(&review(realistic()));
    // UPDATE with an old object, dry-run, a subresource.
    let mut r = review(realistic());
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = realistic();
    r["request"]["dryRun"] = json!(true);
    assert_same(&r);
    r["request"]["subResource"] = json!("status");
    assert_same(&r);
    // generateName, no namespace in the object, no maps at all, empty maps.
    assert_same(&review(
        json!({"metadata": {"generateName": "web-"}, "spec": {"type": "LoadBalancer"}}),
    ));
    assert_same(&review(
        json!({"metadata": {"annotations": {}, "labels": {}}}),
    ));
    assert_same(&review(json!({})));
    // Escaped characters in kept and skipped keys and values.
    assert_same(&review(json!({"metadata": {"annotations": {
        "kube-vip.io/loadbalancerIPs": "10.0.0.1\u{00e9}", "other\"key": "x\ny"}}})));
    let escaped = br#"{"apiVersion":"admission.k8s.io\/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Service"},"resource":{"group":"","version":"v1","resource":"services"},"operation":"CREATE","userInfo":{},"object":{"metadata":{"annotations":{"kube-vip.io\/loadbalancerIPs":"10.0.0.3"}}}}}"#;
    let lean: AdmissionRequest<Service> =
        decode_service_review(escaped).unwrap().try_into().unwrap();
    let full: AdmissionRequest<Service> = full(escaped).unwrap().try_into().unwrap();
    assert_eq!(seen(&lean), seen(&full));
    assert!(seen(&lean)["object"].as_str().unwrap().contains("10.0.0.3"));
}

#[test]
fn rejected_alike() {
    // Another kind of object, a wrong apiVersion, a port that is not a number, a missing
    // userInfo, uid or operation, no request, not an object.
    let mut pod = review(json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}));
    pod["request"]["kind"]["kind"] = json!("Pod");
    assert!(decode_service_review(&serde_json::to_vec(&pod).unwrap()).is_err());
    assert_same(&pod);
    assert_same(&review(json!({"apiVersion": "v2", "kind": "Service"})));
    assert_same(&review(json!({"spec": {"ports": [{"port": "eighty"}]}})));
    assert_same(&review(json!({"spec": {"ports": [{"protocol": "TCP"}]}})));
    // k8s-openapi reads a null port as a missing one (found by the fuzzer).
    assert_same(&review(json!({"spec": {"ports": [{"port": null}]}})));
    assert_same(&review(
        json!({"metadata": {"annotations": {"kube-vip.io/loadbalancerIPs": 5}}}),
    ));
    for field in ["userInfo", "uid", "operation", "kind", "resource"] {
        let mut r = review(realistic());
        r["request"].as_object_mut().unwrap().remove(field);
        assert!(
            decode_service_review(&serde_json::to_vec(&r).unwrap()).is_err(),
            "{field}"
        );
        assert_same(&r);
    }
    assert_same(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}));
    assert_same(&json!({"kind": "AdmissionReview"}));
    assert_same(&json!([1, 2, 3]));
}

#[test]
fn arrays_are_not_objects() {
    // serde's derived structs also read a JSON array as their fields by position; k8s-openapi's
    // types refuse it. Found by the fuzzer (tests/fuzz): `"status": [{"loadBalancer": {}}]` was
    // accepted by the lean decode only.
    for (field, value) in [
        (
            "status",
            json!([{"loadBalancer": {"ingress": [{"ip": "10.0.0.8"}]}}]),
        ),
        ("status", json!({"loadBalancer": [[{"ip": "10.0.0.8"}]]})),
        (
            "status",
            json!({"loadBalancer": {"ingress": [["10.0.0.8"]]}}),
        ),
        ("metadata", json!(["web", "shop"])),
        ("spec", json!(["LoadBalancer"])),
        (
            "spec",
            json!({"type": "LoadBalancer", "ports": [[80, "UDP"]]}),
        ),
    ] {
        let mut object = realistic();
        object[field] = value;
        assert_same(&review(object));
    }
    assert_same(&review(json!(["v1", "Service"])));
    let mut r = review(realistic());
    r["request"] = json!(["705ab4f5", {"group": "", "version": "v1", "kind": "Service"}]);
    assert_same(&r);
    assert_same(&json!(["admission.k8s.io/v1", "AdmissionReview", null]));
}

fn opt<T: Strategy>(s: T) -> impl Strategy<Value = Option<T::Value>> {
    prop::option::of(s)
}

prop_compose! {
    fn arb_object()(
        name in opt("[a-z]{1,5}"),
        namespace in opt("[a-z]{1,3}"),
        generate_name in opt("[a-z]{0,3}-"),
        annotations in opt(prop::collection::btree_map(
            prop::sample::select(vec!["kube-vip.io/loadbalancerIPs", "kube-vip.io/requestedIP",
                "kube-vip.io/serviceInterface", "other", "kube-vip.io/x"]),
            "[0-9a-f.:, ]{0,12}", 0..4)),
        labels in opt(prop::collection::btree_map(
            prop::sample::select(vec!["implementation", "app"]),
            prop::sample::select(vec!["kube-vip", "other", ""]), 0..3)),
        type_ in opt(prop::sample::select(vec!["LoadBalancer", "ClusterIP", "NodePort"])),
        class in opt("[a-z/]{1,6}"),
        lb_ip in opt("[0-9.]{0,9}"),
        families in opt(prop::collection::vec(prop::sample::select(vec!["IPv4", "IPv6", "x"]), 0..3)),
        policy in opt(prop::sample::select(vec!["SingleStack", "PreferDualStack", "RequireDualStack", "?"])),
        ports in opt(prop::collection::vec((0i32..70000, opt(prop::sample::select(vec!["TCP", "UDP", "SCTP", "", "x"]))), 0..4)),
        ingress in opt(prop::collection::vec(opt("[0-9.]{1,9}"), 0..3)),
        junk in any::<bool>(),
    ) -> Value {
        let mut meta = json!({});
        if let Some(v) = name { meta["name"] = json!(v); }
        if let Some(v) = namespace { meta["namespace"] = json!(v); }
        if let Some(v) = generate_name { meta["generateName"] = json!(v); }
        if let Some(v) = annotations { meta["annotations"] = json!(v); }
        if let Some(v) = labels { meta["labels"] = json!(v); }
        let mut spec = json!({});
        if let Some(v) = type_ { spec["type"] = json!(v); }
        if let Some(v) = class { spec["loadBalancerClass"] = json!(v); }
        if let Some(v) = lb_ip { spec["loadBalancerIP"] = json!(v); }
        if let Some(v) = families { spec["ipFamilies"] = json!(v); }
        if let Some(v) = policy { spec["ipFamilyPolicy"] = json!(v); }
        if let Some(v) = ports {
            spec["ports"] = v.into_iter().map(|(port, protocol)| {
                let mut p = json!({"port": port, "targetPort": 8080});
                if let Some(pr) = protocol { p["protocol"] = json!(pr); }
                p
            }).collect();
        }
        let mut obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec});
        if let Some(v) = ingress {
            obj["status"] = json!({"loadBalancer": {"ingress": v.into_iter().map(|ip| match ip {
                Some(ip) => json!({"ip": ip}), None => json!({"hostname": "h"})}).collect::<Vec<_>>()}});
        }
        if junk {
            obj["metadata"]["managedFields"] = json!([{"manager": "m", "fieldsV1": {"f:x": {}}}]);
            obj["spec"]["selector"] = json!({"a": "b"});
        }
        obj
    }
}

proptest! {
    #[test]
    fn arbitrary_services_decode_the_same(object in arb_object(), old in opt(arb_object()), dry in any::<bool>()) {
        let mut r = review(object);
        if let Some(old) = old {
            r["request"]["operation"] = json!("UPDATE");
            r["request"]["oldObject"] = old;
        }
        r["request"]["dryRun"] = json!(dry);
        assert_same(&r);
    }
}

/// kube's serialization with the patch re-encoded as base64 (what `encode_review` did first).
fn reference_encoding(review: &AdmissionReview<kube::core::DynamicObject>) -> Value {
    use base64::Engine as _;
    let mut value = serde_json::to_value(review).unwrap();
    let patch = review.response.as_ref().and_then(|r| r.patch.as_deref());
    if let (Some(patch), Some(slot)) = (patch, value.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    value
}

#[test]
fn answers_encode_like_kube_with_a_base64_patch() {
    use json_patch::{AddOperation, Patch, PatchOperation};
    use kube::core::admission::AdmissionResponse;
    let body = serde_json::to_vec(&review(realistic())).unwrap();
    let req: AdmissionRequest<Service> = full(&body).unwrap().try_into().unwrap();
    let allowed = AdmissionResponse::from(&req);
    let patched = allowed
        .clone()
        .with_patch(Patch(vec![PatchOperation::Add(AddOperation {
            path: jsonptr::PointerBuf::from_tokens([
                "metadata",
                "annotations",
                "kube-vip.io/loadbalancerIPs",
            ]),
            value: json!("10.0.0.1"),
        })]))
        .unwrap();
    let mut warned = patched.clone();
    warned.warnings = Some(vec!["kube-vip-webhook: \"quoted\" warning".into()]);
    let mut audited = allowed.clone();
    audited.audit_annotations.insert("k".into(), "v".into());
    let denied = allowed.clone().deny("address 10.0.0.1 is in use");
    let invalid = AdmissionResponse::invalid("malformed AdmissionReview: EOF");
    for resp in [allowed, patched, warned, audited, denied, invalid] {
        let answer = resp.into_review();
        let ours: Value =
            serde_json::from_slice(&super::encode_answer(&answer).unwrap().unwrap()).unwrap();
        assert_eq!(ours, reference_encoding(&answer));
    }
    // A review that is not an answer is not ours to encode.
    let not_an_answer: AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_slice(&body).unwrap();
    assert!(super::encode_answer(&not_an_answer).is_none());
}

/// What cluster mode reads of a watched Service.
fn watched(s: &Service) -> Value {
    let p = Present::of(s);
    json!({
        "info": format!("{:?}", SvcInfo::from_service(s)),
        "present": [p.annotations, p.labels],
        "uid": s.metadata.uid, "rv": s.metadata.resource_version,
        "name": s.metadata.name, "namespace": s.metadata.namespace,
    })
}

proptest! {
    #[test]
    fn watched_services_decode_the_same(mut object in arb_object(), uid in opt("[a-f0-9-]{1,8}"), rv in opt("[0-9]{1,6}")) {
        if let Some(u) = uid { object["metadata"]["uid"] = json!(u); }
        if let Some(r) = rv { object["metadata"]["resourceVersion"] = json!(r); }
        let full: Service = serde_json::from_value(object.clone()).unwrap();
        let lean: super::LeanService = serde_json::from_value(object).unwrap();
        prop_assert_eq!(watched(&lean.0), watched(&full));
    }
}

#[test]
fn a_watched_list_decodes_lean() {
    // As list pages and watch events carry them: items without apiVersion/kind, events with.
    let mut item = realistic();
    item.as_object_mut().unwrap().remove("kind");
    item.as_object_mut().unwrap().remove("apiVersion");
    let list: kube::core::ObjectList<super::LeanService> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "7"},
        "items": [item, realistic()]
    }))
    .unwrap();
    let full: Service = serde_json::from_value(realistic()).unwrap();
    for s in &list.items {
        assert_eq!(watched(&s.0), watched(&full));
    }
    assert!(serde_json::from_value::<super::LeanService>(json!({"kind": "Pod"})).is_err());
}
