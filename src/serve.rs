//! `kube-vip-webhook serve`: flags and wiring.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cli::AllocationArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address of the webhook.
    #[arg(long, env = "KUBEVIP_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (/livez, /readyz, /metrics).
    #[arg(long, env = "KUBEVIP_WEBHOOK_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM); reloaded when the file changes.
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Run without a cluster: pools from --configmap, used addresses from --services.
    #[arg(long)]
    pub standalone: bool,
    /// With --standalone: the kubevip ConfigMap file.
    #[arg(long, requires = "standalone")]
    pub configmap: Option<PathBuf>,
    /// With --standalone: existing Services (their addresses count as used).
    #[arg(long, requires = "standalone")]
    pub services: Vec<PathBuf>,
    #[command(flatten)]
    pub allocation: AllocationArgs,
}

pub async fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}
