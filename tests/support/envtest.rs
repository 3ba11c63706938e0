//! A real control plane for end-to-end tests: etcd and kube-apiserver from `KUBEBUILDER_ASSETS`
//! (controller-runtime's envtest convention), started once per test binary on free loopback ports.
//!
//! ```ignore
//! let Some(cp) = envtest::control_plane() else { return }; // prints why it skips
//! let client = cp.client().await;                           // admin, for this test's runtime
//! let ns = cp.namespace(&client, "my-test").await;          // fresh namespace per test
//! ```
//!
//! Teardown: the processes belong to the test binary, which never runs destructors of statics, so
//! a watchdog shell polls the test process and kills etcd and the apiserver and removes the temp
//! dir when it is gone, however it ended (pass, panic, abort, SIGKILL).
#![allow(dead_code)] // each test binary uses a different part

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};

/// The admin credential (`--token-auth-file`): group system:masters.
pub const ADMIN_TOKEN: &str = "envtest-admin-token";
/// How long the control plane may take to become ready (measured ~5 s on 2 busy cores).
const START_DEADLINE: Duration = Duration::from_secs(40);

pub struct ControlPlane {
    /// Temp dir with certs, data, logs and the admin kubeconfig.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// PEM the apiserver serves (self-signed, SAN 127.0.0.1): trust it as the CA.
    pub ca_pem: String,
    /// Admin kubeconfig (token auth).
    pub kubeconfig: PathBuf,
    /// Where the apiserver's own log goes (for post-mortems).
    pub apiserver_log: PathBuf,
    /// Kept so a process that dies is noticed; the watchdog does the killing.
    children: Mutex<Vec<Child>>,
    next_pool: AtomicU32,
}

/// Why there is no control plane.
enum Absent {
    /// No assets: the e2e tests skip (a user's machine).
    Skip(String),
    /// Assets present but the control plane did not come up: a failure, never a skip.
    Failed(String),
}

/// The shared control plane, started on first use; `None` (after one line saying why) when the
/// assets are not available: the e2e tests then pass without doing anything. Panics when the
/// assets are there but the control plane does not start.
pub fn control_plane() -> Option<&'static ControlPlane> {
    static CP: OnceLock<Result<ControlPlane, Absent>> = OnceLock::new();
    // Started on a plain thread: the caller is inside a tokio runtime, and start-up blocks.
    let cp = CP.get_or_init(|| {
        let assets = assets().map_err(Absent::Skip)?;
        std::thread::spawn(move || start(&assets))
            .join()
            .unwrap_or_else(|_| Err("control plane start panicked".into()))
            .map_err(Absent::Failed)
    });
    match cp {
        Ok(cp) => Some(cp),
        Err(Absent::Skip(why)) => {
            eprintln!("skipping end-to-end test: {why}");
            None
        }
        Err(Absent::Failed(why)) => panic!("the envtest control plane did not start: {why}"),
    }
}

/// Where the assets are, if they are usable; the reason otherwise.
fn assets() -> Result<PathBuf, String> {
    let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS") else {
        return Err(
            "KUBEBUILDER_ASSETS is not set (point it at a folder with kube-apiserver and \
                    etcd, e.g. KUBEBUILDER_ASSETS=../shared/envtest)"
                .into(),
        );
    };
    let dir = PathBuf::from(dir);
    for bin in ["kube-apiserver", "etcd"] {
        if !dir.join(bin).is_file() {
            return Err(format!("KUBEBUILDER_ASSETS={} has no {bin}", dir.display()));
        }
    }
    Ok(dir)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

/// A runnable copy of an asset (a copied folder may have lost its run bits).
fn runnable(assets: &Path, bin: &str, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let src = assets.join(bin);
    let mode = std::fs::metadata(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .permissions()
        .mode();
    if mode & 0o111 != 0 {
        return Ok(src);
    }
    let copy = dir.join(bin);
    std::fs::copy(&src, &copy).map_err(|e| format!("copy {}: {e}", src.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(copy)
}

fn start(assets: &Path) -> Result<ControlPlane, String> {
    let dir = tempfile::Builder::new()
        .prefix("kvw-envtest-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let watchdog = watchdog(&dir)?;
    let etcd_bin = runnable(assets, "etcd", &dir)?;
    let apiserver_bin = runnable(assets, "kube-apiserver", &dir)?;

    let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let mut etcd = Command::new(etcd_bin);
    etcd.args(["--data-dir", &dir.join("etcd").display().to_string()])
        .args(["--listen-client-urls", &etcd_url])
        .args(["--advertise-client-urls", &etcd_url])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        // Small and quick: a test cluster, not durability.
        .args(["--unsafe-no-fsync", "--quota-backend-bytes", "4294967296"]);
    // etcd reads ETCD_* variables as flags and refuses duplicates.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            etcd.env_remove(k);
        }
    }
    let etcd = spawn_logged(etcd, &dir, "etcd")?;

    // The signing key may be PKCS#8; the verifying side reads only public keys or PKCS#1/SEC1.
    let sa_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    std::fs::write(dir.join("sa.key"), sa_key.serialize_pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("sa.pub"), sa_key.public_key_pem()).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
    )
    .map_err(|e| e.to_string())?;
    let cert_dir = dir.join("certs");
    let mut api = Command::new(apiserver_bin);
    api.args(["--etcd-servers", &etcd_url])
        .args(["--bind-address", "127.0.0.1"])
        .args(["--secure-port", &api_port.to_string()])
        .args(["--cert-dir", &cert_dir.display().to_string()])
        .args(["--service-account-issuer", "https://kubernetes.default.svc"])
        .args([
            "--service-account-key-file",
            &dir.join("sa.pub").display().to_string(),
        ])
        .args([
            "--service-account-signing-key-file",
            &dir.join("sa.key").display().to_string(),
        ])
        .args(["--authorization-mode", "RBAC"])
        .args([
            "--token-auth-file",
            &dir.join("tokens.csv").display().to_string(),
        ])
        .args(["--service-cluster-ip-range", "10.0.0.0/16"])
        .args(["--advertise-address", "127.0.0.1"]);
    extra_apiserver_flags(&mut api, &dir)?;
    let apiserver = spawn_logged(api, &dir, "kube-apiserver")?;
    // Record the pids for the watchdog (it started first, so nothing can leak past it).
    std::fs::write(
        dir.join("pids"),
        format!("{} {}\n", etcd.id(), apiserver.id()),
    )
    .map_err(|e| e.to_string())?;

    let server = format!("https://127.0.0.1:{api_port}");
    let ca_path = cert_dir.join("apiserver.crt");
    let deadline = Instant::now() + START_DEADLINE;
    let ca_pem = loop {
        if let Ok(pem) = std::fs::read_to_string(&ca_path)
            && !pem.is_empty()
        {
            break pem;
        }
        if Instant::now() > deadline {
            return Err(format!("kube-apiserver wrote no {}", ca_path.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(&kubeconfig, &server, &ca_pem, ADMIN_TOKEN, "default")?;
    let cp = ControlPlane {
        apiserver_log: dir.join("kube-apiserver.log"),
        dir,
        server,
        ca_pem,
        kubeconfig,
        children: Mutex::new(vec![watchdog, etcd, apiserver]),
        next_pool: AtomicU32::new(0),
    };
    wait_ready(&cp, deadline)?;
    Ok(cp)
}

/// The flags a test binary asked for through [`EXTRA_FLAGS`].
fn extra_apiserver_flags(api: &mut Command, dir: &Path) -> Result<(), String> {
    if let Some(write) = EXTRA_FLAGS.get() {
        for flag in write(dir)? {
            api.arg(flag);
        }
    }
    Ok(())
}

/// A test binary that needs more apiserver flags (e.g. `--admission-control-config-file`) sets
/// this before the first `control_plane()` call; the function gets the temp dir to write files in.
pub static EXTRA_FLAGS: OnceLock<ExtraFlags> = OnceLock::new();

/// Writes what the extra flags need into the control plane's dir; returns the flags.
pub type ExtraFlags = fn(&Path) -> Result<Vec<String>, String>;

fn spawn_logged(mut cmd: Command, dir: &Path, name: &str) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))
}

/// Kills what `dir/pids` lists and removes `dir` once this test process is gone.
fn watchdog(dir: &Path) -> Result<Child, String> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        [ -f "$2/pids" ] && kill -9 $(cat "$2/pids") 2>/dev/null
        sleep 0.5
        rm -rf "$2"
    "#;
    Command::new("sh")
        .args(["-c", script, "envtest-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the watchdog shell: {e}"))
}

pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    namespace: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\n\
         contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: user\n    \
         namespace: {namespace}\ncurrent-context: envtest\n"
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn wait_ready(cp: &ControlPlane, deadline: Instant) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = cp.client().await;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let answer = client.request_text(req).await;
            let last = format!("{answer:?}");
            if let Some(gone) = cp.exited() {
                return Err(format!(
                    "{gone}; end of the apiserver log:\n{}",
                    tail(&cp.apiserver_log, 30)
                ));
            }
            match answer {
                Ok(body) if body.trim() == "ok" => break,
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "kube-apiserver not ready after {START_DEADLINE:?} (last answer: {last:?}); \
                         end of its log:\n{}",
                        tail(&cp.apiserver_log, 30)
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        // The bootstrap controller creates these shortly after readiness.
        let namespaces: Api<Namespace> = Api::all(client);
        for ns in ["default", "kube-system", "kube-public"] {
            while namespaces.get_opt(ns).await.ok().flatten().is_none() {
                if Instant::now() > deadline {
                    return Err(format!("namespace {ns} never appeared"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    })
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl ControlPlane {
    /// Which of our processes has exited, if any.
    fn exited(&self) -> Option<String> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.iter_mut().find_map(|c| match c.try_wait() {
            Ok(Some(status)) => Some(format!("process {} exited: {status}", c.id())),
            _ => None,
        })
    }

    /// An admin client bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A fresh namespace `<prefix>-<n>` (tests share the control plane, never a namespace).
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::SeqCst));
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        name
    }

    /// A /24 no other test of this binary uses (every webhook under test sees every Service of
    /// the cluster, so tests keep to their own addresses). From 198.18.0.0/15 (benchmarking).
    pub fn unique_pool(&self) -> (String, [u8; 3]) {
        let k = self.next_pool.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (18 + (k / 256) as u8, (k % 256) as u8);
        (format!("198.{a}.{b}.0/24"), [198, a, b])
    }

    pub fn address(&self) -> SocketAddr {
        self.server
            .trim_start_matches("https://")
            .parse()
            .expect("server address")
    }
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig to client config");
    Client::try_from(config).expect("kube client")
}
