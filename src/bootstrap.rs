//! Self-signed certificate route (being built on the `bootstrap` branch).
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterArgs;

pub async fn ensure(
    _client: &kube::Client,
    _args: &ClusterArgs,
    _shutdown: CancellationToken,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    anyhow::bail!("--self-signed is not available in this build yet")
}
