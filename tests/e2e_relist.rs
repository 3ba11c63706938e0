//! A watch that cannot resume (its resourceVersion was compacted away while the webhook was cut
//! off from the apiserver) is relisted, and the relisted view is right: on a real kube-apiserver
//! whose Service watches read etcd directly (no watch cache) and which compacts every 2 s, with a
//! TCP proxy between the webhook and the apiserver to cut.
//!
//! Skips unless `KUBEBUILDER_ASSETS` points at kube-apiserver and etcd.

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

use std::time::Duration;

use e2e::{E2e, annotation, eventually, lb};
use kube::api::{DeleteParams, PostParams};
use tcp_proxy::Proxy;
use webhook_proc::WebhookProc;

fn flags(_dir: &std::path::Path) -> Result<Vec<String>, String> {
    Ok(vec![
        "--watch-cache-sizes=services#0".into(),
        "--etcd-compaction-interval=2s".into(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_compaction_sees_what_changed_meanwhile() {
    let _ = envtest::EXTRA_FLAGS.set(flags);
    let Some(t) = E2e::new("relist").await else {
        return;
    };
    t.set_config(&[(&t.key("range"), &t.range(10, 12))]).await;
    t.register().await;
    // The webhook reaches the apiserver only through the proxy.
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), vec![t.cp.address()]).await;
    let args = t.webhook_args_via("relist-0", proxy.addr);
    let wh = WebhookProc::spawn("relist-0", &args, &[]).await;
    wh.ready(e2e::PATIENCE).await;
    t.wait_active().await;
    let api = t.services();
    for name in ["s1", "s2"] {
        api.create(&PostParams::default(), &lb(name, 80))
            .await
            .expect("create");
    }
    assert_eq!(t.address_of("s2").await, Some(t.ip(11)));
    let listed = wh.log_lines("Service cache listed").len();

    // Cut off: its watches end, and etcd compacts past the last resourceVersion they saw.
    proxy.cut();
    api.delete("s1", &DeleteParams::default())
        .await
        .expect("delete");
    api.delete("s2", &DeleteParams::default())
        .await
        .expect("delete");
    // Admitted by the webhook's stale view (another port than s2's: sharing is allowed).
    let mut pinned = lb("pinned", 8080);
    pinned.metadata.annotations = Some([(e2e::ANNOTATION.to_string(), t.ip(11))].into());
    api.create(&PostParams::default(), &pinned)
        .await
        .expect("create pinned");
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.set_backends(vec![t.cp.address()]);

    eventually("the Service cache to be relisted", || async {
        (wh.log_lines("Service cache listed").len() > listed).then_some(())
    })
    .await;
    // The relisted view: s1 and s2 are gone, pinned holds .11 (on 8080; port 80 would clash).
    let next = api
        .create(&PostParams::default(), &lb("next", 80))
        .await
        .expect("create");
    assert_eq!(
        annotation(&next),
        Some(t.ip(10)),
        "s1's address is free again"
    );
    let after = api
        .create(&PostParams::default(), &lb("after", 80))
        .await
        .expect("create");
    assert_eq!(annotation(&after), Some(t.ip(12)), "not pinned's .11");
}
