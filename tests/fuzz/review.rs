//! (a) The AdmissionReview decoder: the lean one-pass decode reads exactly what kube's full decode
//! reads. Where the lean decode accepts a body, kube's decode of the same body without the fields
//! the lean decode skips must accept it too and read the same; where kube accepts a body, so
//! must the lean decode.

use k8s_openapi::api::core::v1::Service;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube_vip_webhook::admission::decode_service_review;
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::webhook::Present;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::{J, Pool, doc_case, fuzz, json_seeds, show_bytes};

/// Cases in a plain `cargo test` (debug build): a few seconds.
const CASES: u32 = 800;

pub fn full(body: &[u8]) -> serde_json::Result<AdmissionReview<Service>> {
    serde_json::from_slice(body)
}

/// What the webhook reads of a decoded request.
pub fn seen(req: &AdmissionRequest<Service>) -> Value {
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
        "types": format!("{:?}", req.types),
        "uid": req.uid, "kind": format!("{:?}", req.kind), "resource": format!("{:?}", req.resource),
        "subResource": req.sub_resource, "name": req.name, "namespace": req.namespace,
        "operation": format!("{:?}", req.operation), "dryRun": req.dry_run,
        "object": obj(&req.object), "oldObject": obj(&req.old_object),
    })
}

/// The parts of a review both decodes read: its type fields, and the request if it has one.
fn read(review: AdmissionReview<Service>) -> Value {
    let types = format!("{:?}", review.types);
    let req: Option<AdmissionRequest<Service>> = review.try_into().ok();
    json!({"types": types, "request": req.as_ref().map(seen)})
}

/// The one accepted difference: a key repeated in an object the lean decode reads is refused
/// (serde's derived structs), where k8s-openapi's types take the last. The apiserver never
/// repeats a key, and a refusal is an `invalid` answer, never a misread.
pub fn duplicate_key(lean_error: &str) -> bool {
    lean_error.starts_with("duplicate field")
}

/// The review without what the lean decode never reads (`userInfo` kept present but empty: both
/// require it).
pub fn strip_review(review: &mut J) {
    review.keep(&["apiVersion", "kind", "request"], |k, v| {
        if k != "request" {
            return;
        }
        v.keep(
            &[
                "uid",
                "kind",
                "resource",
                "subResource",
                "name",
                "namespace",
                "operation",
                "userInfo",
                "object",
                "oldObject",
                "dryRun",
            ],
            |k, v| match k {
                "userInfo" => *v = J::Obj(Vec::new()),
                "object" | "oldObject" => strip_service(v),
                _ => {}
            },
        );
    });
}

const ANNOTATIONS: [&str; 4] = [
    "kube-vip.io/loadbalancerIPs",
    "kube-vip.io/requestedIP",
    "kube-vip.io/serviceInterface",
    "lb.kube-vip.io/pool",
];

/// A Service with only the fields the lean decode keeps.
pub fn strip_service(svc: &mut J) {
    let each = |f: fn(&mut J)| {
        move |_: &str, v: &mut J| {
            if let J::Arr(items) = v {
                items.iter_mut().for_each(f);
            }
        }
    };
    svc.keep(
        &["apiVersion", "kind", "metadata", "spec", "status"],
        |k, v| match k {
            "metadata" => v.keep(
                &[
                    "name",
                    "namespace",
                    "generateName",
                    "uid",
                    "resourceVersion",
                    "annotations",
                    "labels",
                ],
                // Every label is kept: pool objects select Services by any of them.
                |k, v| {
                    if k == "annotations" {
                        v.keep(&ANNOTATIONS, |_, _| {});
                    }
                },
            ),
            "spec" => v.keep(
                &[
                    "type",
                    "loadBalancerClass",
                    "loadBalancerIP",
                    "ipFamilies",
                    "ipFamilyPolicy",
                    "ports",
                ],
                |k, v| {
                    if k == "ports" {
                        each(|p| p.keep(&["port", "protocol"], |_, _| {}))(k, v);
                    }
                },
            ),
            "status" => v.keep(&["loadBalancer"], |_, lb| {
                lb.keep(&["ingress"], |k, v| {
                    each(|i| i.keep(&["ip"], |_, _| {}))(k, v)
                })
            }),
            _ => {}
        },
    );
}

#[test]
fn review_decoder() {
    let pool = Pool::new(json_seeds("reviews"));
    fuzz(
        "review_decoder",
        CASES,
        doc_case(),
        |case| show_bytes(&pool.doc(case).bytes),
        |case, tally| {
            let doc = pool.doc(&case);
            let lean = decode_service_review(&doc.bytes).map(read);
            let kube = full(&doc.bytes).map(read);
            let class = match (&lean, &kube) {
                (Ok(l), Ok(k)) => {
                    prop_assert_eq!(l, k, "both decodes accept, and read differently");
                    "both accept"
                }
                (Err(e), Ok(_)) => {
                    prop_assert!(
                        duplicate_key(&e.to_string()),
                        "kube accepts, the lean decode refuses: {:?}",
                        e
                    );
                    "lean refuses a duplicate key (kube takes the last)"
                }
                (Err(_), Err(_)) => "both refuse",
                (Ok(l), Err(_)) => {
                    // Only the skipped fields may be why kube refused.
                    // Read back from the bytes: mutations may have written raw tokens.
                    let Ok(tree) = serde_json::from_slice::<J>(&doc.bytes) else {
                        // Lean skips values serde_json's tree refuses (1e400, deep nesting).
                        tally.exec("lean accepts, unreadable as a tree");
                        return Ok(());
                    };
                    let mut stripped = tree;
                    strip_review(&mut stripped);
                    let k = full(&stripped.to_bytes()).map(read);
                    prop_assert!(
                        k.is_ok(),
                        "lean accepts; kube refuses even without the skipped fields: {:?}",
                        k
                    );
                    prop_assert_eq!(l, &k.unwrap_or_default());
                    "lean accepts (skipped fields kube refuses)"
                }
            };
            tally.exec(class);
            Ok(())
        },
    );
}
