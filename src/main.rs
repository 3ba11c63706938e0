use clap::Parser;
use kube_vip_webhook::cli::{self, Cli};

fn main() -> anyhow::Result<()> {
    // kube and our servers use ring; exactly one provider must be installed before any TLS setup.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    cli::run(Cli::parse())
}
