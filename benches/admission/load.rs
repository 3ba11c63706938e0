//! Closed-loop load over keep-alive HTTPS connections, with latencies recorded per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::review::{self, Mix};

pub const H1_CONNECTIONS: usize = 32;
pub const H2_CONNECTIONS: usize = 4;
pub const H2_STREAMS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub enum Http {
    /// HTTP/1.1, `H1_CONNECTIONS` connections (saturating).
    One,
    /// HTTP/2, `H2_CONNECTIONS` x `H2_STREAMS` (saturating).
    Two,
    /// HTTP/1.1, one connection, one request at a time: the unsaturated case.
    Single,
}

impl Http {
    pub fn label(self) -> &'static str {
        match self {
            Http::One => "h1.1",
            Http::Two => "h2",
            Http::Single => "1conn",
        }
    }

    /// Whether this load saturates the machine.
    pub fn saturating(self) -> bool {
        !matches!(self, Http::Single)
    }
}

/// What a set of slices measured.
#[derive(Default)]
pub struct Stats {
    /// Request latencies in nanoseconds (sorted lazily).
    latencies: Vec<u64>,
    busy: Duration,
    /// CPU time of the server's and the load generator's threads during the slices.
    pub server_cpu: Duration,
    pub client_cpu: Duration,
    pub errors: u64,
    pub denied: u64,
    pub patched: u64,
}

impl Stats {
    pub fn add(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        self.busy += other.busy;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.errors += other.errors;
        self.denied += other.denied;
        self.patched += other.patched;
    }

    pub fn count(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub fn rps(&self) -> f64 {
        self.count() as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    /// Server CPU per request, in nanoseconds.
    pub fn server_cpu_per_request(&self) -> f64 {
        self.server_cpu.as_nanos() as f64 / self.count().max(1) as f64
    }

    /// Load generator CPU per request, in nanoseconds.
    pub fn client_cpu_per_request(&self) -> f64 {
        self.client_cpu.as_nanos() as f64 / self.count().max(1) as f64
    }

    /// Nearest-rank percentile, in nanoseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.latencies.is_empty() {
            return 0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Clients (one connection each) against one server, and the request numbering of a run.
pub struct Load {
    clients: Vec<reqwest::Client>,
    streams: usize,
    url: String,
    mix: Mix,
    dry_run: bool,
    tag: u32,
    next: Arc<AtomicU64>,
    cap: u64,
}

/// CPU time so far of this process's threads named `name` (tokio names every worker of a runtime
/// alike), from `/proc/self/task/*/schedstat` (nanoseconds). Zero where /proc is unavailable.
pub fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Load {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ca_pem: &str,
        server_name: &str,
        addr: SocketAddr,
        http: Http,
        mix: Mix,
        dry_run: bool,
        cap: u64,
        label: &str,
    ) -> Load {
        let (connections, streams) = match http {
            Http::One => (H1_CONNECTIONS, 1),
            Http::Two => (H2_CONNECTIONS, H2_STREAMS),
            Http::Single => (1, 1),
        };
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
        let clients = (0..connections)
            .map(|_| {
                let b = reqwest::Client::builder()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(ca.clone())
                    .resolve(server_name, addr)
                    .pool_max_idle_per_host(usize::MAX)
                    .timeout(Duration::from_secs(10));
                match http {
                    Http::One | Http::Single => b.http1_only(),
                    Http::Two => b.http2_prior_knowledge(),
                }
                .build()
                .expect("HTTP client")
            })
            .collect();
        // Names differ between runs and servers, so no two requests of the process look alike.
        let tag = label.bytes().fold(addr.port() as u32, |h, b| {
            h.wrapping_mul(31).wrapping_add(b as u32)
        });
        Load {
            clients,
            streams,
            url: format!("https://{server_name}:{}/mutate", addr.port()),
            mix,
            dry_run,
            tag,
            next: Arc::new(AtomicU64::new(0)),
            cap,
        }
    }

    /// Drive every connection for `duration` (then let in-flight requests finish); with `record`,
    /// return the requests that completed. Stops early once `cap` requests were sent in this run.
    pub async fn slice(&self, duration: Duration, record: bool) -> Stats {
        let (server_before, client_before) = (thread_cpu("server"), thread_cpu("client"));
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for client in &self.clients {
            for _ in 0..self.streams {
                let (client, url, next) = (client.clone(), self.url.clone(), self.next.clone());
                let (mix, dry_run, tag, cap) = (self.mix, self.dry_run, self.tag, self.cap);
                tasks.spawn(async move {
                    let mut s = Stats::default();
                    while Instant::now() < deadline {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= cap {
                            break;
                        }
                        let body = review::body(mix, dry_run, tag, n);
                        let t = Instant::now();
                        let sent = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let answer = match sent {
                            Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                            _ => None,
                        };
                        let latency = t.elapsed();
                        let Some(answer) = answer else {
                            s.errors += 1;
                            continue;
                        };
                        s.latencies.push(latency.as_nanos() as u64);
                        if !contains(&answer, br#""allowed":true"#) {
                            s.denied += 1;
                        }
                        if contains(&answer, br#""patch":""#) {
                            s.patched += 1;
                        }
                    }
                    s
                });
            }
        }
        let mut total = Stats::default();
        while let Some(done) = tasks.join_next().await {
            total.add(done.expect("load task"));
        }
        total.busy = started.elapsed();
        total.server_cpu = thread_cpu("server").saturating_sub(server_before);
        total.client_cpu = thread_cpu("client").saturating_sub(client_before);
        if record { total } else { Stats::default() }
    }
}
