//! Harness for the attack tests: the real webhook router on the real server, in cluster mode
//! (reservations with a TTL, as in a cluster; no apiserver needed), reviews as the apiserver or
//! an attacker would send them, and a raw HTTP/2 writer for clients that break the rules.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::Options;
use kube_vip_webhook::metrics::Metrics;
use kube_vip_webhook::server::Limits;
use kube_vip_webhook::state::{Allocator, Confirm, Quotas};
use kube_vip_webhook::webhook::{self, WebhookState};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::tls_support as tls;

pub const LB_IPS: &str = "kube-vip.io/loadbalancerIPs";

/// A webhook server under attack.
pub struct Target {
    pub addr: SocketAddr,
    pub ca: String,
    pub allocator: Arc<Allocator>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Target {
    /// Cluster-mode allocator (30 s reservations) over `pool` (`cidr-global`), served with
    /// `limits`, bounded by `quotas`.
    pub async fn start(pool: &str, quotas: Quotas, limits: Limits) -> Target {
        let generated =
            kube_vip_webhook::tls::generate_self_signed(&tls::names(), Duration::from_secs(3600))
                .unwrap();
        let config =
            kube_vip_webhook::tls::server_config_from_pem(&generated.cert_pem, &generated.key_pem)
                .unwrap();
        Target::start_with_tls(pool, quotas, limits, config, generated.ca_cert_pem).await
    }

    pub async fn start_with_tls(
        pool: &str,
        quotas: Quotas,
        limits: Limits,
        config: Arc<rustls::ServerConfig>,
        ca: String,
    ) -> Target {
        tls::install_provider();
        let allocator = Arc::new(
            Allocator::new(
                Options::default(),
                Confirm::ByCache {
                    ttl: Duration::from_secs(30),
                },
                "kube-system/kubevip",
            )
            .with_quotas(quotas),
        );
        let data: BTreeMap<String, String> = [("cidr-global".to_string(), pool.to_string())].into();
        allocator.set_config(Some(Config::from_data(&data)));
        let metrics = Arc::new(Metrics::new(allocator.clone()));
        let leadership = kube_vip_webhook::leadership::Leadership::single(None);
        leadership.set_synced();
        let app = webhook::router(WebhookState {
            allocator: allocator.clone(),
            metrics,
            leadership,
            forward: None,
        });
        let (listener, addr) = tls::listener();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kube_vip_webhook::server::serve_https_with(
            listener,
            config,
            app,
            shutdown.clone(),
            Duration::from_secs(1),
            limits,
        ));
        Target {
            addr,
            ca,
            allocator,
            shutdown,
            task,
        }
    }

    /// A client trusting the server (every request on a fresh connection).
    pub fn client(&self) -> reqwest::Client {
        tls::https_client(&self.ca, self.addr, tls::Http::Two)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

static UID: AtomicU64 = AtomicU64::new(1);

pub fn next_uid() -> String {
    let n = UID.fetch_add(1, Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A LoadBalancer Service with `ports` ((port, protocol) pairs) and, when given, a requested
/// address list in the annotation.
pub fn service(ns: &str, name: &str, ports: &[(i32, &str)], requested: Option<&str>) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, proto)| json!({"port": port, "protocol": proto}))
        .collect();
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": ports},
    });
    if let Some(r) = requested {
        svc["metadata"]["annotations"] = json!({ LB_IPS: r });
    }
    svc
}

/// A CREATE review of `svc` with a fresh UID.
pub fn create(svc: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": next_uid(),
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "name": svc["metadata"]["name"],
            "namespace": svc["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:evil:evil"},
            "object": svc,
            "dryRun": false,
        }
    })
}

/// `n` distinct (port, protocol) pairs starting at `first`, stepping by `step` (over TCP,
/// then UDP, then SCTP when ports run out).
pub fn many_ports(n: usize, first: i32, step: i32) -> Vec<(i32, &'static str)> {
    let protocols = ["TCP", "UDP", "SCTP"];
    let per = (65535 - first) / step + 1;
    (0..n as i32)
        .map(|i| (first + (i % per) * step, protocols[(i / per) as usize % 3]))
        .collect()
}

/// Ports 1..=n over `protocol`.
pub fn ports_on(n: usize, protocol: &'static str) -> Vec<(i32, &'static str)> {
    (1..=n as i32).map(|p| (p, protocol)).collect()
}

/// A decoded answer.
pub struct Answer {
    pub status: u16,
    pub bytes: usize,
    pub review: Value,
}

impl Answer {
    pub fn allowed(&self) -> bool {
        self.review["response"]["allowed"] == true
    }

    pub fn message(&self) -> String {
        self.review["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.review["response"]["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The address the patch writes, if any.
    pub fn address(&self) -> Option<String> {
        use base64::Engine as _;
        let patch = self.review["response"]["patch"].as_str()?;
        let ops: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(patch)
                .unwrap(),
        )
        .unwrap();
        let key = format!("/metadata/annotations/{}", LB_IPS.replace('/', "~1"));
        ops.as_array()?
            .iter()
            .find(|op| op["path"] == key.as_str())
            .and_then(|op| op["value"].as_str())
            .map(str::to_string)
    }
}

/// POST the CREATE review of a Service to `/mutate` (see [`service`]).
pub async fn post_create(
    client: &reqwest::Client,
    addr: SocketAddr,
    (ns, name): (&str, &str),
    ports: &[(i32, &str)],
    requested: Option<&str>,
) -> Answer {
    let review = create(&service(ns, name, ports, requested));
    post(
        client,
        addr,
        serde_json::to_vec(&review).expect("review JSON"),
    )
    .await
}

/// POST a body to `/mutate`.
pub async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: impl Into<reqwest::Body>,
) -> Answer {
    let resp = client
        .post(tls::url(addr, "/mutate"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let review = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        bytes: bytes.len(),
        review,
    }
}

/// A legitimate CREATE (one port) in `ns`: the address it got.
pub async fn legit_create(
    client: &reqwest::Client,
    addr: SocketAddr,
    ns: &str,
    name: &str,
) -> Option<IpAddr> {
    let answer = post(
        client,
        addr,
        serde_json::to_vec(&create(&service(ns, name, &[(80, "TCP")], None))).unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.allowed(), "{}", answer.review);
    answer.address().map(|a| a.parse().unwrap())
}

/// Resident set size of this process, from /proc (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2, for a client that ignores the server's settings.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const SETTINGS: u8 = 0x4;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const GOAWAY: u8 = 0x7;
pub const PING: u8 = 0x6;
pub const DATA: u8 = 0x0;
pub const END_STREAM: u8 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK "literal header field without indexing, new name" for each pair (short strings only).
pub fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A frame as read back.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// The (id, value) pairs of a SETTINGS payload.
pub fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// Write all of `bytes`.
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Maximal reviews

/// The largest review the webhook accepts and allocates for, split around its UID so that
/// every request is a new admission without copying megabytes: a CREATE of a Service with
/// `service::MAX_PORTS` ports and a last-applied annotation filling the body up to `size`.
pub struct MaximalReview {
    head: axum::body::Bytes,
    tail: axum::body::Bytes,
}

impl MaximalReview {
    pub fn new(size: usize) -> MaximalReview {
        let ports: Vec<Value> = many_ports(kube_vip_webhook::service::MAX_PORTS, 1, 1)
            .iter()
            .map(|(p, proto)| json!({"port": p, "protocol": proto}))
            .collect();
        let object = |filler: &str| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "max", "namespace": "flood", "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": filler}},
                "spec": {"type": "LoadBalancer", "ports": ports},
            })
        };
        let tail = |filler: &str| {
            format!(
                r#"","kind":{{"group":"","version":"v1","kind":"Service"}},"resource":{{"group":"","version":"v1","resource":"services"}},"name":"max","namespace":"flood","operation":"CREATE","userInfo":{{}},"object":{}}}}}"#,
                object(filler)
            )
        };
        let head =
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#;
        let without = head.len() + 36 + tail("").len();
        let filler = "f".repeat(size.saturating_sub(without));
        MaximalReview {
            head: axum::body::Bytes::from_static(head.as_bytes()),
            tail: axum::body::Bytes::from(tail(&filler)),
        }
    }

    /// A body for a new admission (fresh UID), sharing the large part.
    pub fn body(&self) -> reqwest::Body {
        let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = vec![
            Ok(self.head.clone()),
            Ok(axum::body::Bytes::from(next_uid())),
            Ok(self.tail.clone()),
        ];
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    }

    pub fn len(&self) -> usize {
        self.head.len() + 36 + self.tail.len()
    }
}
