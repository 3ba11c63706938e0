//! The object store: objects per resource in key order, the global resourceVersion, the event log
//! watches replay from, and the open watches that live events are pushed to.
//!
//! Every change goes through [`State::commit_put`] / [`State::commit_delete`], which stamp the next
//! resourceVersion, append to the log and fan the event out to matching watches while the state
//! lock is held, so a watch never sees events out of order or misses one between replay and live.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::resources::{Registry, ResId, ResourceDef, builtins};
use super::selectors::Filter;

/// (namespace or `""` for cluster-scoped, name). BTreeMap order = etcd key order.
pub type ObjKey = (String, String);

/// Default number of events kept for watch replay.
pub const DEFAULT_RETENTION: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

struct LogEntry {
    rv: u64,
    res: ResId,
    kind: EventKind,
    obj: Arc<Value>,
    /// The object before a modification; selector transitions turn into ADDED/DELETED.
    prev: Option<Arc<Value>>,
}

/// What a watch stream receives, in order.
#[derive(Debug)]
pub enum WatchMsg {
    Event(EventKind, Arc<Value>),
    Bookmark { rv: u64, initial_events_end: bool },
    Error(ApiError),
}

struct Watcher {
    res: ResId,
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// Where a watch starts.
pub enum WatchStart {
    /// `resourceVersion` unset or `"0"`: synthetic ADDED for every current object first.
    Current { initial_events_end: bool },
    /// Replay logged events newer than this resourceVersion, then live events.
    After(u64),
}

pub struct State {
    pub registry: Registry,
    objects: Vec<BTreeMap<ObjKey, Arc<Value>>>,
    log: VecDeque<LogEntry>,
    retention: usize,
    /// Every event with rv <= this has been dropped from the log.
    compacted_rv: u64,
    rv: u64,
    uid_seq: u64,
    name_seq: u64,
    watchers: HashMap<u64, Watcher>,
    next_watch_id: u64,
}

/// The event a watch with `filter` sees for a logged change, if any. A modification that moves
/// an object into or out of the selection is ADDED or DELETED, as the apiserver's watch cache does.
fn visible(
    filter: &Filter,
    kind: EventKind,
    obj: &Arc<Value>,
    prev: Option<&Arc<Value>>,
) -> Option<EventKind> {
    let now = filter.matches(obj);
    match kind {
        EventKind::Added | EventKind::Deleted => now.then_some(kind),
        EventKind::Modified => {
            let before = prev.is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some(EventKind::Modified),
                (false, true) => Some(EventKind::Added),
                (true, false) => Some(EventKind::Deleted),
                (false, false) => None,
            }
        }
    }
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Sets `metadata.<field>`, creating `metadata` if needed.
pub fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(field.to_string(), value);
        }
    }
}

pub fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove(field);
    }
}

impl State {
    pub fn new() -> Self {
        let mut st = Self {
            registry: Registry::default(),
            objects: Vec::new(),
            log: VecDeque::new(),
            retention: DEFAULT_RETENTION,
            compacted_rv: 0,
            rv: 1,
            uid_seq: 0,
            name_seq: 0,
            watchers: HashMap::new(),
            next_watch_id: 0,
        };
        for def in builtins() {
            st.register(def);
        }
        st
    }

    pub fn register(&mut self, def: ResourceDef) -> ResId {
        let id = self.registry.register(def);
        while self.objects.len() < self.registry.len() {
            self.objects.push(BTreeMap::new());
        }
        id
    }

    pub fn def(&self, res: ResId) -> &ResourceDef {
        self.registry.def(res)
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid_seq)
    }

    /// A name for `generateName`: the prefix plus five characters from the apiserver's alphabet,
    /// skipping names already taken.
    pub fn generate_name(&mut self, res: ResId, ns: &str, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            self.name_seq += 1;
            // Multiplying by an odd constant scatters consecutive sequence numbers.
            let mut n = self.name_seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
            let mut suffix = String::with_capacity(5);
            for _ in 0..5 {
                suffix.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
                n /= ALPHABET.len() as u64;
            }
            let name = format!("{prefix}{suffix}");
            if !self.objects[res].contains_key(&(ns.to_string(), name.clone())) {
                return name;
            }
        }
    }

    pub fn get(&self, res: ResId, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects[res].get(key).cloned()
    }

    /// One LIST page: up to `limit` matching objects after `after`, and whether keys remain.
    /// Cost is the page plus the non-matching objects skipped, never the whole store.
    pub fn list_page(
        &self,
        res: ResId,
        filter: &Filter,
        after: Option<&ObjKey>,
        limit: Option<usize>,
    ) -> (Vec<Arc<Value>>, Option<ObjKey>) {
        let map = &self.objects[res];
        let ns = filter.namespace.as_deref();
        // A `metadata.name=` selector inside one namespace is a point lookup.
        if let (Some(ns), Some(name), None) = (ns, filter.fields.pinned_name(), after) {
            let hit = map
                .get(&(ns.to_string(), name.to_string()))
                .filter(|o| filter.matches(o))
                .cloned();
            return (hit.into_iter().collect(), None);
        }
        let lower = match (after, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut iter = map
            .range((lower, Bound::Unbounded))
            .take_while(|((kns, _), _)| ns.is_none_or(|ns| kns == ns));
        let mut items = Vec::new();
        let mut last = None;
        for (key, obj) in iter.by_ref() {
            if filter.matches(obj) {
                items.push(obj.clone());
                last = Some(key);
                if limit.is_some_and(|l| items.len() >= l) {
                    break;
                }
            }
        }
        let more = limit.is_some_and(|l| items.len() >= l) && iter.next().is_some();
        (items, if more { last.cloned() } else { None })
    }

    /// All objects of a resource matching `filter` (test-control reads, DELETE collection).
    pub fn list_all(&self, res: ResId, filter: &Filter) -> Vec<Arc<Value>> {
        self.list_page(res, filter, None, None).0
    }

    /// Stores `obj` under `key` with the next resourceVersion; ADDED or MODIFIED.
    pub fn commit_put(&mut self, res: ResId, key: ObjKey, mut obj: Value) -> Arc<Value> {
        self.rv += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let obj = Arc::new(obj);
        let prev = self.objects[res].insert(key, obj.clone());
        let kind = if prev.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.record(res, kind, obj.clone(), prev);
        obj
    }

    /// Removes `key`; the DELETED event carries the object stamped with the deletion's version.
    pub fn commit_delete(&mut self, res: ResId, key: &ObjKey) -> Option<Arc<Value>> {
        let prev = self.objects[res].remove(key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        set_meta(
            &mut last,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let last = Arc::new(last);
        self.record(res, EventKind::Deleted, last.clone(), Some(prev));
        Some(last)
    }

    fn record(&mut self, res: ResId, kind: EventKind, obj: Arc<Value>, prev: Option<Arc<Value>>) {
        let mut closed = Vec::new();
        for (id, w) in self.watchers.iter().filter(|(_, w)| w.res == res) {
            if let Some(k) = visible(&w.filter, kind, &obj, prev.as_ref())
                && w.tx.send(WatchMsg::Event(k, obj.clone())).is_err()
            {
                closed.push(*id);
            }
        }
        for id in closed {
            self.watchers.remove(&id);
        }
        self.log.push_back(LogEntry {
            rv: self.rv,
            res,
            kind,
            obj,
            prev,
        });
        self.trim_log();
    }

    fn trim_log(&mut self) {
        while self.log.len() > self.retention {
            if let Some(e) = self.log.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
    }

    pub fn set_retention(&mut self, n: usize) {
        self.retention = n;
        self.trim_log();
        if n == 0 {
            self.compacted_rv = self.rv;
        }
    }

    /// Whether a LIST continue token or WATCH from `rv` can still be served consistently.
    pub fn is_compacted(&self, rv: u64) -> bool {
        rv < self.compacted_rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    /// Opens a watch: queues replayed (or synthetic initial) events, then registers for live ones.
    /// Both happen under the state lock, so nothing falls between them.
    pub fn register_watch(
        &mut self,
        res: ResId,
        filter: Filter,
        start: WatchStart,
        bookmarks: bool,
    ) -> Result<(u64, mpsc::UnboundedReceiver<WatchMsg>), ApiError> {
        let (tx, rx) = mpsc::unbounded_channel();
        match start {
            WatchStart::Current { initial_events_end } => {
                for obj in self.list_all(res, &filter) {
                    let _ = tx.send(WatchMsg::Event(EventKind::Added, obj));
                }
                if initial_events_end && bookmarks {
                    let _ = tx.send(WatchMsg::Bookmark {
                        rv: self.rv,
                        initial_events_end: true,
                    });
                }
            }
            WatchStart::After(from) => {
                if self.is_compacted(from) {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        format!(
                            "too old resource version: {from} ({})",
                            self.compacted_rv + 1
                        ),
                    ));
                }
                let first = self.log.partition_point(|e| e.rv <= from);
                for e in self.log.range(first..).filter(|e| e.res == res) {
                    if let Some(k) = visible(&filter, e.kind, &e.obj, e.prev.as_ref()) {
                        let _ = tx.send(WatchMsg::Event(k, e.obj.clone()));
                    }
                }
            }
        }
        self.next_watch_id += 1;
        let id = self.next_watch_id;
        self.watchers.insert(
            id,
            Watcher {
                res,
                filter,
                bookmarks,
                tx,
            },
        );
        Ok((id, rx))
    }

    pub fn unregister_watch(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Closes every watch (their senders are dropped; streams end).
    pub fn drop_watches(&mut self) {
        self.watchers.clear();
    }

    pub fn open_watches(&self) -> usize {
        self.watchers.len()
    }

    /// Queues a BOOKMARK at the current version on one watch (or all, `None`) that allowed them.
    /// Going through the watch's queue keeps the bookmark behind every event it covers.
    pub fn queue_bookmarks(&mut self, only: Option<u64>) {
        let rv = self.rv;
        for (id, w) in &self.watchers {
            if w.bookmarks && only.is_none_or(|o| o == *id) {
                let _ = w.tx.send(WatchMsg::Bookmark {
                    rv,
                    initial_events_end: false,
                });
            }
        }
    }
}
