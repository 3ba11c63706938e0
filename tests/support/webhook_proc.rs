//! The real `kube-vip-webhook` binary as a child process: started with given flags, its log
//! captured (and printed when a test fails), stopped with SIGTERM or SIGKILL, killed on drop.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the binary may take to bind its ports (it does so before talking to the apiserver).
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct WebhookProc {
    pub name: String,
    child: Option<Child>,
    pub webhook: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl WebhookProc {
    /// Start the binary with `args` (after `kube-vip-webhook`) and `env`; returns once it logged
    /// the addresses it serves on. Panics with its log when it exits first.
    pub async fn spawn(name: &str, args: &[String], env: &[(String, String)]) -> WebhookProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-vip-webhook"));
        cmd.args(args)
            .env(
                "RUST_LOG",
                "info,kube_vip_webhook=debug,kube_runtime=warn,kube_client=warn",
            )
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start kube-vip-webhook");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = serving_addresses(&line) {
                    let _ = tx.send(addrs);
                }
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(START_DEADLINE))
            .await
            .expect("join");
        let mut proc = WebhookProc {
            name: name.to_string(),
            child: Some(child),
            webhook: "0.0.0.0:0".parse().expect("addr"),
            admin: "0.0.0.0:0".parse().expect("addr"),
            log,
        };
        match got {
            Ok((webhook, admin)) => {
                proc.webhook = webhook;
                proc.admin = admin;
                proc
            }
            Err(_) => panic!(
                "{name} did not start serving; its log:\n{}",
                proc.log_text()
            ),
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// SIGTERM: graceful stop (readiness false, drain, release the Lease).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit (after [`terminate`]); its exit code.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let waited = tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(status.code());
                }
                if start.elapsed() > deadline {
                    return Err(child);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("join");
        match waited {
            Ok(code) => code,
            Err(child) => {
                self.child = Some(child);
                panic!(
                    "{} did not exit within {deadline:?}; log:\n{}",
                    self.name,
                    self.log_text()
                )
            }
        }
    }

    /// Poll `/readyz` on the admin port until it answers 200.
    pub async fn ready(&self, deadline: Duration) {
        let url = format!("http://{}/readyz", self.admin);
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "{} not ready within {deadline:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for WebhookProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
        self.kill();
    }
}

/// `... serving webhook=127.0.0.1:1 admin=127.0.0.1:2` -> the two addresses.
fn serving_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains(" serving") {
        return None;
    }
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((field("webhook=")?, field("admin=")?))
}
