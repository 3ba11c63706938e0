//! One end-to-end test's world on the shared real control plane: its namespace, its /24 pool, its
//! serving certificate, its MutatingWebhookConfiguration (built from `webhook/`, pointed at
//! 127.0.0.1 and limited to the test's namespace) and the webhook binary serving it.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::envtest::{self, ControlPlane};
pub use super::wait::{PATIENCE, eventually};
use super::webhook_proc::WebhookProc;

pub const ANNOTATION: &str = "kube-vip.io/loadbalancerIPs";

pub struct E2e {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub ns: String,
    /// The test's own /24 (`198.x.y.0/24`) and its first three octets.
    pub pool: String,
    net: [u8; 3],
    /// The webhook port the registration points at (fixed across restarts of the binary).
    pub port: u16,
    pub certs: tempfile::TempDir,
    pub ca_pem: String,
}

impl E2e {
    /// `None` (the test returns early, having printed why) when there is no control plane.
    pub async fn new(prefix: &str) -> Option<E2e> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cp = envtest::control_plane()?;
        let client = cp.client().await;
        let ns = cp.namespace(&client, prefix).await;
        let (pool, net) = cp.unique_pool();
        let certs = tempfile::tempdir().expect("temp dir");
        let names = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            format!("kube-vip-webhook.{ns}.svc"),
        ];
        let tls = kube_vip_webhook::tls::generate_self_signed(&names, Duration::from_secs(86400))
            .expect("certificate");
        for (file, pem) in [
            ("ca.crt", &tls.ca_cert_pem),
            ("tls.crt", &tls.cert_pem),
            ("tls.key", &tls.key_pem),
        ] {
            std::fs::write(certs.path().join(file), pem).expect("write cert");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let t = E2e {
            cp,
            client,
            ns,
            pool,
            net,
            port,
            certs,
            ca_pem: tls.ca_cert_pem,
        };
        t.create_lease().await;
        Some(t)
    }

    /// The ConfigMap key of this test's namespace pool (`range-<ns>`, `cidr-<ns>`, ...). Tests use
    /// namespace pools, never `-global` ones: every webhook under test sees every Service of the
    /// shared cluster, and its reconciler would otherwise allocate other tests' Services.
    pub fn key(&self, kind: &str) -> String {
        format!("{kind}-{}", self.ns)
    }

    /// Address `.last` of the test's /24.
    pub fn ip(&self, last: u8) -> String {
        let [a, b, c] = self.net;
        format!("{a}.{b}.{c}.{last}")
    }

    /// A range of the test's /24, `first..=last`, as a ConfigMap value.
    pub fn range(&self, first: u8, last: u8) -> String {
        format!("{}-{}", self.ip(first), self.ip(last))
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The leader-election Lease as `manifest/base/lease.yaml` ships it (holder-less), in the
    /// test's namespace: the binary never creates it (RBAC has no `create` on leases).
    pub async fn create_lease(&self) {
        let path = repo().join("manifest/base/lease.yaml");
        let text = std::fs::read_to_string(&path).expect("read lease manifest");
        let mut lease: k8s_openapi::api::coordination::v1::Lease =
            serde_yaml_ng::from_str(&text).expect("lease manifest");
        lease.metadata.namespace = Some(self.ns.clone());
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &lease)
            .await
            .expect("create the Lease");
    }

    /// Create or replace the pool ConfigMap `kubevip` in the test namespace.
    pub async fn set_config(&self, data: &[(&str, &str)]) {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubevip", "namespace": self.ns},
            "data": data,
        }))
        .expect("configmap");
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .patch(
                "kubevip",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&cm),
            )
            .await
            .expect("apply kubevip ConfigMap");
    }

    /// Our `webhook/` registration, as shipped, with what a loopback test must change: a URL
    /// client config to 127.0.0.1 with our CA, a unique name, and only this test's namespace.
    pub fn registration(&self) -> MutatingWebhookConfiguration {
        let path = repo().join("webhook/self-signed/mutatingwebhookconfiguration.yaml");
        let text = std::fs::read_to_string(&path).expect("read webhook manifest");
        let mut v: Value = serde_yaml_ng::from_str(&text).expect("webhook manifest YAML");
        v["metadata"]["name"] = json!(format!("kvw-{}", self.ns));
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        for hook in v["webhooks"].as_array_mut().expect("webhooks") {
            hook["clientConfig"] = json!({
                "url": format!("https://127.0.0.1:{}/mutate", self.port),
                "caBundle": ca,
            });
            hook["namespaceSelector"] =
                json!({"matchLabels": {"kubernetes.io/metadata.name": self.ns}});
        }
        serde_json::from_value(v).expect("MutatingWebhookConfiguration")
    }

    pub async fn register(&self) {
        let mwc = self.registration();
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &mwc)
            .await
            .expect("register the webhook");
    }

    pub async fn unregister(&self) {
        let name = format!("kvw-{}", self.ns);
        let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }

    /// Flags for one replica of the webhook serving this test (files route, admin credentials),
    /// on the port the registration points at.
    pub fn webhook_args(&self, pod: &str, extra: &[&str]) -> Vec<String> {
        self.webhook_args_on(pod, &format!("127.0.0.1:{}", self.port), extra)
    }

    /// [`webhook_args`](Self::webhook_args) listening on `listen` (replicas behind a proxy).
    pub fn webhook_args_on(&self, pod: &str, listen: &str, extra: &[&str]) -> Vec<String> {
        let dir = self.certs.path();
        let p = |f: &str| dir.join(f).display().to_string();
        let mut args: Vec<String> = [
            "serve",
            "--kubeconfig",
            &self.cp.kubeconfig.display().to_string(),
            "--listen",
            listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-cert-file",
            &p("tls.crt"),
            "--tls-key-file",
            &p("tls.key"),
            "--tls-ca-file",
            &p("ca.crt"),
            "--kubevip-namespace",
            &self.ns,
            "--pod-namespace",
            &self.ns,
            "--pod-name",
            pod,
            "--pod-ip",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// [`webhook_args`](Self::webhook_args) reaching the apiserver at `apiserver` instead (a
    /// proxy in between, to cut the webhook off); its kubeconfig is written for `pod`.
    pub fn webhook_args_via(&self, pod: &str, apiserver: std::net::SocketAddr) -> Vec<String> {
        let kubeconfig = self.certs.path().join(format!("{pod}.kubeconfig"));
        envtest::write_kubeconfig(
            &kubeconfig,
            &format!("https://{apiserver}"),
            &self.cp.ca_pem,
            envtest::ADMIN_TOKEN,
            &self.ns,
        )
        .expect("kubeconfig");
        let mut args = self.webhook_args(pod, &[]);
        let at = args.iter().position(|a| a == "--kubeconfig").expect("flag") + 1;
        args[at] = kubeconfig.display().to_string();
        args
    }

    /// Start the binary on the registered port and wait until it is ready.
    pub async fn start_webhook(&self, pod: &str, extra: &[&str]) -> WebhookProc {
        let proc = WebhookProc::spawn(pod, &self.webhook_args(pod, extra), &[]).await;
        proc.ready(PATIENCE).await;
        proc
    }

    /// Wait until the apiserver calls the webhook for this namespace (registration changes take
    /// about a second to reach the apiserver): a dry-run create comes back with an address.
    pub async fn wait_active(&self) {
        let probe = lb("probe", 80);
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        eventually("the webhook registration to take effect", || async {
            let svc = self.services().create(&params, &probe).await.ok()?;
            annotation(&svc)
        })
        .await;
    }

    /// Current annotation of a Service.
    pub async fn address_of(&self, name: &str) -> Option<String> {
        let svc = self.services().get_opt(name).await.ok()??;
        annotation(&svc)
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A LoadBalancer Service with one TCP port; no NodePorts (30000-32767 would run out).
pub fn lb(name: &str, port: i32) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": port, "protocol": "TCP"}],
        }
    }))
    .expect("service")
}

pub fn annotation(svc: &Service) -> Option<String> {
    svc.metadata.annotations.as_ref()?.get(ANNOTATION).cloned()
}

/// Run the binary's read-only commands against the envtest cluster as an operator would.
pub async fn cli_json(args: Vec<String>) -> serde_json::Value {
    let out = cli_text(args, None).await;
    serde_json::from_str(&out).expect("JSON on stdout")
}

/// [`cli_json`] for what people read (tables): stdout. `kubeconfig` is given as `$KUBECONFIG`,
/// which `--live` reads; without it the command sees no `$KUBECONFIG`.
pub async fn cli_text(args: Vec<String>, kubeconfig: Option<PathBuf>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kube-vip-webhook"));
        cmd.args(&args);
        match kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path),
            None => cmd.env_remove("KUBECONFIG"),
        };
        cmd.output().expect("run the binary")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 on stdout")
}

/// Install the VIPPool CRD as `manifest/base/crd.yaml` ships it (once per control plane: an
/// existing one is kept) and wait until the apiserver serves it.
pub async fn install_pool_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let text = std::fs::read_to_string(repo().join("manifest/base/crd.yaml")).expect("read CRD");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).expect("CRD manifest");
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create the VIPPool CRD: {e}"),
    }
    let pools = Api::<kube_vip_webhook::pools::VIPPool>::all(client.clone());
    eventually("the VIPPool CRD to be served", || async {
        pools
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}
