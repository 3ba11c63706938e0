//! Cluster mode: state from the apiserver through watches, a reconciler as the fallback, and
//! leader election deciding which replica allocates.
//!
//! One watch over all Services feeds both the used-address index (incrementally, so admission
//! never scans) and the reconciler; one watch over the pool ConfigMap re-parses it only when it
//! changes; Nodes, the `kubernetes` EndpointSlices and `kube-public/cluster-info` give the
//! addresses the network already uses (`infra`). Every replica keeps the caches and answers
//! admissions; only the one the [`Leadership`] allows allocates, the others forward to it.

pub mod context;
pub mod infra;
mod infra_state;
mod lease;
pub mod pools;
pub mod reconciler;
mod watches;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::watcher;

pub use lease::LeaseSettings;

use crate::bootstrap::BootstrapConfig;
use crate::forward::{Forwarder, Refresh};
use crate::ipam::Family;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::serve::{Running, Stop, start_servers};
use crate::state::{Allocator, Confirm};
use crate::tls::CaSource;
use context::{Context, Synced};

/// Bound on each request the background tasks send (reconciler patches, Events): a hung
/// apiserver connection must not stall them (kube's client has no read timeout of its own).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects per LIST page of the Service and Node watches. Big lists must come in pages: kube's
/// client buffers a response whole (twice) before decoding, at 100k Services hundreds of MB.
/// Pages are read from etcd: kube-apiserver ignores `limit` at `resourceVersion=0` (served whole
/// from its watch cache), so a paged list must not ask for that (kube-core drops it when a limit
/// is set). 500 is kube's and client-go's default page.
pub const LIST_PAGE_SIZE: u32 = 500;

/// How the webhook gets its serving certificate.
#[derive(Clone, Debug)]
pub enum Certs {
    /// PEM files, reloaded when they change; `ca` verifies the leader when forwarding.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    /// A CA and certificate kept in a Secret, the CA published in our webhook configuration.
    SelfSigned(BootstrapConfig),
}

/// Everything cluster mode needs, as plain values (parsed by `cli`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub serve: crate::serve::Settings,
    /// The cluster's primary family; `None`: read from the `default/kubernetes` Service.
    pub default_family: Option<Family>,
    pub kubeconfig: Option<PathBuf>,
    pub config_namespace: String,
    pub config_name: String,
    pub reservation_ttl: Duration,
    /// `None`: a single replica, no election.
    pub election: Option<LeaseSettings>,
    /// This process in Events and the Lease (pod name plus a per-process nonce).
    pub identity: String,
    /// Advertised to the other replicas for forwarding (`--pod-ip`).
    pub pod_ip: Option<IpAddr>,
    pub certs: Certs,
    /// The name in the serving certificate (`<service>.<namespace>.svc`), for forwarding.
    pub forward_server_name: String,
}

impl Settings {
    fn config_ref(&self) -> String {
        format!("{}/{}", self.config_namespace, self.config_name)
    }
}

/// `serve` against a cluster, with a client from the kubeconfig or the environment.
pub async fn start(settings: Settings, stop: Stop) -> anyhow::Result<Running> {
    let client = crate::live::client(settings.kubeconfig.as_deref()).await?;
    start_with_client(settings, client, stop).await
}

/// Same as [`start`] with a given client (tests drive it against a fake apiserver).
pub async fn start_with_client(
    settings: Settings,
    client: kube::Client,
    stop: Stop,
) -> anyhow::Result<Running> {
    let mut options = settings.serve.options.clone();
    options.default_family = match settings.default_family {
        Some(f) => f,
        None => crate::live::primary_family(&client).await,
    };
    let allocator = Arc::new(
        Allocator::new(
            options,
            Confirm::ByCache {
                ttl: settings.reservation_ttl,
            },
            settings.config_ref(),
        )
        .with_quotas(settings.serve.quotas)
        .with_exclusion(settings.serve.exclude.clone()),
    );
    let metrics = Arc::new(Metrics::new(allocator.clone()));
    let (tls, identity, ca) = match &settings.certs {
        Certs::Files { cert, key, ca } => {
            metrics.set_certificate_source(crate::metrics::certificate_file(cert.clone()));
            let (tls, identity) = crate::tls::reloading_serving(cert, key)?;
            (tls, identity, ca.clone().map(CaSource::File))
        }
        Certs::SelfSigned(cfg) => {
            let boot =
                crate::bootstrap::ensure_with(&client, cfg.clone(), stop.shutdown.clone()).await?;
            let status = boot.status.clone();
            metrics.set_certificate_source(crate::metrics::certificate_pem(move || {
                status.borrow().cert_pem.clone()
            }));
            let status = boot.status.clone();
            let bundle: Arc<dyn Fn() -> Vec<u8> + Send + Sync> =
                Arc::new(move || status.borrow().ca_bundle.clone());
            (
                boot.server_config,
                boot.current_cert,
                Some(CaSource::Bundle(bundle)),
            )
        }
    };
    let leadership = match settings.election {
        Some(_) => Leadership::elected(Some(metrics.clone())),
        None => Leadership::single(Some(metrics.clone())),
    };
    // With client certificates required, replicas present their serving certificate to each
    // other (a peer is accepted by the serving CA and the Service name).
    let peers = ca.clone().map(|ca| crate::tls::Peers {
        ca,
        name: settings.forward_server_name.clone(),
    });
    let forward = match (&settings.election, ca) {
        (Some(lease), Some(ca)) => Some(Arc::new(Forwarder::new(
            leadership.clone(),
            ca,
            settings.forward_server_name.clone(),
            Some(refresh(&client, lease)),
            Some(identity),
        ))),
        (Some(_), None) => {
            tracing::warn!(
                "leader election without a CA to verify the leader (--tls-ca-file): replicas that \
                 do not lead admit without allocating and the leader's reconciler assigns addresses"
            );
            None
        }
        (None, _) => None,
    };
    let readiness = crate::admin::Readiness::default();
    let mut running = start_servers(
        &settings.serve,
        crate::serve::Parts {
            allocator: allocator.clone(),
            metrics: metrics.clone(),
            leadership: leadership.clone(),
            forward,
            tls,
            readiness: readiness.clone(),
            cert_dir: None,
            peers: settings.election.as_ref().and(peers),
        },
        stop.clone(),
    )?;

    if let Some(mut lease) = settings.election.clone() {
        lease.advertise = settings
            .pod_ip
            .map(|ip| SocketAddr::new(ip, running.webhook_addr.port()).to_string());
        running.spawn(lease::run(
            client.clone(),
            lease,
            leadership.clone(),
            stop.stopping.clone(),
            stop.shutdown.clone(),
        ));
        running.spawn(announce_starts(leadership.clone(), stop.clone()));
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        allocator.clone(),
        metrics,
        leadership.clone(),
        settings.identity.clone(),
        settings.config_ref(),
    ));
    let synced = Synced::new(readiness, leadership, stop.stopping.clone());
    running.spawn(config_watch(
        client.clone(),
        settings.config_namespace.clone(),
        settings.config_name.clone(),
        ctx.clone(),
        synced.clone(),
        stop.clone(),
    ));
    running.spawn(infra::run(ctx.clone(), synced.clone(), stop.clone()));
    let pool_objects = Arc::new(pools::PoolObjects::default());
    running.spawn(pools::pool_watch(
        ctx.clone(),
        pool_objects.clone(),
        synced.clone(),
        stop.clone(),
    ));
    running.spawn(pools::namespace_watch(
        ctx.clone(),
        synced.clone(),
        stop.clone(),
    ));
    running.spawn(pools::status_writer(
        ctx.clone(),
        pool_objects,
        stop.clone(),
    ));
    running.spawn(reconciler::run(ctx, synced, stop.shutdown.clone()));
    let (alloc, token) = (allocator, stop.shutdown);
    running.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => alloc.expire(std::time::Instant::now()),
            }
        }
    });
    Ok(running)
}

/// A forwarder whose leader did not answer reads the Lease again.
fn refresh(client: &kube::Client, lease: &LeaseSettings) -> Refresh {
    let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let (name, identity) = (lease.name.clone(), lease.identity.clone());
    Arc::new(move || {
        Box::pin(lease::read_leader(
            api.clone(),
            name.clone(),
            identity.clone(),
            Duration::from_secs(1),
        ))
    })
}

/// A term's allocation starts at its `from` instant: tell the reconciler then (it reconciles
/// everything once).
async fn announce_starts(leadership: Leadership, stop: Stop) -> anyhow::Result<()> {
    let mut terms = leadership.term_changes();
    loop {
        let next = leadership.announce_if_started(std::time::Instant::now());
        tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(next.unwrap_or_else(far_future).into()), if next.is_some() => {}
            changed = terms.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

fn far_future() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(3600)
}

/// Watch the one pool ConfigMap; re-parse only when it changes.
async fn config_watch(
    client: kube::Client,
    namespace: String,
    name: String,
    ctx: Arc<Context>,
    synced: Synced,
    stop: Stop,
) -> anyhow::Result<()> {
    let stream = watches::configmap_stream(client, &namespace, &name);
    futures::pin_mut!(stream);
    let mut listed: Option<ConfigMap> = None;
    loop {
        let event = tokio::select! {
            _ = stop.shutdown.cancelled() => return Ok(()),
            ev = stream.try_next() => ev,
        };
        match event {
            Ok(Some(watcher::Event::Init)) => listed = None,
            Ok(Some(watcher::Event::InitApply(cm))) => listed = Some(cm),
            Ok(Some(watcher::Event::InitDone)) => {
                ctx.config_changed(listed.take().as_ref()).await;
                synced.config_synced();
            }
            Ok(Some(watcher::Event::Apply(cm))) => ctx.config_changed(Some(&cm)).await,
            Ok(Some(watcher::Event::Delete(_))) => ctx.config_changed(None).await,
            Ok(None) => return Ok(()),
            // The backoff retries; a failing watch is logged, never fatal.
            Err(e) => {
                tracing::warn!(error = %e, "ConfigMap watch error");
                continue;
            }
        }
        // What the pools contain of the addresses the network uses may have changed.
        ctx.infra.report_pools(&ctx);
    }
}
