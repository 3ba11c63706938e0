//! What an admission stores and answers, built before the allocator lock is taken.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Confirm, MAX_HELD_FROM_REVIEW, Request, Reservation};
use crate::engine::{Changes, Decision, Outcome};
use crate::index::{Holder, HolderId};
use crate::service::ServiceKey;

/// What the locked section of an admission stores, built before taking the lock.
pub(super) fn prepare(
    confirm: Confirm,
    req: &Request<'_>,
    id: &Arc<str>,
    now: Instant,
) -> Prepared {
    match confirm {
        Confirm::OnAdmit => {
            let mut svc = req.svc.clone();
            if svc.name.is_empty() {
                // generateName in standalone mode: the apiserver would pick the suffix.
                svc.name = format!("{}{}", svc.generate_name.as_deref().unwrap_or(""), req.id);
            }
            let key = svc.key();
            let holder = Holder::new(
                HolderId::Service(key.clone()),
                svc.display_name(),
                &svc.ports,
            );
            let mut held = svc.held().ips;
            if held.len() > MAX_HELD_FROM_REVIEW {
                // No Service holds that many; not worth remembering from a review.
                held.clear();
            }
            Prepared::Admitted { key, holder, held }
        }
        Confirm::ByCache { ttl } => {
            // Clamped in `new`; never overflows.
            let expires = now.checked_add(ttl).unwrap_or(now);
            let holder = Holder::new(
                HolderId::Reservation(id.clone()),
                format!("{} (being admitted)", req.svc.display_name()),
                &req.svc.ports,
            );
            let reservation = Reservation {
                namespace: req.svc.namespace.clone(),
                name: req.svc.name.clone(),
                generate_name: req.svc.generate_name.clone(),
                expires,
                counted: None,
            };
            Prepared::Reserved {
                holder,
                reservation,
                expires,
            }
        }
    }
}

/// What an admission stores, built outside the lock.
pub(super) enum Prepared {
    /// Standalone: the Service itself becomes a holder (`key`: its name, generated when the
    /// review has only `generateName`; `held`: what the object holds).
    Admitted {
        key: ServiceKey,
        holder: Holder,
        held: Vec<IpAddr>,
    },
    /// Cluster mode: a reservation until the Service shows up in the cache.
    Reserved {
        holder: Holder,
        reservation: Reservation,
        expires: Instant,
    },
}

/// The decision, turned into what the caller gets when nothing may be held: an allocation is
/// admitted without an address, a requested address is denied.
pub(super) fn at_quota(decision: Decision, why: &str) -> Decision {
    let outcome = match decision.outcome {
        Outcome::Requested { .. } => Outcome::Denied(format!(
            "cannot hold the requested address for this admission: {why}; retry in a few seconds"
        )),
        _ => Outcome::NoAddress(format!(
            "{why}; the reconciler assigns an address once the Service exists"
        )),
    };
    Decision {
        outcome,
        changes: Changes::default(),
        warnings: decision.warnings,
    }
}
