//! End to end on a real kube-apiserver (envtest): the shipped webhook registration, the real
//! binary, Services created through the API as `kubectl` would.
//!
//! Skips (passing, with one line saying why) unless `KUBEBUILDER_ASSETS` points at kube-apiserver
//! and etcd, e.g. `KUBEBUILDER_ASSETS=../shared/envtest cargo test --test e2e_admission`.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/tcp_proxy.rs"]
mod tcp_proxy;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::collections::HashSet;

use e2e::{E2e, annotation, cli_json, eventually, lb};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_returns_the_address_and_concurrent_creates_never_share_one() {
    let Some(t) = E2e::new("create").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 254))]).await;
    t.register().await;
    let wh = t.start_webhook("create-0", &[]).await;
    t.wait_active().await;

    // What `kubectl create service loadbalancer` gets back already carries the address.
    let svc = t
        .services()
        .create(&PostParams::default(), &lb("web", 80))
        .await
        .expect("create");
    assert_eq!(
        annotation(&svc),
        Some(t.ip(1)),
        "address in the CREATE response"
    );
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("implementation").map(String::as_str),
        Some("kube-vip")
    );

    let creates = (0..200).map(|i| {
        let api = t.services();
        async move {
            api.create(&PostParams::default(), &lb(&format!("c{i}"), 80))
                .await
                .map(|s| annotation(&s))
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut seen = HashSet::from([t.ip(1)]);
    for (i, a) in answers.into_iter().enumerate() {
        let ip = a
            .unwrap_or_else(|e| panic!("create c{i}: {e}"))
            .unwrap_or_else(|| panic!("c{i} came back without an address"));
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    assert_eq!(seen.len(), 201);
    assert!(wh.log_lines("denied").is_empty());
}

/// Issue 9: with the webhook down, Services are admitted without an address (failurePolicy
/// Ignore); when it is back the reconciler assigns them, and its own patch, which the apiserver
/// sends back through the webhook as an UPDATE, must be admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_assigns_services_created_while_the_webhook_was_down() {
    let Some(t) = E2e::new("outage").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 100))]).await;
    t.register().await;
    let mut wh = t.start_webhook("outage-0", &[]).await;
    t.wait_active().await;
    wh.terminate();
    wh.wait_exit(e2e::PATIENCE).await;

    for i in 0..20 {
        let svc = t
            .services()
            .create(&PostParams::default(), &lb(&format!("o{i}"), 80))
            .await
            .expect("create while the webhook is down (failurePolicy Ignore)");
        assert_eq!(annotation(&svc), None, "nobody could have allocated");
    }
    let wh = t.start_webhook("outage-1", &[]).await;
    let mut got = HashSet::new();
    for i in 0..20 {
        let name = format!("o{i}");
        let ip = eventually(&format!("{name} to get an address"), || t.address_of(&name)).await;
        assert!(got.insert(ip.clone()), "{ip} handed out twice");
    }
    // The reconciler's writes went through the webhook (UPDATE decisions logged) and none was denied.
    let updates = wh.log_lines("operation=\"UPDATE\"");
    assert!(
        updates.len() >= 20,
        "expected the reconciler's 20 patches to pass the webhook, saw {} UPDATE decisions",
        updates.len()
    );
    assert!(
        wh.log_lines("denied").is_empty(),
        "{:?}",
        wh.log_lines("denied")
    );
    assert!(wh.log_lines("reconcile failed").is_empty());
    // Every reservation was confirmed by the Service showing up: none leaks.
    eventually("reservations to drain", || async {
        let m = wh.metrics().await;
        m.lines()
            .any(|l| l == "kube_vip_webhook_reservations_pending 0")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_services_get_addresses_when_others_go_or_the_pool_grows() {
    let Some(t) = E2e::new("waiting").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 2))]).await;
    t.register().await;
    let _wh = t.start_webhook("waiting-0", &[]).await;
    t.wait_active().await;
    let api = t.services();
    for name in ["a", "b", "c", "d", "e"] {
        api.create(&PostParams::default(), &lb(name, 80))
            .await
            .expect("create");
    }
    assert!(t.address_of("c").await.is_none() && t.address_of("d").await.is_none());

    // A deleted Service frees its address for a waiter.
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let first = eventually("a waiter to get a's address", || async {
        for w in ["c", "d", "e"] {
            if t.address_of(w).await == Some(t.ip(1)) {
                return Some(w);
            }
        }
        None
    })
    .await;
    // A Service that stops being a LoadBalancer frees its address too.
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"type": "ClusterIP", "allocateLoadBalancerNodePorts": null}}),
        ),
    )
    .await
    .expect("turn b into ClusterIP");
    let second = eventually("a waiter to get b's address", || async {
        for w in ["c", "d", "e"] {
            if w != first && t.address_of(w).await == Some(t.ip(2)) {
                return Some(w);
            }
        }
        None
    })
    .await;
    // The pool grows: the last waiter is woken by the ConfigMap change.
    t.set_config(&[(&t.key("range"), &t.range(1, 3))]).await;
    let last = ["c", "d", "e"]
        .into_iter()
        .find(|w| *w != first && *w != second)
        .expect("one left");
    let ip = eventually("the last waiter to get the new address", || {
        t.address_of(last)
    })
    .await;
    assert_eq!(ip, t.ip(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_pins_dry_run_and_generate_name() {
    let Some(t) = E2e::new("updates").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 50))]).await;
    t.register().await;
    let wh = t.start_webhook("updates-0", &[]).await;
    t.wait_active().await;
    let api = t.services();

    // ClusterIP -> LoadBalancer: allocated by the UPDATE's admission.
    let mut cip = lb("cip", 80);
    cip.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
    cip.spec
        .as_mut()
        .expect("spec")
        .allocate_load_balancer_node_ports = None;
    let created = api
        .create(&PostParams::default(), &cip)
        .await
        .expect("create ClusterIP");
    assert_eq!(annotation(&created), None);
    let patched = api
        .patch(
            "cip",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}}),
            ),
        )
        .await
        .expect("to LoadBalancer");
    assert_eq!(annotation(&patched), Some(t.ip(1)));

    // Removing the annotation re-allocates (the old address is still the Service's own).
    let removed = api
        .patch(
            "cip",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/metadata/annotations/kube-vip.io~1loadbalancerIPs"}
                ]))
                .expect("patch"),
            ),
        )
        .await
        .expect("remove the annotation");
    let again = annotation(&removed).expect("re-allocated at admission");
    assert!(again == t.ip(1) || again == t.ip(2), "{again}");

    // Pinning an address another Service uses on the same port is denied, naming the holder.
    let mut pinned = lb("pinned", 80);
    pinned.metadata.annotations = Some([(e2e::ANNOTATION.to_string(), again.clone())].into());
    let err = api
        .create(&PostParams::default(), &pinned)
        .await
        .expect_err("clash must be denied");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}/cip", t.ns)) && text.contains(&again),
        "{text}"
    );
    // On another port it is sharing: admitted.
    let mut shared = lb("shared", 8080);
    shared.metadata.annotations = Some([(e2e::ANNOTATION.to_string(), again.clone())].into());
    let ok = api
        .create(&PostParams::default(), &shared)
        .await
        .expect("sharing");
    assert_eq!(annotation(&ok), Some(again.clone()));

    // dryRun: the answer shows an address, and nothing is held: a real create gets the same one.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let shown = annotation(&api.create(&dry, &lb("dry", 80)).await.expect("dry run"))
        .expect("dry run shows an address");
    assert!(api.get_opt("dry").await.expect("get").is_none());
    let real = annotation(
        &api.create(&PostParams::default(), &lb("real", 80))
            .await
            .expect("create"),
    );
    assert_eq!(real, Some(shown), "dry run must not hold the address");

    // generateName: the name is empty at admission; each gets its own address, kept by the Service.
    let mut gen_svc = lb("", 80);
    gen_svc.metadata.name = None;
    gen_svc.metadata.generate_name = Some("gen-".into());
    let mut gen_ips = HashSet::new();
    for _ in 0..3 {
        let s = api
            .create(&PostParams::default(), &gen_svc)
            .await
            .expect("generateName create");
        let name = s.metadata.name.clone().expect("generated name");
        assert!(name.starts_with("gen-"));
        let ip = annotation(&s).expect("address for a generateName Service");
        assert!(
            gen_ips.insert(ip),
            "generateName Services got the same address"
        );
    }
    assert!(wh.log_lines("reconcile failed").is_empty());
}

/// What the reconciler's error handling relies on, as the real apiserver answers it: a merge
/// patch carrying a stale resourceVersion is a 409 Conflict; an invalid object is a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_answers_stale_writes_409_and_invalid_ones_422() {
    let Some(t) = E2e::new("codes").await else {
        return;
    };
    let api = t.services();
    let svc = api
        .create(&PostParams::default(), &lb("s", 80))
        .await
        .expect("create");
    let rv = svc.metadata.resource_version.clone().expect("rv");
    api.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .expect("bump the resourceVersion");
    let code = |r: Result<k8s_openapi::api::core::v1::Service, kube::Error>| match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    };
    let stale = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv, "labels": {"y": "1"}}})),
        )
        .await;
    assert_eq!(code(stale), 409);
    let invalid = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"big": "x".repeat(300 * 1024)}}})),
        )
        .await;
    assert_eq!(code(invalid), 422);
}

/// Why our watches list in pages from etcd rather than from the watch cache: kube-apiserver 1.28
/// serves `resourceVersion=0` from its cache and ignores `limit` there, so such a list of 100k
/// Services is one response of hundreds of MB, which kube's client buffers whole (twice). The
/// fake apiserver does the same (`tests/fake_apiserver.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_ignores_limit_for_lists_at_resource_version_0() {
    let Some(t) = E2e::new("rv0").await else {
        return;
    };
    let api = t.services();
    for i in 0..6 {
        api.create(&PostParams::default(), &lb(&format!("s{i}"), 80))
            .await
            .expect("create");
    }
    let list = |query: &str| {
        let req = http::Request::get(format!("/api/v1/namespaces/{}/services?{query}", t.ns))
            .body(Vec::new())
            .expect("request");
        let client = t.client.clone();
        async move {
            let v: serde_json::Value = client.request(req).await.expect("list");
            let items = v["items"].as_array().map_or(0, Vec::len);
            (items, v["metadata"]["continue"].is_string())
        }
    };
    assert_eq!(list("limit=2").await, (2, true), "paged from etcd");
    assert_eq!(
        list("limit=2&resourceVersion=0").await,
        (6, false),
        "whole, from the watch cache"
    );
}

/// A write the apiserver refuses for good (here: annotations over the 256 KiB limit once ours is
/// added) is not retried in a loop; its address is free again at once (not after the TTL), and
/// an Event says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_frees_its_address_and_says_why() {
    let Some(t) = E2e::new("refused").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 10))]).await;
    let api = t.services();
    // 256 KiB is the limit for all annotations together; leave no room for ours.
    let mut huge = lb("huge", 80);
    huge.metadata.annotations = Some([("filler".to_string(), "x".repeat(262_144 - 6))].into());
    api.create(&PostParams::default(), &huge)
        .await
        .expect("create at the limit");
    t.register().await;
    let wh = t.start_webhook("refused-0", &[]).await;
    eventually("the refusal", || async {
        (!wh.log_lines("write refused").is_empty()).then_some(())
    })
    .await;
    let event = eventually("an AllocationFailed Event on huge", || async {
        let events: kube::Api<k8s_openapi::api::events::v1::Event> =
            kube::Api::namespaced(t.client.clone(), &t.ns);
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("AllocationFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("huge")
        })
    })
    .await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("refused"), "{note}");
    // The address huge was offered is free at once: the next Service gets it.
    let next = api
        .create(&PostParams::default(), &lb("next", 80))
        .await
        .expect("create");
    assert_eq!(annotation(&next), Some(t.ip(1)));
    // Not retried in a loop: one refusal until huge changes.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(wh.log_lines("write refused").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_live_plan_read_the_cluster() {
    let Some(t) = E2e::new("status").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(1, 2))]).await;
    let api = t.services();
    // Two Services pinned to one address on the same port, created while no webhook checked.
    for name in ["x", "y"] {
        let mut s = lb(name, 80);
        s.metadata.annotations = Some([(e2e::ANNOTATION.to_string(), t.ip(200))].into());
        api.create(&PostParams::default(), &s)
            .await
            .expect("create");
    }
    // The serving certificate as the cert-manager route stores it (Secret kube-vip-webhook-tls in
    // the install namespace), expiring 40.5 days from now: `status` reports 40 whole days left.
    let tls = kube_vip_webhook::tls::generate_self_signed(
        &[format!("kube-vip-webhook.{}.svc", t.ns)],
        std::time::Duration::from_secs(40 * 86_400 + 43_200),
    )
    .expect("certificate");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kube-vip-webhook-tls", "namespace": t.ns},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": tls.cert_pem, "tls.key": tls.key_pem},
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(t.client.clone(), &t.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the certificate Secret");
    t.register().await;
    let _wh = t.start_webhook("status-0", &[]).await;
    t.wait_active().await;
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &lb(name, 80))
            .await
            .expect("create");
    }
    let kubeconfig = t.cp.kubeconfig.display().to_string();
    let common = |cmd: &str| {
        vec![
            cmd.to_string(),
            "--kubeconfig".into(),
            kubeconfig.clone(),
            "--kubevip-namespace".into(),
            t.ns.clone(),
            "-o".into(),
            "json".into(),
        ]
    };
    let mut status_args = common("status");
    status_args.extend(["--namespace".to_string(), t.ns.clone()]);
    let report = cli_json(status_args).await;
    let pool = report["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["key"] == t.key("range").as_str())
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(
        (
            pool["size"].as_u64(),
            pool["used"].as_u64(),
            pool["free"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let waiting: Vec<&serde_json::Value> = report["waiting"]
        .as_array()
        .expect("waiting")
        .iter()
        .filter(|w| w["namespace"] == t.ns.as_str())
        .collect();
    assert_eq!(waiting.len(), 1, "{report}");
    assert_eq!(waiting[0]["name"], "c");
    assert!(
        waiting[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exhausted")
    );
    let x = format!("{}/x", t.ns);
    let y = format!("{}/y", t.ns);
    assert!(
        report["conflicts"]
            .as_array()
            .expect("conflicts")
            .iter()
            .any(|c| c["address"] == t.ip(200).as_str() && c["services"] == json!([x, y])),
        "{report}"
    );
    assert!(
        report["leader"]["holder"]
            .as_str()
            .is_some_and(|h| h.starts_with("status-0_")),
        "{report}"
    );
    let source = format!("Secret {}/kube-vip-webhook-tls (tls.crt)", t.ns);
    let cert = report["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .find(|c| c["source"] == source.as_str())
        .unwrap_or_else(|| panic!("no {source}: {report}"))
        .clone();
    assert_eq!(cert["days_left"], 40, "{report}");
    let not_after = kube_vip_webhook::tls::not_after(&tls.cert_pem).expect("notAfter");
    let unix = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    assert_eq!(cert["not_after"], unix, "{report}");
    // The table, as printed for people.
    let table_args: Vec<String> = common("status")
        .into_iter()
        .take(5)
        .chain(["--namespace".to_string(), t.ns.clone()])
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-vip-webhook"))
            .args(&table_args)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert!(
        table.contains("Waiting for an address") && table.contains("Leader: status-0_"),
        "{table}"
    );
    assert!(
        table.contains(&format!("Certificate: {source} expires in 40 days")),
        "{table}"
    );
    // plan against the live cluster: what the reconciler would do now.
    let plan = cli_json(common("plan")).await;
    let c = plan["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["namespace"] == t.ns.as_str() && r["name"] == "c")
        .unwrap_or_else(|| panic!("{plan}"))
        .clone();
    assert_eq!(c["outcome"], "no_address");
}

/// A watch the network drops resumes from the last resourceVersion it saw (the apiserver's watch
/// cache still has it): no relist, and what changed while it was down reaches the cache.
/// (A watch that cannot resume is relisted: `e2e_relist`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_without_a_relist_and_sees_what_changed() {
    let Some(t) = E2e::new("resume").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(10, 11))]).await;
    t.register().await;
    let proxy =
        tcp_proxy::Proxy::start("127.0.0.1:0".parse().expect("addr"), vec![t.cp.address()]).await;
    let wh = webhook_proc::WebhookProc::spawn(
        "resume-0",
        &t.webhook_args_via("resume-0", proxy.addr),
        &[],
    )
    .await;
    wh.ready(e2e::PATIENCE).await;
    t.wait_active().await;
    let api = t.services();
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &lb(name, 80))
            .await
            .expect("create");
    }
    assert_eq!(t.address_of("b").await, Some(t.ip(11)));
    let listed = wh.log_lines("Service cache listed").len();

    // Every connection of the webhook to the apiserver drops; a is deleted meanwhile.
    proxy.cut();
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    proxy.set_backends(vec![t.cp.address()]);

    // a's address is free again in the webhook's view: the resumed watch brought the delete.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the delete to reach the webhook", || async {
        let svc = api.create(&dry, &lb("next", 80)).await.ok()?;
        (annotation(&svc) == Some(t.ip(10))).then_some(())
    })
    .await;
    assert_eq!(
        wh.log_lines("Service cache listed").len(),
        listed,
        "resumed, not relisted"
    );
}
