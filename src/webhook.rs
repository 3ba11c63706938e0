//! `POST /mutate`: AdmissionReview in, AdmissionReview out, always HTTP 200 (SPEC 7).
//!
//! The apiserver treats any non-200 as a webhook failure (and with `failurePolicy: Ignore`
//! silently admits), so every problem with a request is answered inside the review.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Service;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::engine::{Changes, Decision, Outcome};
use crate::forward::{FORWARDED_HEADER, Forwarder};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::service::SvcInfo;
use crate::state::{Allocator, Request};

/// Bodies above this are refused with 413 before parsing. An AdmissionReview carries the object
/// and the old object; a Service is rarely over a few KiB, Kubernetes objects are capped at 1.5 MiB.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Kubernetes truncates longer warnings; keep ours whole by shortening them ourselves.
const WARNING_MAX: usize = 256;

#[derive(Clone)]
pub struct WebhookState {
    pub allocator: Arc<Allocator>,
    pub metrics: Arc<Metrics>,
    /// Whether this replica may allocate right now.
    pub leadership: Leadership,
    /// Cluster mode with several replicas: where admissions go when we may not allocate.
    pub forward: Option<Arc<Forwarder>>,
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn mutate(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let mut defer = None;
    if !state.leadership.may_allocate(started) {
        let leads = state.leadership.is_elected() && state.leadership.is_leader(started);
        let why = if !state.leadership.synced() {
            "this replica's caches are not synced yet".to_string()
        } else if leads {
            "this replica just became the leader and waits for the previous one's answers to reach it"
                .to_string()
        } else {
            "this replica is not the allocating leader".to_string()
        };
        // A forwarded request is never forwarded again: whoever sent it thought we lead. Nor is
        // one sent to the leader itself while it waits out its takeover grace.
        match (
            &state.forward,
            headers.contains_key(FORWARDED_HEADER) || leads,
        ) {
            (Some(fw), false) => match fw.forward(body.clone()).await {
                Ok(answer) => {
                    state
                        .metrics
                        .observe_admission("OTHER", "forwarded", started.elapsed());
                    return (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        answer,
                    )
                        .into_response();
                }
                Err(e) => {
                    // During an election nobody is known for a moment: not worth a warning.
                    if matches!(e, crate::forward::ForwardError::NoLeader) {
                        tracing::debug!(error = %e, "cannot forward the admission; admitting without allocating");
                    } else {
                        tracing::warn!(error = %e, "cannot forward the admission to the leader; admitting without allocating");
                    }
                    defer = Some(format!("{why} and could not reach the leader ({e})"));
                }
            },
            _ => defer = Some(why),
        }
    }
    let (review, operation, outcome) =
        review_with(&state.allocator, &body, started, defer.as_deref());
    state
        .metrics
        .observe_admission(operation, outcome, started.elapsed());
    match encode_review(&review) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode AdmissionReview");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The review as the apiserver expects it on the wire. `response.patch` is a Go `[]byte`, whose
/// JSON form is a base64 string; kube-core serializes the `Vec<u8>` as an array of numbers
/// (kube-rs/kube#1781), so the patch is re-encoded here.
pub fn encode_review(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    if let Some(json) = crate::admission::encode_answer(review) {
        return json;
    }
    let mut value = serde_json::to_value(review)?;
    let patch = review.response.as_ref().and_then(|r| r.patch.as_deref());
    if let (Some(patch), Some(slot)) = (patch, value.pointer_mut("/response/patch")) {
        *slot = Value::String(BASE64.encode(patch));
    }
    serde_json::to_vec(&value)
}

/// Answer one raw review body. Returns the review plus the operation and outcome labels for metrics.
pub fn review(
    allocator: &Allocator,
    body: &[u8],
    now: Instant,
) -> (AdmissionReview<DynamicObject>, &'static str, &'static str) {
    review_with(allocator, body, now, None)
}

/// [`review`], or with `defer`: decide nothing new (reserve nothing, allocate nothing), only
/// validate user-requested addresses; the reconciler on the leader allocates later.
pub fn review_with(
    allocator: &Allocator,
    body: &[u8],
    now: Instant,
    defer: Option<&str>,
) -> (AdmissionReview<DynamicObject>, &'static str, &'static str) {
    let parsed = crate::admission::decode_service_review(body);
    let review = match parsed {
        Ok(r) => r,
        Err(e) => return (not_a_service_review(body, e), "OTHER", "invalid"),
    };
    let req: AdmissionRequest<Service> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return (
                AdmissionResponse::invalid("AdmissionReview has no request").into_review(),
                "OTHER",
                "invalid",
            );
        }
    };
    let operation = match req.operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        _ => "OTHER",
    };
    let base = AdmissionResponse::from(&req);
    if !is_service(&req) || operation == "OTHER" || req.sub_resource.is_some() {
        return (base.into_review(), operation, "skipped");
    }
    let Some(object) = req.object.as_ref() else {
        let mut resp = AdmissionResponse::invalid(format!("{operation} request has no object"));
        resp.uid = req.uid.clone();
        return (resp.into_review(), operation, "invalid");
    };
    let svc = svc_info(object, &req);
    let old = req.old_object.as_ref().map(|o| svc_info(o, &req));
    let mut decision = allocator.admit(
        Request {
            id: &req.uid,
            svc: &svc,
            old: old.as_ref(),
            dry_run: req.dry_run || defer.is_some(),
        },
        now,
    );
    if let (Some(why), Outcome::Allocated { .. }) = (defer, &decision.outcome) {
        decision.outcome = Outcome::NoAddress(format!("{why}; the reconciler assigns one shortly"));
        decision.changes = Changes::default();
    }
    tracing::debug!(
        uid = %req.uid, operation, service = %svc.display_name(), dry_run = req.dry_run,
        outcome = decision.outcome.label(), ips = ?decision.outcome.ips(), warnings = ?decision.warnings,
        "admission decision"
    );
    let outcome = decision.outcome.label();
    (
        respond(base, &decision, Present::of(object)).into_review(),
        operation,
        outcome,
    )
}

fn is_service(req: &AdmissionRequest<Service>) -> bool {
    req.kind.group.is_empty() && req.kind.kind == "Service"
}

fn svc_info(object: &Service, req: &AdmissionRequest<Service>) -> SvcInfo {
    let mut svc = SvcInfo::from_service(object);
    // At CREATE the object may not carry its namespace yet; the request always does.
    if svc.namespace.is_empty() {
        svc.namespace = req.namespace.clone().unwrap_or_default();
    }
    if svc.name.is_empty() {
        svc.name = req.name.clone();
    }
    svc
}

fn respond(base: AdmissionResponse, decision: &Decision, present: Present) -> AdmissionResponse {
    let mut warnings: Vec<String> = decision.warnings.iter().map(|w| warning(w)).collect();
    let resp = match &decision.outcome {
        Outcome::Denied(why) => return base.deny(why),
        Outcome::NoAddress(why) => {
            warnings.insert(
                0,
                warning(&format!("no load balancer address assigned: {why}")),
            );
            base
        }
        Outcome::Skipped(_) | Outcome::Allocated { .. } | Outcome::Requested { .. } => base,
    };
    let resp = if decision.changes.is_empty() {
        resp
    } else {
        match resp
            .clone()
            .with_patch(patch_for(&decision.changes, present))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode patch");
                resp
            }
        }
    };
    with_warnings(resp, warnings)
}

fn with_warnings(mut resp: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

fn warning(text: &str) -> String {
    let text = format!("kube-vip-webhook: {text}");
    if text.len() <= WARNING_MAX {
        return text;
    }
    let mut cut = WARNING_MAX - 3;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// Which parts the object already has (JSON patch `add` into a missing parent fails).
#[derive(Clone, Copy, Debug, Default)]
pub struct Present {
    /// `metadata` itself: a review may send an object without it (never the apiserver).
    pub metadata: bool,
    pub annotations: bool,
    pub labels: bool,
}

impl Present {
    pub fn of(svc: &Service) -> Present {
        Present {
            // Absent and `{}` decode alike; adding `{}` over an empty map changes nothing.
            metadata: svc.metadata != Default::default(),
            annotations: svc.metadata.annotations.is_some(),
            labels: svc.metadata.labels.is_some(),
        }
    }
}

/// JSON patch adding the changes; a missing metadata, annotations or labels map is created first.
/// Keys are escaped (`kube-vip.io/x` -> `kube-vip.io~1x`) by the pointer builder.
pub fn patch_for(changes: &Changes, present: Present) -> Patch {
    let mut ops = Vec::new();
    let touches_metadata = !changes.annotations.is_empty() || !changes.labels.is_empty();
    if touches_metadata && !present.metadata {
        ops.push(add(&["metadata"], Value::Object(Default::default())));
    }
    for (field, map, exists) in [
        ("annotations", &changes.annotations, present.annotations),
        ("labels", &changes.labels, present.labels),
    ] {
        if map.is_empty() {
            continue;
        }
        if !exists {
            ops.push(add(&["metadata", field], Value::Object(Default::default())));
        }
        for (k, v) in map {
            ops.push(add(&["metadata", field, k], Value::String(v.clone())));
        }
    }
    if let Some(ip) = &changes.spec_load_balancer_ip {
        ops.push(add(&["spec", "loadBalancerIP"], Value::String(ip.clone())));
    }
    Patch(ops)
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// The body did not decode as a Service review: find out what it is, answer accordingly.
fn not_a_service_review(body: &[u8], err: serde_json::Error) -> AdmissionReview<DynamicObject> {
    let Ok(generic) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body) else {
        return AdmissionResponse::invalid(format!("malformed AdmissionReview: {err}"))
            .into_review();
    };
    let uid = generic.request.as_ref().map(|r| r.uid.clone());
    match generic.try_into() {
        Ok(req) => {
            let req: AdmissionRequest<DynamicObject> = req;
            if req.kind.group.is_empty() && req.kind.kind == "Service" {
                let mut resp =
                    AdmissionResponse::invalid(format!("malformed Service object: {err}"));
                resp.uid = req.uid.clone();
                resp.into_review()
            } else {
                // Not ours: allowed untouched.
                AdmissionResponse::from(&req).into_review()
            }
        }
        Err(_) => {
            let mut resp = AdmissionResponse::invalid("AdmissionReview has no request");
            resp.uid = uid.unwrap_or_default();
            resp.into_review()
        }
    }
}
