//! What this replica tracks about the sources of reserved addresses and what it reported: data
//! only, held by the [`super::context::Context`]; `infra.rs` watches the sources and reports.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::reserved::InPool;
use crate::state::ReservedConflict;

/// Conflicts remembered as reported (so each is reported once). Past it the memory is cleared:
/// at worst a conflict is reported again, and churn of nodes cannot grow it without bound.
pub(super) const MAX_REPORTED_CONFLICTS: usize = 10_000;

#[derive(Default)]
pub struct Infra {
    /// Each source listed once.
    pub(super) nodes: AtomicBool,
    pub(super) slices: AtomicBool,
    pub(super) cluster_info: AtomicBool,
    /// Reserved addresses inside pools as last reported by an Event (`None`: never).
    pub(super) reported_pools: Mutex<Option<Vec<InPool>>>,
    pub(super) reported_conflicts: Mutex<BTreeSet<ReservedConflict>>,
}

impl Infra {
    /// All three sources read once: the allocator knows every reserved address.
    pub(super) fn synced(&self) -> bool {
        [&self.nodes, &self.slices, &self.cluster_info]
            .iter()
            .all(|f| f.load(Ordering::SeqCst))
    }
}
