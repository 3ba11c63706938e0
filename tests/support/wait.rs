//! Waiting for a condition in tests.
#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits: a hang guard (the waits end as soon as the condition holds),
/// never a timing claim.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Poll `f` every 20 ms until it gives `Some`; fail with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
