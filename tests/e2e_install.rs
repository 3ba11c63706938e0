//! The install on a real kube-apiserver (envtest): both overlays pass strict server-side
//! validation, and the self-signed route runs with nothing but its own ServiceAccount's token.
//!
//! Skips unless `KUBEBUILDER_ASSETS` points at kube-apiserver and etcd.

#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/envtest.rs"]
mod envtest;
#[path = "support/kustomize.rs"]
mod kustomize;
#[path = "support/wait.rs"]
mod wait;
#[path = "support/webhook_proc.rs"]
mod webhook_proc;

use std::time::Duration;

use e2e::{annotation, eventually, lb};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde_json::{Value, json};
use webhook_proc::WebhookProc;

const NAMESPACE: &str = "kube-system";
const MANAGER: &str = "e2e-install";

fn gvk(v: &Value) -> GroupVersionKind {
    let (group, version) = kustomize::group_version(v);
    GroupVersionKind::gvk(&group, &version, kustomize::str_at(v, "/kind"))
}

/// Server-side apply of one rendered object (`dry_run`: validated and admitted, not stored).
/// `Ok(false)` when the apiserver does not serve its kind (cert-manager's, on a bare cluster).
async fn apply(client: &Client, v: &Value, dry_run: bool) -> Result<bool, String> {
    let gvk = gvk(v);
    let Ok((resource, caps)) = discovery::pinned_kind(client, &gvk).await else {
        return Ok(false);
    };
    let name = kustomize::str_at(v, "/metadata/name");
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            kustomize::str_at(v, "/metadata/namespace"),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply(MANAGER).force().validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(v))
        .await
        .map(|_| true)
        .map_err(|e| format!("{} {name}: {e}", gvk.kind))
}

/// Both routes and the monitoring component as `kubectl apply --dry-run=server --validate=strict
/// -k` would send them: every field known to the 1.28 schema, every object valid. Kinds of CRDs
/// not installed here (cert-manager's, the Prometheus Operator's) are skipped; the typed round
/// trip in tests/manifests.rs checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kustomization_passes_strict_server_side_validation() {
    let Some(cp) = envtest::control_plane() else {
        return;
    };
    let client = cp.client().await;
    for route in [
        "overlays/cert-manager",
        "overlays/self-signed",
        "monitoring",
    ] {
        let rendered =
            kustomize::render(&kustomize::repo().join("manifest").join(route)).expect("render");
        let mut checked = 0;
        let mut skipped = Vec::new();
        for doc in &rendered.docs {
            match apply(&client, &doc.value, true).await {
                Ok(true) => checked += 1,
                Ok(false) => skipped.push(gvk(&doc.value).kind),
                Err(e) => panic!("{route}: {} is refused: {e}", doc.origin),
            }
        }
        eprintln!(
            "{route}: {checked} objects valid on the apiserver; not served here: {skipped:?}"
        );
        assert!(checked >= 3, "{route}: only {checked} objects checked");
        // CRDs of cert-manager and the Prometheus Operator, not installed here.
        let crds = ["Issuer", "Certificate", "ServiceMonitor", "PrometheusRule"];
        assert!(
            skipped.iter().all(|k| crds.contains(&k.as_str())),
            "{skipped:?}"
        );
    }
}

fn container(deployment: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0]
}

/// A container's env as the kubelet would set it for a pod named `pod` with IP 127.0.0.1.
fn pod_env(deployment: &Deployment, pod: &str) -> Vec<(String, String)> {
    let container = container(deployment);
    let mut env = Vec::new();
    for e in container.env.iter().flatten() {
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.namespace" => NAMESPACE.to_string(),
                "metadata.name" => pod.to_string(),
                "status.podIP" => "127.0.0.1".to_string(),
                other => panic!("unexpected fieldRef {other}"),
            },
            _ => continue,
        };
        env.push((e.name.clone(), value));
    }
    env
}

/// The self-signed route applied as shipped (only the registration's client config changed to a
/// loopback URL: no Service routing here), the binary run with the Deployment's own arguments and
/// environment and a token of its ServiceAccount: it fills its Secret, patches the caBundle,
/// holds the Lease, the apiserver calls it, the reconciler assigns, Events are written, and
/// nothing is forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_route_runs_with_its_own_service_account() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(cp) = envtest::control_plane() else {
        return;
    };
    let admin = cp.client().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let rendered = kustomize::render(&kustomize::repo().join("manifest/overlays/self-signed"))
        .expect("render");
    let mut deployment = None;
    for doc in &rendered.docs {
        let mut v = doc.value.clone();
        match kustomize::str_at(&v, "/kind") {
            "MutatingWebhookConfiguration" => {
                for hook in v["webhooks"].as_array_mut().expect("webhooks") {
                    hook["clientConfig"] =
                        json!({"url": format!("https://127.0.0.1:{port}/mutate")});
                }
            }
            "Deployment" => {
                deployment =
                    Some(serde_json::from_value::<Deployment>(v.clone()).expect("Deployment"))
            }
            _ => {}
        }
        assert!(
            apply(&admin, &v, false).await.expect("apply"),
            "{} not served",
            doc.origin
        );
    }
    let deployment = deployment.expect("the route has a Deployment");
    let (pool, _) = cp.unique_pool();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kubevip", "namespace": NAMESPACE},
        "data": {"cidr-global": pool},
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &cm)
        .await
        .expect("pool ConfigMap");
    let apps = cp.namespace(&admin, "apps").await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &apps);
    // Created before the webhook runs (failurePolicy Ignore): only the reconciler can fill it.
    let early = services
        .create(&PostParams::default(), &lb("early", 80))
        .await
        .expect("create");
    assert_eq!(annotation(&early), None);

    // The ServiceAccount's own credentials, as the pod would have them.
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create_token_request(
            "kube-vip-webhook",
            &PostParams::default(),
            &serde_json::from_value::<TokenRequest>(
                json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
            )
            .expect("token request"),
        )
        .await
        .expect("TokenRequest")
        .status
        .expect("token")
        .token;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("sa.kubeconfig");
    envtest::write_kubeconfig(&kubeconfig, &cp.server, &cp.ca_pem, &token, NAMESPACE)
        .expect("kubeconfig");

    let container = container(&deployment);
    let mut args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .filter(|a| !a.starts_with("--listen=") && !a.starts_with("--admin-listen="))
        .cloned()
        .collect();
    args.extend([
        format!("--listen=127.0.0.1:{port}"),
        "--admin-listen=127.0.0.1:0".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        // Registered by URL on loopback: the certificate must name 127.0.0.1 too.
        "--cert-extra-names=127.0.0.1".to_string(),
    ]);
    let pod = "kube-vip-webhook-5d8f-x1";
    let wh = WebhookProc::spawn(pod, &args, &pod_env(&deployment, pod)).await;
    wh.ready(e2e::PATIENCE).await;

    let secret = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get("kube-vip-webhook-selfsigned")
        .await
        .expect("Secret");
    assert!(
        secret.data.is_some_and(|d| d.contains_key("tls.crt")),
        "Secret filled"
    );
    eventually("the caBundle to be patched", || async {
        let mwc = Api::<MutatingWebhookConfiguration>::all(admin.clone())
            .get("kube-vip-webhook")
            .await
            .ok()?;
        let hooks = mwc.webhooks?;
        hooks
            .iter()
            .all(|h| {
                h.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            })
            .then_some(())
    })
    .await;
    eventually("the Lease to be held", || async {
        let l = Api::<Lease>::namespaced(admin.clone(), NAMESPACE)
            .get("kube-vip-webhook")
            .await
            .ok()?;
        l.spec?
            .holder_identity?
            .starts_with(&format!("{pod}_"))
            .then_some(())
    })
    .await;
    let early_ip = eventually("the reconciler to assign the early Service", || async {
        annotation(&services.get("early").await.ok()?)
    })
    .await;
    // Through the apiserver, at admission (once the registration and the leader are in place).
    let admitted = eventually("an address at admission", || async {
        let svc = services
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &lb("late", 80),
            )
            .await
            .ok()?;
        annotation(&svc)
    })
    .await;
    assert_ne!(admitted, early_ip);
    let events = eventually("an IPAllocated Event", || async {
        let list = Api::<Event>::namespaced(admin.clone(), &apps)
            .list(&ListParams::default())
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("IPAllocated"))
    })
    .await;
    assert_eq!(
        events.regarding.and_then(|r| r.name).as_deref(),
        Some("early")
    );
    // A VIPPool (the CRD came with the route) gets its status from the leader, written with the
    // ServiceAccount's token (vippools/status). It selects no Service here.
    let pools = Api::<kube_vip_webhook::pools::VIPPool>::all(admin.clone());
    let vpool = kube_vip_webhook::pools::VIPPool::new(
        "install",
        serde_json::from_value(json!({
            "addresses": ["192.0.2.0/30"],
            "serviceSelector": {"matchLabels": {"never": "matches"}}
        }))
        .expect("pool spec"),
    );
    pools
        .create(&PostParams::default(), &vpool)
        .await
        .expect("create VIPPool");
    let free = eventually("the VIPPool status", || async {
        pools
            .get("install")
            .await
            .ok()?
            .status?
            .ipv4
            .map(|u| u.free)
    })
    .await;
    assert_eq!(free, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = wh.log_text();
    for bad in ["forbidden", "Forbidden"] {
        assert!(!log.contains(bad), "{bad} in the log:\n{log}");
    }
    // The code 403 as a word: the microseconds of a timestamp (`.714403Z`) are not one.
    let code = regex::Regex::new(r"\b403\b").expect("pattern");
    assert!(!code.is_match(&log), "403 in the log:\n{log}");
    let _ = Api::<Namespace>::all(admin).get(&apps).await;
}
