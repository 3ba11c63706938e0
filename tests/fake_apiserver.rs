//! Tests of the fake apiserver, all through `kube::Client` / `kube::Api` / kube-runtime.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinHandle;

use support::fake_apiserver::{FakeApiServer, Matcher};

/// Waits until `cond` holds; the deadline only guards against a hang.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        ..ObjectMeta::default()
    }
}

fn svc(ns: &str, name: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn cm(ns: &str, name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta(ns, name),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

fn start_reflector<K>(api: Api<K>, cfg: watcher::Config) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    let task = tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    });
    (reader, task)
}

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn has<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, ns: &str, name: &str) -> Option<K> {
    store
        .get(&ObjectRef::new(name).within(ns))
        .map(|a| (*a).clone())
}

#[tokio::test]
async fn reflector_syncs_paginated_list_then_follows_handle_and_api_changes() {
    let fake = FakeApiServer::new();
    for i in 0..1_200 {
        let ns = if i % 2 == 0 { "a" } else { "b" };
        fake.insert(&svc(ns, &format!("svc-{i:04}"))).unwrap();
    }
    let client = fake.client();
    let (store, _task) = start_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    store.wait_until_ready().await.unwrap();
    eventually("1200 services in the cache", || store.len() == 1_200).await;

    // The default page size is 500: three pages, the later ones continued.
    let lists: Vec<_> = fake
        .request_log()
        .into_iter()
        .filter(|r| r.verb.as_deref() == Some("list"))
        .collect();
    assert_eq!(lists.len(), 3, "{lists:#?}");
    assert!(
        lists
            .iter()
            .all(|r| r.query.as_deref().unwrap().contains("limit=500"))
    );
    assert_eq!(
        lists
            .iter()
            .filter(|r| r.query.as_deref().unwrap().contains("continue="))
            .count(),
        2
    );
    fake.wait_for_open_watches(1).await;
    let watch = fake
        .request_log()
        .into_iter()
        .find(|r| r.verb.as_deref() == Some("watch"))
        .unwrap();
    let q = watch.query.unwrap();
    assert!(q.contains("allowWatchBookmarks=true"), "{q}");
    assert!(q.contains("timeoutSeconds="), "{q}");
    assert!(
        q.contains(&format!("resourceVersion={}", fake.resource_version())),
        "{q}"
    );

    // Changes made through the test handle.
    fake.insert(&svc("a", "from-handle")).unwrap();
    eventually("handle ADDED", || has(&store, "a", "from-handle").is_some()).await;
    let mut changed = svc("a", "svc-0000");
    changed.labels_mut().insert("via".into(), "handle".into());
    fake.upsert(&changed).unwrap();
    eventually("handle MODIFIED", || {
        has(&store, "a", "svc-0000")
            .is_some_and(|s| s.labels().get("via").map(String::as_str) == Some("handle"))
    })
    .await;
    fake.delete::<Service>(Some("b"), "svc-0001").unwrap();
    eventually("handle DELETED", || has(&store, "b", "svc-0001").is_none()).await;

    // Changes made through the API.
    let api: Api<Service> = Api::namespaced(client.clone(), "b");
    api.create(&PostParams::default(), &svc("b", "from-api"))
        .await
        .unwrap();
    eventually("API ADDED", || has(&store, "b", "from-api").is_some()).await;
    api.patch(
        "from-api",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "via": "api" } } })),
    )
    .await
    .unwrap();
    eventually("API MODIFIED", || {
        has(&store, "b", "from-api")
            .is_some_and(|s| s.labels().get("via").map(String::as_str) == Some("api"))
    })
    .await;
    api.delete("from-api", &DeleteParams::default())
        .await
        .unwrap();
    eventually("API DELETED", || has(&store, "b", "from-api").is_none()).await;
    assert_eq!(store.len(), 1_200);
    assert_eq!(
        fake.list_count(),
        3,
        "no relist while the watch stayed healthy"
    );
}

/// As kube-apiserver 1.28 (checked there by `e2e_admission`): a list at `resourceVersion=0`
/// comes from the watch cache whole, `limit` ignored; without it, in pages.
#[tokio::test]
async fn a_list_at_resource_version_0_ignores_limit() {
    let fake = FakeApiServer::new();
    for i in 0..6 {
        fake.insert(&svc("a", &format!("s{i}"))).unwrap();
    }
    let client = fake.client();
    let list = |query: &str| {
        let req = http::Request::get(format!("/api/v1/namespaces/a/services?{query}"))
            .body(Vec::new())
            .unwrap();
        let client = client.clone();
        async move {
            let v: serde_json::Value = client.request(req).await.unwrap();
            let items = v["items"].as_array().map_or(0, Vec::len);
            (items, v["metadata"]["continue"].is_string())
        }
    };
    assert_eq!(list("limit=2").await, (2, true));
    assert_eq!(list("limit=2&resourceVersion=0").await, (6, false));
    assert_eq!(fake.largest_list_response(), 6);
}

#[tokio::test]
async fn dropped_watch_resumes_from_last_resource_version_without_relisting() {
    let fake = FakeApiServer::new();
    fake.insert(&cm("default", "keep", &[("k", "1")])).unwrap();
    fake.insert(&cm("default", "gone", &[])).unwrap();
    let (store, _task) = start_reflector(
        Api::<ConfigMap>::all(fake.client()),
        watcher::Config::default(),
    );
    store.wait_until_ready().await.unwrap();
    fake.wait_for_open_watches(1).await;
    let rv_before = fake.resource_version();
    let lists_before = fake.list_count();
    let watches_before = fake.watch_count();

    // Cut the watch and keep it down while things change.
    fake.hold_watches();
    fake.drop_watches();
    fake.insert(&cm("default", "new", &[])).unwrap();
    fake.upsert(&cm("default", "keep", &[("k", "2")])).unwrap();
    fake.delete::<ConfigMap>(Some("default"), "gone").unwrap();
    // The reconnect is waiting on the hold; let it through.
    eventually("the watcher to come back", || {
        fake.watch_count() > watches_before
    })
    .await;
    fake.release_watches();

    eventually("changes made while the watch was down", || {
        has(&store, "default", "new").is_some()
            && has(&store, "default", "gone").is_none()
            && has(&store, "default", "keep")
                .and_then(|c| c.data)
                .is_some_and(|d| d.get("k").map(String::as_str) == Some("2"))
    })
    .await;
    assert_eq!(fake.list_count(), lists_before, "resumed without a relist");
    let resumed = fake
        .request_log()
        .into_iter()
        .filter(|r| r.verb.as_deref() == Some("watch"))
        .nth(1)
        .unwrap();
    assert!(
        resumed
            .query
            .unwrap()
            .contains(&format!("resourceVersion={rv_before}")),
        "the second watch starts from the last version seen"
    );
}

#[tokio::test]
async fn watch_from_compacted_version_gets_410_and_the_watcher_relists() {
    let fake = FakeApiServer::new();
    fake.insert(&cm("default", "keep", &[])).unwrap();
    fake.insert(&cm("default", "gone", &[])).unwrap();
    let (store, _task) = start_reflector(
        Api::<ConfigMap>::all(fake.client()),
        watcher::Config::default(),
    );
    store.wait_until_ready().await.unwrap();
    fake.wait_for_open_watches(1).await;
    let lists_before = fake.list_count();

    fake.hold_watches();
    fake.drop_watches();
    fake.set_watch_log_retention(0);
    fake.insert(&cm("default", "new", &[])).unwrap();
    fake.delete::<ConfigMap>(Some("default"), "gone").unwrap();
    fake.release_watches();

    eventually("relisted state", || {
        has(&store, "default", "new").is_some() && has(&store, "default", "gone").is_none()
    })
    .await;
    assert!(fake.list_count() > lists_before, "a 410 forces a new LIST");
    // And it keeps following live changes afterwards.
    fake.insert(&cm("default", "after", &[])).unwrap();
    eventually("live event after relist", || {
        has(&store, "default", "after").is_some()
    })
    .await;
}

#[tokio::test]
async fn raw_watch_reports_410_for_a_compacted_resource_version() {
    let fake = FakeApiServer::new();
    let first = fake.insert(&cm("default", "x", &[])).unwrap();
    fake.set_watch_log_retention(1);
    fake.insert(&cm("default", "y", &[])).unwrap();
    fake.insert(&cm("default", "z", &[])).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let old = first.resource_version().unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        events.try_next().await.unwrap().is_none(),
        "the stream ends after the error"
    );

    // From a retained version, the newer event is replayed.
    let current = fake.resource_version();
    let mut events = api
        .watch(&WatchParams::default(), &(current - 1).to_string())
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Added(c)) => assert_eq!(c.name_any(), "z"),
        other => panic!("expected ADDED z, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_round_trips_and_conflicts() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let pp = PostParams::default();

    let created = api
        .create(&pp, &cm("default", "c1", &[("a", "1")]))
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    let rv1 = created.resource_version().unwrap();
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(api.get("c1").await.unwrap(), created);

    let (code, reason) = api_status(
        api.create(&pp, &cm("default", "c1", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // PUT with the current version succeeds; with the old one it conflicts.
    let mut next = created.clone();
    next.data = Some(BTreeMap::from([("a".to_string(), "2".to_string())]));
    let replaced = api.replace("c1", &pp, &next).await.unwrap();
    let rv2 = replaced.resource_version().unwrap();
    assert_ne!(rv1, rv2);
    assert_eq!(replaced.uid().unwrap(), uid);
    assert_eq!(
        replaced.metadata.creation_timestamp,
        created.metadata.creation_timestamp
    );
    let (code, reason) = api_status(api.replace("c1", &pp, &next).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Merge patch; with a stale resourceVersion it conflicts.
    let merged = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "b": "x" } })),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.as_ref().unwrap()["b"], "x");
    assert_eq!(merged.data.as_ref().unwrap()["a"], "2");
    let stale =
        Patch::Merge(json!({ "metadata": { "resourceVersion": rv2 }, "data": { "b": "y" } }));
    let (code, reason) = api_status(
        api.patch("c1", &PatchParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // JSON patch guarded by a `test` of the version: passes when current.
    let current = merged.resource_version().unwrap();
    let guarded = |rv: &str, value: &str| {
        let ops: json_patch::Patch = serde_json::from_value(json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": rv },
            { "op": "replace", "path": "/data/b", "value": value },
        ]))
        .unwrap();
        Patch::Json::<()>(ops)
    };
    let jp = api
        .patch("c1", &PatchParams::default(), &guarded(&current, "z"))
        .await
        .unwrap();
    assert_eq!(jp.data.as_ref().unwrap()["b"], "z");
    // A failed `test` is 422 Invalid, as the real apiserver answers it (not 409).
    let (code, reason) = api_status(
        api.patch("c1", &PatchParams::default(), &guarded(&current, "w"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    // A JSON patch that writes an old version into the object is a 409 Conflict.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        { "op": "replace", "path": "/metadata/resourceVersion", "value": rv1 },
    ]))
    .unwrap();
    let (code, reason) = api_status(
        api.patch("c1", &PatchParams::default(), &Patch::Json::<()>(ops))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(api.get("c1").await.unwrap().data.unwrap()["b"], "z");

    // A no-op patch writes nothing.
    let noop = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "b": "z" } })),
        )
        .await
        .unwrap();
    assert_eq!(noop.resource_version(), jp.resource_version());

    // Server-side apply creates when absent, merges when present.
    let ssa = PatchParams::apply("test-manager");
    let applied = api
        .patch(
            "c2",
            &ssa,
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c2" }, "data": { "k": "v" } })),
        )
        .await
        .unwrap();
    assert!(applied.uid().is_some());
    let applied = api
        .patch(
            "c2",
            &ssa,
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c2" }, "data": { "k2": "v2" } })),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap().len(), 2);
    let strategic = api
        .patch(
            "c2",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "data": { "k": null } })),
        )
        .await
        .unwrap();
    assert!(!strategic.data.unwrap().contains_key("k"));

    // generateName.
    let generated = api
        .create(
            &pp,
            &ConfigMap {
                metadata: ObjectMeta {
                    generate_name: Some("gen-".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .unwrap();
    let name = generated.name_any();
    assert!(
        name.starts_with("gen-") && name.len() == "gen-".len() + 5,
        "{name}"
    );
    assert!(api.get_opt(&name).await.unwrap().is_some());

    // Delete, then it is gone; deleting again is a 404.
    let deleted = api.delete("c1", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    let (code, reason) = api_status(api.get("c1").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, _) = api_status(
        api.delete("c1", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    // A PATCH of a missing object (non-apply) is a 404 too.
    let (code, _) = api_status(
        api.patch("c1", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn finalizers_delay_deletion_and_preconditions_are_checked() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let mut obj = cm("default", "f", &[]);
    obj.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let created = api.create(&PostParams::default(), &obj).await.unwrap();

    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let (code, reason) = api_status(api.delete("f", &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    api.delete("f", &DeleteParams::default()).await.unwrap();
    let marked = api.get("f").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.uid(), created.uid());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    assert!(api.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn service_status_is_a_subresource() {
    let fake = FakeApiServer::new();
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    let mut s = svc("default", "lb");
    s.status = Some(ServiceStatus {
        conditions: None,
        load_balancer: None,
    });
    let created = api.create(&PostParams::default(), &s).await.unwrap();
    assert!(
        created.status.unwrap().load_balancer.is_some(),
        "status reset on create"
    );

    let ingress = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.7" }] } } });
    // Through the main resource the status is ignored...
    let main = api
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(ingress.clone()),
        )
        .await
        .unwrap();
    assert!(
        main.status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none()
    );
    // ...through /status it is applied, and only the status changes.
    let mut with_label = ingress.clone();
    with_label["metadata"] = json!({ "labels": { "ignored": "yes" } });
    let st = api
        .patch_status("lb", &PatchParams::default(), &Patch::Merge(with_label))
        .await
        .unwrap();
    let ing = st.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ing[0].ip.as_deref(), Some("10.0.0.7"));
    assert!(st.metadata.labels.is_none());
    assert_eq!(
        fake.count_requests(&Matcher::any().verb("patch").subresource("status")),
        1
    );
}

#[tokio::test]
async fn list_selectors_and_unknown_paths() {
    let fake = FakeApiServer::new();
    for (name, labels) in [
        ("a", &[("app", "web"), ("tier", "fe")][..]),
        ("b", &[("app", "web"), ("tier", "db")][..]),
        ("c", &[("app", "api")][..]),
    ] {
        let mut c = cm("default", name, &[]);
        c.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        fake.insert(&c).unwrap();
    }
    fake.insert(&cm("other", "a", &[])).unwrap();
    let client = fake.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    let lp = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(api.list(&lp("app=web")).await.unwrap()), ["a", "b"]);
    assert_eq!(
        names(api.list(&lp("app=web,tier!=db")).await.unwrap()),
        ["a"]
    );
    assert_eq!(names(api.list(&lp("tier")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(api.list(&lp("!tier")).await.unwrap()), ["c"]);
    assert_eq!(
        names(
            api.list(&lp("app in (api, web),tier notin (fe)"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    let by_name = ListParams::default().fields("metadata.name=a");
    assert_eq!(
        names(
            Api::<ConfigMap>::all(client.clone())
                .list(&by_name)
                .await
                .unwrap()
        )
        .len(),
        2
    );
    assert_eq!(names(api.list(&by_name).await.unwrap()), ["a"]);
    let by_ns = ListParams::default().fields("metadata.namespace=other");
    assert_eq!(
        names(
            Api::<ConfigMap>::all(client.clone())
                .list(&by_ns)
                .await
                .unwrap()
        ),
        ["a"]
    );
    let (code, _) = api_status(
        api.list(&ListParams::default().fields("data.x=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        code, 400,
        "unsupported field labels are rejected like the apiserver does"
    );

    // A resource the fake does not serve: 404 with a decodable Status.
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let (code, reason) = api_status(widgets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn continue_token_expires_when_its_version_is_compacted() {
    let fake = FakeApiServer::new();
    for i in 0..5 {
        fake.insert(&cm("default", &format!("c{i}"), &[])).unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let page2 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(page2.items[0].name_any(), "c2");
    assert_eq!(
        page2.metadata.resource_version,
        page.metadata.resource_version
    );

    fake.set_watch_log_retention(0);
    fake.insert(&cm("default", "late", &[])).unwrap();
    let (code, reason) = api_status(
        api.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn injected_500_is_an_error_and_the_next_call_succeeds() {
    let fake = FakeApiServer::new();
    fake.insert(&cm("default", "x", &[])).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    fake.fail_next(1, Matcher::any().verb("get").resource("configmaps"), 500);
    assert_eq!(fake.pending_faults(), 1);
    let (code, reason) = api_status(api.get("x").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert_eq!(api.get("x").await.unwrap().name_any(), "x");
    assert_eq!(fake.pending_faults(), 0);

    // A matcher on method + path; a 409 injected on writes leaves the store untouched.
    fake.fail_next(2, Matcher::new(http_method("PATCH"), "/configmaps/x"), 409);
    for _ in 0..2 {
        let (code, _) = api_status(
            api.patch(
                "x",
                &PatchParams::default(),
                &Patch::Merge(json!({ "data": { "a": "b" } })),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(code, 409);
    }
    let untouched = fake.get::<ConfigMap>(Some("default"), "x").unwrap();
    assert!(!untouched.data.unwrap_or_default().contains_key("a"));
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "a": "b" } })),
    )
    .await
    .unwrap();
    let log = fake.request_log();
    let patches: Vec<_> = log
        .iter()
        .filter(|r| r.verb.as_deref() == Some("patch"))
        .collect();
    assert_eq!(patches.len(), 3, "failed requests are logged too");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

fn http_method(m: &str) -> axum::http::Method {
    m.parse().unwrap()
}

#[tokio::test]
async fn event_recorder_events_reach_the_store() {
    let fake = FakeApiServer::new();
    let svc_obj = fake.insert(&svc("default", "lb")).unwrap();
    let recorder = Recorder::new(
        fake.client(),
        Reporter {
            controller: "kube-vip-webhook".into(),
            instance: Some("pod-0".into()),
        },
    );
    let reference: ObjectReference = svc_obj.object_ref(&());
    let ev = Event {
        type_: EventType::Normal,
        reason: "AddressAssigned".into(),
        note: Some("assigned 10.0.0.7".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    let events = fake.list::<K8sEvent>(Some("default"));
    assert_eq!(events.len(), 1);
    let stored = &events[0];
    assert_eq!(stored.reason.as_deref(), Some("AddressAssigned"));
    assert_eq!(stored.note.as_deref(), Some("assigned 10.0.0.7"));
    assert_eq!(
        stored.reporting_controller.as_deref(),
        Some("kube-vip-webhook")
    );
    assert_eq!(
        stored.regarding.as_ref().unwrap().name.as_deref(),
        Some("lb")
    );

    // The same event again becomes a series, sent as a merge PATCH.
    recorder.publish(&ev, &reference).await.unwrap();
    let events = fake.list::<K8sEvent>(Some("default"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].series.as_ref().unwrap().count, 2);
    let log = fake.request_log();
    let writes: Vec<_> = log
        .iter()
        .filter(|r| r.group.as_deref() == Some("events.k8s.io"))
        .map(|r| {
            (
                r.verb.clone().unwrap(),
                r.content_type.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("create".to_string(), "application/json".to_string()),
            (
                "patch".to_string(),
                "application/merge-patch+json".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn field_selector_watch_sees_only_the_named_configmap() {
    let fake = FakeApiServer::new();
    fake.insert(&cm("default", "other", &[("v", "0")])).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let cfg = watcher::Config::default().fields("metadata.name=target");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _task = tokio::spawn(async move {
        let mut s = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(obj)) = s.next().await {
            if tx.send(obj).is_err() {
                break;
            }
        }
    });
    fake.wait_for_open_watches(1).await;
    fake.insert(&cm("default", "target", &[("v", "1")]))
        .unwrap();
    fake.upsert(&cm("default", "other", &[("v", "1")])).unwrap();
    fake.insert(&cm("default", "another", &[])).unwrap();
    fake.upsert(&cm("default", "target", &[("v", "2")]))
        .unwrap();

    let mut seen = Vec::new();
    while let Some(obj) = rx.recv().await {
        let v = obj.data.as_ref().unwrap()["v"].clone();
        seen.push((obj.name_any(), v.clone()));
        if v == "2" {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            ("target".to_string(), "1".to_string()),
            ("target".to_string(), "2".to_string())
        ]
    );
    let watch = fake
        .request_log()
        .into_iter()
        .find(|r| r.verb.as_deref() == Some("watch"))
        .unwrap();
    assert!(
        watch
            .query
            .unwrap()
            .contains("fieldSelector=metadata.name%3Dtarget")
    );
}

#[tokio::test]
async fn label_change_moves_objects_in_and_out_of_a_selected_watch() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let mut events = api
        .watch(&WatchParams::default().labels("pick=yes"), "0")
        .await
        .unwrap()
        .boxed();
    let mut c = cm("default", "m", &[]);
    fake.insert(&c).unwrap();
    c.metadata.labels = Some(BTreeMap::from([("pick".into(), "yes".into())]));
    fake.upsert(&c).unwrap();
    c.metadata.labels = None;
    fake.upsert(&c).unwrap();
    let kinds: Vec<&str> = vec![
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Added(_)) => "ADDED",
            other => panic!("{other:?}"),
        },
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Deleted(_)) => "DELETED",
            other => panic!("{other:?}"),
        },
    ];
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn bookmarks_and_watch_timeout() {
    let fake = FakeApiServer::new();
    fake.insert(&cm("default", "x", &[])).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let rv = fake.resource_version().to_string();
    let mut events = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    fake.wait_for_open_watches(1).await;
    fake.insert(&cm("default", "y", &[])).unwrap();
    fake.send_bookmarks();
    assert!(matches!(
        events.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(
                b.metadata.resource_version,
                fake.resource_version().to_string()
            );
            assert_eq!(b.types.kind, "ConfigMap");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // timeoutSeconds=1: the server ends the stream.
    assert!(events.try_next().await.unwrap().is_none());
}

#[tokio::test]
async fn streaming_list_and_metadata_watchers_sync() {
    let fake = FakeApiServer::new();
    for i in 0..10 {
        fake.insert(&svc("default", &format!("s{i}"))).unwrap();
    }
    let client = fake.client();
    let (store, _task) = start_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().streaming_lists(),
    );
    store.wait_until_ready().await.unwrap();
    eventually("streaming list sync", || store.len() == 10).await;
    assert_eq!(fake.list_count(), 0, "streaming lists use only WATCH");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _meta = tokio::spawn(async move {
        let api: Api<PartialObjectMeta<Service>> = Api::all(client);
        let mut s = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(obj)) = s.next().await {
            if tx.send(obj).is_err() {
                break;
            }
        }
    });
    let mut names = Vec::new();
    while names.len() < 10 {
        let obj = rx.recv().await.unwrap();
        assert_eq!(obj.types.as_ref().unwrap().kind, "PartialObjectMetadata");
        names.push(obj.name_any());
    }
    assert_eq!(names.len(), 10);
}

#[tokio::test]
async fn lease_updates_are_optimistic() {
    let fake = FakeApiServer::new();
    let api: Api<Lease> = Api::namespaced(fake.client(), "kube-system");
    let lease = Lease {
        metadata: meta("kube-system", "kube-vip-webhook"),
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    let current = api.create(&PostParams::default(), &lease).await.unwrap();
    // Two candidates read the same version; only the first write wins.
    let mut a = current.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("a".into());
    a.spec.as_mut().unwrap().lease_transitions = Some(1);
    let mut b = current.clone();
    b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    api.replace("kube-vip-webhook", &PostParams::default(), &a)
        .await
        .unwrap();
    let (code, reason) = api_status(
        api.replace("kube-vip-webhook", &PostParams::default(), &b)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let held = fake
        .get::<Lease>(Some("kube-system"), "kube-vip-webhook")
        .unwrap();
    assert_eq!(held.spec.unwrap().holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn cluster_scoped_webhook_configuration() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let fake = FakeApiServer::new();
    let api: Api<MutatingWebhookConfiguration> = Api::all(fake.client());
    let mwc = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some("kube-vip-webhook".into()),
            ..ObjectMeta::default()
        },
        webhooks: None,
    };
    let created = api.create(&PostParams::default(), &mwc).await.unwrap();
    assert!(created.metadata.namespace.is_none());
    api.patch(
        "kube-vip-webhook",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "a": "b" } } })),
    )
    .await
    .unwrap();
    let got = fake
        .get::<MutatingWebhookConfiguration>(None, "kube-vip-webhook")
        .unwrap();
    assert_eq!(got.annotations()["a"], "b");
    let log = fake.request_log();
    assert_eq!(
        log[0].path,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    );
}

#[tokio::test]
async fn serves_over_tcp_with_a_kubeconfig() {
    let fake = FakeApiServer::new();
    let tcp = fake.serve_tcp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    tcp.write_kubeconfig(&path, "default").unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("default", "over-tcp", &[]))
        .await
        .unwrap();
    assert!(fake.get::<ConfigMap>(Some("default"), "over-tcp").is_some());
    let (store, _task) = start_reflector(api, watcher::Config::default());
    store.wait_until_ready().await.unwrap();
    fake.insert(&cm("default", "live", &[])).unwrap();
    eventually("a live event over TCP", || {
        has(&store, "default", "live").is_some()
    })
    .await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.minor, "33");
}
