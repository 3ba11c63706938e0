//! What a pool object's `status` should say, from its parse and its usage. Pure: the cluster
//! code compares the result with what the object shows and writes only a difference.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::ObjectPool;
use super::crd::{FamilyUsage, VIPPoolStatus};

/// Condition types.
pub const READY: &str = "Ready";
pub const CONFLICT: &str = "Conflict";
pub const INVALID: &str = "Invalid";

/// Longest condition message (they list entries and pools, which a spec may have many of).
const MESSAGE_MAX: usize = 1024;

/// Size and used addresses of one family, `None` when the pool has none of that family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub v4: Option<(u128, u128)>,
    pub v6: Option<(u128, u128)>,
}

impl Counts {
    pub fn used(&self) -> u128 {
        [self.v4, self.v6]
            .into_iter()
            .flatten()
            .map(|(_, used)| used)
            .sum()
    }
}

/// The status `pool` should show: `usage` from the allocator, `overlaps` the keys of the pools
/// its addresses overlap, `observed` what the object shows now (a condition keeps its
/// `lastTransitionTime` while its status stays), `now` for conditions that change.
pub fn desired(
    pool: &ObjectPool,
    usage: &Counts,
    overlaps: &[String],
    observed: Option<&VIPPoolStatus>,
    now: &Time,
) -> VIPPoolStatus {
    let (ready, reason, message) = if pool.spec.disabled {
        (
            false,
            "Disabled",
            format!(
                "disabled: the {} addresses held stay with their Services, nothing new is handed out",
                usage.used()
            ),
        )
    } else if pool.pool.is_empty() {
        (
            false,
            "NoAddresses",
            "no address can be handed out (see the Invalid condition and spec.exclude)".to_string(),
        )
    } else {
        (true, "Available", "addresses can be handed out".to_string())
    };
    let conflict = if overlaps.is_empty() {
        (false, "NoOverlap", String::new())
    } else {
        (
            true,
            "Overlap",
            format!(
                "addresses also in {}: a shared address goes to whichever pool is tried first, never to two Services",
                overlaps.join(", ")
            ),
        )
    };
    let invalid = if pool.errors.is_empty() {
        (false, "Valid", String::new())
    } else {
        let list: Vec<String> = pool.errors.iter().map(ToString::to_string).collect();
        (
            true,
            "InvalidEntries",
            format!("ignored: {}", list.join("; ")),
        )
    };
    let condition = |type_: &str, (status, reason, message): (bool, &str, String)| {
        let status = if status { "True" } else { "False" };
        let since = observed
            .and_then(|o| o.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: clip(message),
            observed_generation: pool.generation,
            last_transition_time: since,
        }
    };
    let family = |u: Option<(u128, u128)>| u.map(|(size, used)| FamilyUsage::new(size, used));
    VIPPoolStatus {
        observed_generation: pool.generation,
        ipv4: family(usage.v4),
        ipv6: family(usage.v6),
        conditions: vec![
            condition(READY, (ready, reason, message)),
            condition(CONFLICT, conflict),
            condition(INVALID, invalid),
        ],
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MESSAGE_MAX {
        let mut cut = MESSAGE_MAX - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
