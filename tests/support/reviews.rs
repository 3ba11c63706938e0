//! AdmissionReviews as the apiserver sends them, sent straight to a webhook over HTTPS, and
//! what its answers say.
#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;

use base64::Engine as _;
use serde_json::{Value, json};

pub const ANNOTATION: &str = "kube-vip.io/loadbalancerIPs";

/// A CREATE review of a one-port LoadBalancer Service.
pub fn create(uid: &str, ns: &str, name: &str, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "requestKind": {"group": "", "version": "v1", "kind": "Service"},
            "namespace": ns, "name": name, "operation": "CREATE", "userInfo": {},
            "dryRun": dry_run,
            "object": {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": ns},
                       "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}
        }
    })
}

/// An HTTPS client trusting only `ca_pem`; send to `https://localhost:<port>/mutate`.
pub fn client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .build()
        .expect("client")
}

/// [`client`] presenting a client certificate (PEM certificate and key), as the apiserver does
/// when the webhook requires one.
pub fn client_with_identity(ca_pem: &str, cert_pem: &str, key_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity =
        reqwest::Identity::from_pem(format!("{cert_pem}{key_pem}").as_bytes()).expect("identity");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .identity(identity)
        .build()
        .expect("client")
}

/// POST `review` to the webhook at `addr`, optionally marked as forwarded by another replica.
pub async fn send(
    client: &reqwest::Client,
    addr: SocketAddr,
    review: &Value,
    forwarded: bool,
) -> Value {
    let mut req = client
        .post(format!("https://localhost:{}/mutate", addr.port()))
        .json(review);
    if forwarded {
        req = req.header("x-kube-vip-webhook-forwarded", "1");
    }
    req.send()
        .await
        .expect("send review")
        .json()
        .await
        .expect("AdmissionReview answer")
}

/// The address the answer's patch writes, if any.
pub fn address(answer: &Value) -> Option<String> {
    let patch = answer["response"]["patch"].as_str()?;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64 patch"),
    )
    .expect("JSON patch");
    let key = format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"));
    ops.as_array()?
        .iter()
        .find(|op| op["path"] == key.as_str())
        .and_then(|op| op["value"].as_str())
        .map(str::to_string)
}
