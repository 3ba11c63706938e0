//! `kube-vip-webhook serve --standalone` flags as tests start it: pools from a ConfigMap file,
//! both ports on ephemeral loopback ports.
#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;

/// argv (program name first) for `serve --standalone --configmap <configmap>`, then `extra`.
pub fn argv(configmap: &Path, extra: &[&str]) -> Vec<String> {
    let configmap = configmap.to_str().expect("UTF-8 path");
    [
        "kube-vip-webhook",
        "serve",
        "--standalone",
        "--configmap",
        configmap,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}
