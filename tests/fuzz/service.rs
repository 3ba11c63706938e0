//! (b) The watched-Service decoder (`LeanService`), alone, in a list page and in a watch event as
//! the watcher decodes them: what it reads equals what kube's full `Service` decode reads.

use k8s_openapi::api::core::v1::Service;
use kube::core::{ObjectList, WatchEvent};
use kube_vip_webhook::admission::LeanService;
use kube_vip_webhook::service::SvcInfo;
use kube_vip_webhook::webhook::Present;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::{J, Pool, doc_case, fuzz, json_seeds, show_bytes};
use crate::review::{duplicate_key, strip_service};

const CASES: u32 = 800;

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

#[derive(Clone, Copy, Debug)]
enum Wrap {
    Plain,
    List,
    Event,
}

fn wrap(w: Wrap, svc: &[u8]) -> Vec<u8> {
    let (head, tail): (&[u8], &[u8]) = match w {
        Wrap::Plain => (b"", b""),
        Wrap::List => (
            br#"{"apiVersion":"v1","kind":"ServiceList","metadata":{"resourceVersion":"9"},"items":["#,
            b"]}",
        ),
        Wrap::Event => (br#"{"type":"MODIFIED","object":"#, b"}"),
    };
    [head, svc, tail].concat()
}

/// Decode as `K` in the wrapper, then read every Service in it.
fn read<K: serde::de::DeserializeOwned + Clone + std::fmt::Debug>(
    w: Wrap,
    body: &[u8],
    svc: impl Fn(&K) -> &Service,
) -> Result<Vec<Value>, String> {
    let e = |e: serde_json::Error| e.to_string();
    Ok(match w {
        Wrap::Plain => vec![watched(svc(&serde_json::from_slice::<K>(body).map_err(e)?))],
        Wrap::List => serde_json::from_slice::<ObjectList<K>>(body)
            .map_err(e)?
            .items
            .iter()
            .map(|k| watched(svc(k)))
            .collect(),
        Wrap::Event => match serde_json::from_slice::<WatchEvent<K>>(body).map_err(e)? {
            WatchEvent::Added(k) | WatchEvent::Modified(k) | WatchEvent::Deleted(k) => {
                vec![watched(svc(&k))]
            }
            other => vec![json!(format!("{other:?}"))],
        },
    })
}

fn lean(w: Wrap, body: &[u8]) -> Result<Vec<Value>, String> {
    read::<LeanService>(w, body, |l| &l.0)
}

fn kube(w: Wrap, body: &[u8]) -> Result<Vec<Value>, String> {
    read::<Service>(w, body, |s| s)
}

#[test]
fn watched_service_decoder() {
    let pool = Pool::new(json_seeds("services"));
    let wraps = [Wrap::Plain, Wrap::List, Wrap::Event];
    fuzz(
        "watched_service_decoder",
        CASES,
        (doc_case(), 0..3usize),
        |(case, w)| show_bytes(&wrap(wraps[*w], &pool.doc(case).bytes)),
        |(case, w), tally| {
            let w = wraps[w];
            let doc = pool.doc(&case);
            let body = wrap(w, &doc.bytes);
            let (l, k) = (lean(w, &body), kube(w, &body));
            let class = match (&l, &k) {
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
                    // Read back from the bytes: mutations may have written raw tokens.
                    let Ok(tree) = serde_json::from_slice::<J>(&doc.bytes) else {
                        // Lean skips values serde_json's tree refuses (1e400, deep nesting).
                        tally.exec("lean accepts, unreadable as a tree");
                        return Ok(());
                    };
                    let mut stripped = tree;
                    strip_service(&mut stripped);
                    let k = kube(w, &wrap(w, &stripped.to_bytes()));
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
