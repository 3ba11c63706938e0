//! metrics (placeholder until the tlsserver branch lands)
#[derive(Debug, Clone)]
pub struct PoolStat { pub pool: String, pub family: &'static str, pub size: u128, pub used: u128 }
pub trait StatsSource: Send + Sync + 'static {
    fn pools(&self) -> Vec<PoolStat>;
    fn reservations(&self) -> usize;
    fn config_errors(&self) -> usize;
    fn config_present(&self) -> bool;
}
pub struct Metrics;
impl Metrics {
    pub fn observe_admission(&self, _op: &str, _outcome: &str, _elapsed: std::time::Duration) {}
}
