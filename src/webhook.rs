//! `POST /mutate`: AdmissionReview in, AdmissionReview out, always HTTP 200 (SPEC 7).
//!
//! The apiserver treats any non-200 as a webhook failure (and with `failurePolicy: Ignore`
//! silently admits), so every problem with a request is answered inside the review.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Service;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::engine::{Changes, Decision, Outcome};
use crate::forward::{FORWARDED_HEADER, Forwarder};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::service::SvcInfo;
use crate::state::{Allocator, Request};

/// Bodies above this are refused with 413 before parsing. An AdmissionReview carries the object
/// and the old object; a Service is rarely over a few KiB, Kubernetes objects are capped at 1.5 MiB.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes of request bodies being read or answered at once, over all connections: what a flood
/// of maximal reviews can make us buffer (16 maximal bodies; decoding one adds at most its own
/// size). A request reserves its Content-Length (or [`BODY_LIMIT`] without one) before reading,
/// in arrival order, so nobody holds part of the budget while waiting for more.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// The whole body must arrive within this (a client trickling bytes holds its share of the
/// budget no longer). The apiserver sends a review in one go; its own timeout is at most 30 s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Everything a request does (waiting for the budget, reading, forwarding, answering) ends
/// within this; the apiserver has given up by then anyway (webhook timeouts are 1-30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest request UID accepted (the apiserver sends 36-character UUIDs); a UID is a
/// reservation key and is echoed in the answer.
pub const MAX_UID_LEN: usize = 128;
/// Warnings in one answer; the rest are counted in the last one.
pub const MAX_WARNINGS: usize = 8;
/// Kubernetes truncates longer warnings; keep ours whole by shortening them ourselves.
const WARNING_MAX: usize = 256;
/// Longest status message in an answer (messages quote what was sent, which may be huge).
pub const MAX_MESSAGE_LEN: usize = 1024;
/// No answer is larger than this: UID, message, warnings and patch are each bounded above, and
/// an answer that would still be larger is sent without warnings.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024;

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
    let shared = Shared {
        state,
        budget: Arc::new(Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT)),
    };
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(shared)
}

/// The router's state: the webhook's, and the body budget of this router.
#[derive(Clone)]
struct Shared {
    state: WebhookState,
    budget: Arc<Semaphore>,
}

async fn mutate(State(shared): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, bounded(&shared, &headers, body)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::debug!("admission request timed out");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("request not completed within {REQUEST_TIMEOUT:?}"),
            )
                .into_response()
        }
    }
}

/// Reserve the body's share of the budget, read it within [`BODY_READ_TIMEOUT`], answer.
async fn bounded(shared: &Shared, headers: &HeaderMap, body: Body) -> Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {BODY_LIMIT} bytes"),
        )
            .into_response()
    };
    let expected = match declared {
        Some(n) if n > BODY_LIMIT as u64 => return too_large(),
        Some(n) => n as usize,
        None => BODY_LIMIT,
    };
    // Fits in u32: BODY_LIMIT is 4 MiB.
    let Ok(_permit) = shared.budget.acquire_many(expected.max(1) as u32).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body, expected)).await {
        Ok(Ok(body)) => body,
        Ok(Err(ReadError::TooLarge)) => return too_large(),
        Ok(Err(ReadError::Broken(e))) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )
                .into_response();
        }
    };
    answer(&shared.state, headers, body).await
}

enum ReadError {
    TooLarge,
    Broken(axum::Error),
}

/// The whole body, refusing more than `limit` bytes (what was reserved for it).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(limit.min(BODY_LIMIT));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Broken)?;
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn answer(state: &WebhookState, headers: &HeaderMap, body: Bytes) -> Response {
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
    match encode_bounded(&review) {
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

/// [`encode_review`], never larger than [`MAX_ANSWER_BYTES`]: an answer that would be is sent
/// without its warnings and with a shortened message (by construction this does not happen).
fn encode_bounded(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    let json = encode_review(review)?;
    if json.len() <= MAX_ANSWER_BYTES {
        return Ok(json);
    }
    tracing::error!(
        bytes = json.len(),
        "answer larger than {MAX_ANSWER_BYTES} bytes; sending it without warnings"
    );
    let mut review = review.clone();
    if let Some(resp) = review.response.as_mut() {
        resp.warnings = None;
        resp.result.message = clip(&resp.result.message, WARNING_MAX);
    }
    encode_review(&review)
}

/// `text` cut to at most `max` bytes (on a character boundary), marked with "...".
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
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
    if req.uid.len() > MAX_UID_LEN {
        // Not echoed: the apiserver never sends such a UID, and the answer stays small.
        return (
            AdmissionResponse::invalid(format!(
                "request.uid is {} bytes long; at most {MAX_UID_LEN} are accepted",
                req.uid.len()
            ))
            .into_review(),
            "OTHER",
            "invalid",
        );
    }
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
        let mut resp = invalid(format!("{operation} request has no object"));
        resp.uid = req.uid.clone();
        return (resp.into_review(), operation, "invalid");
    };
    let svc = svc_info(object, &req);
    let old = req.old_object.as_ref().map(|o| svc_info(o, &req));
    let mut decision = allocator.admit_review(
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
        Outcome::Denied(why) => return base.deny(clip(why, MAX_MESSAGE_LEN)),
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

fn with_warnings(mut resp: AdmissionResponse, mut warnings: Vec<String>) -> AdmissionResponse {
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(warning(&format!("and {more} more warnings")));
    }
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

fn warning(text: &str) -> String {
    clip(&format!("kube-vip-webhook: {text}"), WARNING_MAX)
}

/// An `invalid` answer whose message is clipped to [`MAX_MESSAGE_LEN`].
fn invalid(message: String) -> AdmissionResponse {
    AdmissionResponse::invalid(clip(&message, MAX_MESSAGE_LEN))
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
        return invalid(format!("malformed AdmissionReview: {err}")).into_review();
    };
    // Echoed only when it could be a real UID (the answer stays small).
    let uid = generic
        .request
        .as_ref()
        .map(|r| r.uid.clone())
        .filter(|u| u.len() <= MAX_UID_LEN);
    match generic.try_into() {
        Ok(req) => {
            let req: AdmissionRequest<DynamicObject> = req;
            if req.uid.len() > MAX_UID_LEN {
                invalid(format!(
                    "request.uid is {} bytes long; at most {MAX_UID_LEN} are accepted",
                    req.uid.len()
                ))
                .into_review()
            } else if req.kind.group.is_empty() && req.kind.kind == "Service" {
                let mut resp = invalid(format!("malformed Service object: {err}"));
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
