use clap::Parser;
use kube_vip_webhook::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    // kube and our servers use ring; exactly one provider must be installed before any TLS setup.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(args) => kube_vip_webhook::cli::run_plan(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(kube_vip_webhook::serve::run(*args)),
    }
}
