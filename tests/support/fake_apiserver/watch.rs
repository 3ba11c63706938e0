//! The WATCH response body: newline-delimited JSON `WatchEvent`s.
//!
//! A stream ends when `timeoutSeconds` passes, when the test calls `drop_watches()`, or after an
//! `ERROR` event; the client then sees a cleanly finished body, like a closed HTTP/1 chunked reply.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

use super::Inner;
use super::store::WatchMsg;

/// How objects are rendered on the stream.
#[derive(Clone, Debug)]
pub struct Rendering {
    /// `apiVersion` / `kind` used in BOOKMARK objects.
    pub api_version: String,
    pub kind: String,
    /// `Accept: ...;as=PartialObjectMetadata`: objects reduced to their metadata.
    pub metadata_only: bool,
}

/// Reduces an object to a `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// One `WatchEvent` line. Written by hand so the object is serialised without being cloned.
fn encode(msg: &WatchMsg, r: &Rendering) -> Bytes {
    let mut out = Vec::with_capacity(256);
    let write_obj = |out: &mut Vec<u8>, obj: &Value| {
        let res = if r.metadata_only {
            serde_json::to_writer(&mut *out, &partial_metadata(obj))
        } else {
            serde_json::to_writer(&mut *out, obj)
        };
        // Serialising a `Value` into a Vec cannot fail; keep the line valid JSON regardless.
        if res.is_err() {
            out.extend_from_slice(b"{}");
        }
    };
    match msg {
        WatchMsg::Event(kind, obj) => {
            out.extend_from_slice(
                format!("{{\"type\":\"{}\",\"object\":", kind.as_str()).as_bytes(),
            );
            write_obj(&mut out, obj);
            out.push(b'}');
        }
        WatchMsg::Bookmark {
            rv,
            initial_events_end,
        } => {
            let mut meta = json!({ "resourceVersion": rv.to_string() });
            if *initial_events_end {
                meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            let (api_version, kind) = if r.metadata_only {
                ("meta.k8s.io/v1", "PartialObjectMetadata")
            } else {
                (r.api_version.as_str(), r.kind.as_str())
            };
            let ev = json!({
                "type": "BOOKMARK",
                "object": { "apiVersion": api_version, "kind": kind, "metadata": meta },
            });
            out.extend_from_slice(ev.to_string().as_bytes());
        }
        WatchMsg::Error(err) => {
            let ev = json!({ "type": "ERROR", "object": err.status_json() });
            out.extend_from_slice(ev.to_string().as_bytes());
        }
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// Removes the watch from the registry when its response body is dropped (client went away).
struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.with_state(|st| st.unregister_watch(self.id));
        self.inner.publish_open_watches();
    }
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    kill: watch::Receiver<u64>,
    deadline: Option<Instant>,
    bookmark_tick: Option<Interval>,
    rendering: Rendering,
    registration: Option<Registration>,
    done: bool,
}

/// Parameters of a watch stream that is already registered in the store.
pub struct OpenWatch {
    pub id: u64,
    pub rx: mpsc::UnboundedReceiver<WatchMsg>,
    pub timeout: Option<Duration>,
    pub bookmark_interval: Option<Duration>,
    pub rendering: Rendering,
}

/// The body of a successful WATCH.
pub fn stream(
    inner: Arc<Inner>,
    w: OpenWatch,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let kill = inner.kill_tx.subscribe();
    let state = StreamState {
        rx: w.rx,
        kill,
        deadline: w.timeout.map(|t| Instant::now() + t),
        bookmark_tick: w
            .bookmark_interval
            .map(|p| tokio::time::interval_at(Instant::now() + p, p)),
        rendering: w.rendering,
        registration: Some(Registration { inner, id: w.id }),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match next_step(&mut s).await {
                Step::End => return None,
                Step::Bookmark => {
                    if let Some(reg) = &s.registration {
                        let id = reg.id;
                        reg.inner.with_state(|st| st.queue_bookmarks(Some(id)));
                    }
                }
                Step::Send(msg) => {
                    s.done = matches!(msg, WatchMsg::Error(_));
                    let line = encode(&msg, &s.rendering);
                    return Some((Ok(line), s));
                }
            }
        }
    })
}

enum Step {
    End,
    Bookmark,
    Send(WatchMsg),
}

/// Waits for whichever comes first; a kill or the deadline wins over queued events, so a dropped
/// watch loses what it had not yet sent (the client resumes from its last resourceVersion).
async fn next_step(s: &mut StreamState) -> Step {
    let StreamState {
        rx,
        kill,
        deadline,
        bookmark_tick,
        ..
    } = s;
    let deadline = *deadline;
    let ticking = bookmark_tick.is_some();
    tokio::select! {
        biased;
        _ = kill.changed() => Step::End,
        _ = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        } => Step::End,
        msg = rx.recv() => msg.map_or(Step::End, Step::Send),
        _ = async move {
            match bookmark_tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        }, if ticking => Step::Bookmark,
    }
}

/// The body of a WATCH that fails after the 200 status: one `ERROR` event, then the end.
pub fn error_stream(
    err: super::errors::ApiError,
    rendering: Rendering,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let line = encode(&WatchMsg::Error(err), &rendering);
    futures::stream::once(async move { Ok(line) })
}
