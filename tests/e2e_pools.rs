//! Pool objects (VIPPool, issue 13) end to end on a real kube-apiserver (envtest, Kubernetes
//! 1.28): the shipped CRD installs and its schema refuses bad addresses; the webhook hands out a
//! pool's addresses at admission; a pool created later wakes a waiting Service; the status counts
//! follow creates and deletes; a deleted pool leaves its addresses where they are.
//!
//! Pools are cluster-scoped and every webhook under test sees all of them, so each test's pools
//! select its own namespace only (`namespaceSelector` on `kubernetes.io/metadata.name`).
//!
//! Skips unless `KUBEBUILDER_ASSETS` points at kube-apiserver and etcd.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use e2e::{E2e, annotation, cli_json, cli_text, eventually, install_pool_crd, lb};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube_vip_webhook::pools::{VIPPool, VIPPoolSpec};
use serde_json::{Value, json};

/// A pool named after the test's namespace (plus `suffix`), selecting that namespace only.
fn pool(t: &E2e, suffix: &str, spec: Value) -> VIPPool {
    let mut spec = spec;
    spec["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": t.ns}});
    let spec: VIPPoolSpec = serde_json::from_value(spec).expect("pool spec");
    VIPPool::new(&format!("{}{suffix}", t.ns), spec)
}

fn pools(t: &E2e) -> Api<VIPPool> {
    Api::all(t.client.clone())
}

fn with(svc: Service, extra: Value) -> Service {
    let mut v = serde_json::to_value(svc).unwrap();
    for (k, x) in extra.as_object().unwrap() {
        for (kk, xx) in x.as_object().unwrap() {
            v[k][kk] = xx.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

/// The address a dry-run create of `svc` would get (the webhook's current view).
async fn dry_run(t: &E2e, svc: &Service) -> Option<String> {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    annotation(&t.services().create(&params, svc).await.ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_installs_and_its_schema_refuses_bad_addresses() {
    let Some(t) = E2e::new("pools-crd").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    let api = pools(&t);
    let good = pool(
        &t,
        "",
        json!({"addresses": ["10.0.0.0/24", "10.0.1.5-10.0.1.9", "fd00::/120"], "exclude": ["10.0.0.1"]}),
    );
    let created = api
        .create(&PostParams::default(), &good)
        .await
        .expect("a valid pool");
    // The API defaults avoidBuggyIPs as the type does.
    assert!(created.spec.avoid_buggy_ips);
    for (field, bad) in [
        ("addresses", "10.0.0.0/33"),
        ("addresses", "10.0.0.256"),
        ("addresses", "fd00::/129"),
        ("addresses", "10.0.0.1 - 10.0.0.9"),
        ("exclude", "gateway"),
    ] {
        let mut spec = json!({"addresses": ["10.0.0.0/24"]});
        spec[field] = json!([bad]);
        let p = pool(&t, &format!("-bad-{}", field.len()), spec);
        match api.create(&PostParams::default(), &p).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{bad}: {e:?}");
                assert!(
                    e.message.contains(&format!("spec.{field}")),
                    "{bad}: {}",
                    e.message
                );
            }
            other => panic!("{bad:?} in spec.{field} was not refused: {other:?}"),
        }
    }
    let empty = pool(&t, "-empty", json!({"addresses": []}));
    assert!(api.create(&PostParams::default(), &empty).await.is_err());

    // `kubectl get vpool` reads well: the short name is discovered, the columns are ours.
    let discovery: Value = t
        .client
        .request(
            http::Request::get("/apis/lb.kube-vip.io/v1alpha1")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .expect("discovery");
    let resource = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "vippools")
        .expect("vippools in discovery");
    assert_eq!(resource["shortNames"], json!(["vpool"]));
    assert_eq!(resource["namespaced"], json!(false));
    let table: Value = t
        .client
        .request(
            http::Request::get(format!("/apis/lb.kube-vip.io/v1alpha1/vippools/{}", t.ns))
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .expect("table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == json!(0))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Addresses",
            "Priority",
            "IPv4 Free",
            "IPv6 Free",
            "Ready",
            "Age"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_their_pool_address_in_the_create_response() {
    let Some(t) = E2e::new("pools-sync").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[(&t.key("range"), &t.range(100, 110))]).await;
    t.register().await;
    let wh = t.start_webhook("pools-sync-0", &[]).await;
    t.wait_active().await;
    let class = format!("example.com/{}", t.ns);
    let api = pools(&t);
    for p in [
        pool(
            &t,
            "-web",
            json!({"addresses": [t.range(10, 19)], "serviceSelector": {"matchLabels": {"tier": "web"}}}),
        ),
        pool(
            &t,
            "-class",
            json!({"addresses": [t.range(20, 29)], "loadBalancerClass": class}),
        ),
        pool(
            &t,
            "-named",
            json!({"addresses": [t.range(30, 39)], "priority": -5,
                   "serviceSelector": {"matchLabels": {"never": "set"}}}),
        ),
    ] {
        api.create(&PostParams::default(), &p)
            .await
            .expect("create pool");
    }
    let web = with(
        lb("web", 80),
        json!({"metadata": {"labels": {"tier": "web"}}}),
    );
    // The webhook's pool watch catches up.
    eventually("the web pool to be used", || async {
        (dry_run(&t, &web).await? == t.ip(10)).then_some(())
    })
    .await;

    let created = t
        .services()
        .create(&PostParams::default(), &web)
        .await
        .expect("create");
    assert_eq!(
        annotation(&created),
        Some(t.ip(10)),
        "label-selected pool, in the response"
    );
    let plain = t
        .services()
        .create(&PostParams::default(), &lb("plain", 80))
        .await
        .unwrap();
    assert_eq!(
        annotation(&plain),
        Some(t.ip(100)),
        "the ConfigMap below every pool"
    );
    let classy = with(
        lb("classy", 80),
        json!({"spec": {"loadBalancerClass": class}}),
    );
    eventually("the class pool to be used", || async {
        (dry_run(&t, &classy).await? == t.ip(20)).then_some(())
    })
    .await;
    let classy = t
        .services()
        .create(&PostParams::default(), &classy)
        .await
        .unwrap();
    assert_eq!(
        annotation(&classy),
        Some(t.ip(20)),
        "a class only a pool names is ours"
    );
    let named = with(
        lb("named", 80),
        json!({"metadata": {"annotations": {"lb.kube-vip.io/pool": format!("{}-named", t.ns)}}}),
    );
    // The named pool does not select the Service: refused by name, never another pool.
    let named = t
        .services()
        .create(&PostParams::default(), &named)
        .await
        .unwrap();
    assert_eq!(annotation(&named), None);
    assert!(
        wh.log_lines("denied").is_empty(),
        "{:?}",
        wh.log_lines("denied")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_created_later_wakes_a_waiting_service() {
    let Some(t) = E2e::new("pools-wake").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    // The namespace's ConfigMap pool has one address, taken by `holder`.
    t.set_config(&[(&t.key("range"), &t.range(200, 200))]).await;
    t.register().await;
    let _wh = t.start_webhook("pools-wake-0", &[]).await;
    t.wait_active().await;
    let holder = t
        .services()
        .create(&PostParams::default(), &lb("holder", 80))
        .await
        .unwrap();
    assert_eq!(annotation(&holder), Some(t.ip(200)));
    let early = t
        .services()
        .create(&PostParams::default(), &lb("early", 80))
        .await
        .unwrap();
    assert_eq!(annotation(&early), None, "the only pool is full");

    pools(&t)
        .create(
            &PostParams::default(),
            &pool(&t, "", json!({"addresses": [t.range(40, 41)]})),
        )
        .await
        .expect("create pool");
    let ip = eventually("the waiting Service to get an address", || {
        t.address_of("early")
    })
    .await;
    assert!([t.ip(40), t.ip(41)].contains(&ip), "{ip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_follow_creates_and_deletes_and_a_deleted_pool_keeps_its_addresses() {
    let Some(t) = E2e::new("pools-status").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[]).await;
    t.register().await;
    let wh = t.start_webhook("pools-status-0", &[]).await;
    let api = pools(&t);
    let p = pool(
        &t,
        "",
        json!({"addresses": [t.range(50, 59), t.ip(60)], "exclude": [t.ip(60)]}),
    );
    api.create(&PostParams::default(), &p)
        .await
        .expect("create pool");
    let name = t.ns.clone();
    let counts = |want: (i64, i64)| {
        let api = api.clone();
        let name = name.clone();
        async move {
            let s = api.get(&name).await.ok()?.status?;
            let v4 = s.ipv4?;
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
            ((v4.size, v4.used) == want
                && v4.free == want.0 - want.1
                && ready.status == "True"
                && s.observed_generation == Some(1))
            .then_some(())
        }
    };
    eventually("status: 10 free", || counts((10, 0))).await;
    t.wait_active().await;
    for n in ["a", "b", "c"] {
        t.services()
            .create(&PostParams::default(), &lb(n, 80))
            .await
            .unwrap();
    }
    eventually("status: 3 used", || counts((10, 3))).await;
    t.services()
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("status: 2 used", || counts((10, 2))).await;

    // Deleted: the Services keep their addresses, an Event says so.
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let events: Api<Event> = Api::namespaced(t.client.clone(), "default");
    let note = eventually("PoolDeleted Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some("PoolDeleted")
                && e.regarding.as_ref()?.name.as_deref() == Some(name.as_str()))
            .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(note.contains("2 addresses"), "{note}");
    assert_eq!(t.address_of("a").await, Some(t.ip(50)));
    assert_eq!(t.address_of("c").await, Some(t.ip(52)));
    // A new Service finds no pool and waits; the held addresses were not moved.
    let d = t
        .services()
        .create(&PostParams::default(), &lb("d", 80))
        .await
        .unwrap();
    assert_eq!(annotation(&d), None);
    assert!(wh.log_lines("cannot write VIPPool status").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_label_selects_the_pool_once_it_is_set() {
    let Some(t) = E2e::new("pools-label").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[(&t.key("range"), &t.range(100, 110))]).await;
    t.register().await;
    let _wh = t.start_webhook("pools-label-0", &[]).await;
    t.wait_active().await;
    // Selects namespaces by a label only this test sets.
    let spec: VIPPoolSpec = serde_json::from_value(json!({
        "addresses": [t.range(70, 79)],
        "namespaceSelector": {"matchLabels": {"pools-e2e": t.ns}},
    }))
    .unwrap();
    pools(&t)
        .create(&PostParams::default(), &VIPPool::new(&t.ns, spec))
        .await
        .expect("create pool");
    let before = t
        .services()
        .create(&PostParams::default(), &lb("before", 80))
        .await
        .unwrap();
    assert_eq!(
        annotation(&before),
        Some(t.ip(100)),
        "not labelled yet: the ConfigMap"
    );

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(t.client.clone());
    namespaces
        .patch(
            &t.ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"pools-e2e": t.ns}}})),
        )
        .await
        .expect("label the namespace");
    eventually("the labelled namespace to use the pool", || async {
        (dry_run(&t, &lb("after", 80)).await? == t.ip(70)).then_some(())
    })
    .await;
    let after = t
        .services()
        .create(&PostParams::default(), &lb("after", 80))
        .await
        .unwrap();
    assert_eq!(annotation(&after), Some(t.ip(70)));
    // The Service admitted before keeps its address.
    assert_eq!(t.address_of("before").await, Some(t.ip(100)));
}

/// A Service of a class nobody handles is not ours; a pool naming that class makes it ours: the
/// Service watch starts over (the reconciler's store only keeps Services that were ours) and the
/// reconciler assigns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_naming_a_class_adopts_the_services_of_that_class() {
    let Some(t) = E2e::new("pools-class").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[(&t.key("range"), &t.range(100, 110))]).await;
    t.register().await;
    let _wh = t.start_webhook("pools-class-0", &[]).await;
    t.wait_active().await;
    let class = format!("example.com/{}", t.ns);
    let svc = with(
        lb("late-class", 80),
        json!({"spec": {"loadBalancerClass": class}}),
    );
    let created = t
        .services()
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    assert_eq!(
        annotation(&created),
        None,
        "no pool names the class yet: not ours"
    );

    pools(&t)
        .create(
            &PostParams::default(),
            &pool(
                &t,
                "",
                json!({"addresses": [t.range(80, 81)], "loadBalancerClass": class}),
            ),
        )
        .await
        .expect("create pool");
    let ip = eventually("the class Service to be adopted", || {
        t.address_of("late-class")
    })
    .await;
    assert!([t.ip(80), t.ip(81)].contains(&ip), "{ip}");
}

/// The `(size, used, free)` of pool `key`, family `family`, in a `status`/`plan` JSON report.
fn usage(report: &Value, key: &str, family: &str) -> (u64, u64, u64) {
    let row = report["pools"]
        .as_array()
        .unwrap_or_else(|| panic!("no pools: {report}"))
        .iter()
        .find(|p| p["key"] == key && p["family"] == family)
        .unwrap_or_else(|| panic!("no {key} {family} row: {report}"));
    let n = |f: &str| row[f].as_u64().unwrap_or_else(|| panic!("{f}: {row}"));
    (n("size"), n("used"), n("free"))
}

/// Whether a POOL table holds the row `key family size used free`.
fn has_row(table: &str, key: &str, family: &str, (size, used, free): (u64, u64, u64)) -> bool {
    let want = [
        key.to_string(),
        family.to_string(),
        size.to_string(),
        used.to_string(),
        free.to_string(),
    ];
    table
        .lines()
        .any(|l| l.split_whitespace().eq(want.iter().map(String::as_str)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pool_answers_at_create_and_status_and_live_plan_show_vippool_rows() {
    let Some(t) = E2e::new("pools-cli").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[(&t.key("range"), &t.range(100, 101))]).await;
    t.register().await;
    let _wh = t.start_webhook("pools-cli-0", &[]).await;
    t.wait_active().await;
    let api = pools(&t);
    // `main` takes every Service of the namespace; `named` only those that name it.
    let main = pool(
        &t,
        "-main",
        json!({"addresses": [t.range(10, 14), "fd00:c11::/126"], "exclude": [t.ip(14)]}),
    );
    let named = pool(
        &t,
        "-named",
        json!({"addresses": [t.range(20, 22)], "priority": -5}),
    );
    for p in [&main, &named] {
        api.create(&PostParams::default(), p)
            .await
            .expect("create pool");
    }
    let naming = with(
        lb("naming", 80),
        json!({"metadata": {"annotations": {"lb.kube-vip.io/pool": format!("{}-named", t.ns)}}}),
    );
    // The webhook's pool watch catches up.
    eventually("the named pool to be used", || async {
        (dry_run(&t, &naming).await? == t.ip(20)).then_some(())
    })
    .await;
    let created = t
        .services()
        .create(&PostParams::default(), &naming)
        .await
        .expect("create");
    assert_eq!(
        annotation(&created),
        Some(t.ip(20)),
        "the named pool's address, in the CREATE response"
    );
    for (n, last) in [("a", 10), ("b", 11)] {
        let s = t
            .services()
            .create(&PostParams::default(), &lb(n, 80))
            .await
            .expect("create");
        assert_eq!(annotation(&s), Some(t.ip(last)), "{n}: the unnamed pool");
    }

    let (main_key, named_key) = (
        format!("vippool/{}-main", t.ns),
        format!("vippool/{}-named", t.ns),
    );
    // Sizes leave out spec.exclude; the IPv6 block is never filtered.
    let want = [
        (&main_key, "IPv4", (4, 2, 2)),
        (&main_key, "IPv6", (4, 0, 4)),
        (&named_key, "IPv4", (3, 1, 2)),
    ];
    let kubeconfig = t.cp.kubeconfig.clone();
    let args = |cmd: &str, json: bool, with_file: bool| {
        let mut args = vec![cmd.to_string()];
        if with_file {
            args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
        } else {
            args.push("--live".into());
        }
        args.extend(["--kubevip-namespace".into(), t.ns.clone()]);
        if json {
            args.extend(["-o".into(), "json".into()]);
        }
        args
    };
    let status = cli_json(args("status", true, true)).await;
    let plan = cli_json(args("plan", true, true)).await;
    let status_table = cli_text(args("status", false, true), None).await;
    let live_table = cli_text(args("plan", false, false), Some(kubeconfig.clone())).await;
    let live_json: Value =
        serde_json::from_str(&cli_text(args("plan", true, false), Some(kubeconfig.clone())).await)
            .expect("JSON on stdout");
    for (key, family, counts) in want {
        assert_eq!(usage(&status, key, family), counts, "status {key} {family}");
        assert_eq!(usage(&plan, key, family), counts, "plan {key} {family}");
        assert_eq!(
            usage(&live_json, key, family),
            counts,
            "plan --live {key} {family}"
        );
        assert!(
            has_row(&status_table, key, family, counts),
            "status table, {key} {family} {counts:?}:\n{status_table}"
        );
        assert!(
            has_row(&live_table, key, family, counts),
            "plan --live table, {key} {family} {counts:?}:\n{live_table}"
        );
    }
}

/// Overlapping pools both say so in their `Conflict` condition; an entry the schema lets through
/// but that means nothing (a range that ends before it starts) is named in `Invalid` and in a
/// Warning Event on the pool; the rest of the pool is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlaps_and_invalid_entries_show_in_conditions_and_an_event() {
    let Some(t) = E2e::new("pools-cond").await else {
        return;
    };
    install_pool_crd(&t.client).await;
    t.set_config(&[]).await;
    t.register().await;
    let _wh = t.start_webhook("pools-cond-0", &[]).await;
    let api = pools(&t);
    let reversed = format!("{}-{}", t.ip(99), t.ip(90));
    let (a, b) = (
        pool(&t, "-a", json!({"addresses": [t.range(70, 79)]})),
        pool(&t, "-b", json!({"addresses": [t.range(75, 84), reversed]})),
    );
    for p in [&a, &b] {
        api.create(&PostParams::default(), p)
            .await
            .expect("the schema lets both through");
    }
    let (a, b) = (format!("{}-a", t.ns), format!("{}-b", t.ns));
    let condition = |pool: String, type_: &'static str| {
        let api = api.clone();
        async move {
            let status = api.get(&pool).await.ok()?.status?;
            let c = status.conditions.into_iter().find(|c| c.type_ == type_)?;
            (c.status == "True").then_some(c.message)
        }
    };
    let conflict = eventually("a's Conflict", || condition(a.clone(), "Conflict")).await;
    assert!(conflict.contains(&b), "{conflict}");
    let conflict = eventually("b's Conflict", || condition(b.clone(), "Conflict")).await;
    assert!(conflict.contains(&a), "{conflict}");
    let invalid = eventually("b's Invalid", || condition(b.clone(), "Invalid")).await;
    assert!(invalid.contains(&reversed), "{invalid}");
    eventually("b Ready", || condition(b.clone(), "Ready")).await;

    let events: Api<Event> = Api::namespaced(t.client.clone(), "default");
    let note = eventually("InvalidConfiguration Event on b", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some("InvalidConfiguration")
                && e.regarding.as_ref()?.name.as_deref() == Some(b.as_str()))
            .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(note.contains(&reversed), "{note}");
}
