//! A round-robin TCP proxy, as a Service spreads connections over its endpoints: each new
//! connection goes to the next backend that accepts it (a dead one is skipped).
#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Open connections, so a cut can end them all.
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on `listen` (port 0: any) and spread connections over `backends`.
    pub async fn start(listen: SocketAddr, backends: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind(listen).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let backends = Arc::new(Mutex::new(backends));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let (list, conns) = (backends.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (list, next) = (list.clone(), next.clone());
                let conn = tokio::spawn(async move {
                    let candidates = list.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let start = next.fetch_add(1, Ordering::SeqCst);
                    for i in 0..candidates.len() {
                        let target = candidates[(start + i) % candidates.len()];
                        let connect = TcpStream::connect(target);
                        if let Ok(Ok(mut outbound)) =
                            tokio::time::timeout(Duration::from_secs(1), connect).await
                        {
                            let mut inbound = inbound;
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
                conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn.abort_handle());
            }
        });
        Proxy {
            addr,
            backends,
            open,
            task,
        }
    }

    /// A network partition: every open connection ends, new ones are refused, until
    /// [`set_backends`](Self::set_backends) gives somewhere to go again.
    pub fn cut(&self) {
        self.set_backends(Vec::new());
        for c in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Replace the backend list (a replica restarted on another port).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap_or_else(|e| e.into_inner()) = backends;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
