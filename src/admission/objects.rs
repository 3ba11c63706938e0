//! Services from files (`kubectl get -o yaml|json`): single objects, arrays, and `List`s (any
//! object whose `items` is an array), decoded one object at a time with the same lean decode as
//! reviews and the watch. A large export never exists as a tree of values: each Service is
//! handed over as soon as its closing brace is read, with only the fields allocation reads.
//!
//! Objects of other kinds are skipped; an object without `kind` is taken as a Service.

use std::fmt;

use k8s_openapi::api::core::v1::Service;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{MapOnly, Str, WireMeta, WireService, WireSpec, WireStatus};

/// A Service that failed to decode: its position among the file's objects (`List` items
/// counted, the `List` itself not) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadObject {
    pub index: usize,
    pub reason: String,
}

/// Where decoded Services go, and the count of objects seen so far.
pub struct Sink<'a> {
    services: &'a mut dyn FnMut(Service),
    next_index: usize,
    bad: Option<BadObject>,
}

impl<'a> Sink<'a> {
    pub fn new(services: &'a mut dyn FnMut(Service)) -> Self {
        Sink {
            services,
            next_index: 0,
            bad: None,
        }
    }

    /// The Service that stopped decoding, when that is why the deserializer failed.
    pub fn take_bad(&mut self) -> Option<BadObject> {
        self.bad.take()
    }

    fn fail<E: de::Error>(&mut self, index: usize, reason: impl fmt::Display) -> E {
        let reason = reason.to_string();
        let e = E::custom(format!("object #{index} is not a valid Service: {reason}"));
        self.bad = Some(BadObject { index, reason });
        e
    }
}

/// One YAML document or JSON value: null, an object, or an array of them.
pub struct Document<'s, 'a>(pub &'s mut Sink<'a>);

impl<'de> DeserializeSeed<'de> for Document<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(DocumentVisitor(self.0))
    }
}

struct DocumentVisitor<'s, 'a>(&'s mut Sink<'a>);

impl DocumentVisitor<'_, '_> {
    /// A scalar where an object belongs: it counts as an object and is not a Service.
    fn scalar<E: de::Error>(self, what: &str) -> Result<(), E> {
        let index = self.0.next_index;
        self.0.next_index += 1;
        Err(self
            .0
            .fail(index, format!("expected an object, found {what}")))
    }
}

impl<'de> Visitor<'de> for DocumentVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kubernetes objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // an empty document (`---` at the end)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar("a boolean")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar("a number")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar("a number")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar("a number")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar("a string")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Document(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        object(self.0, map)
    }
}

/// `spec` or `status`: decoded at once when the object is known to be a Service, skipped when it
/// is known not to be, kept as a value until `kind` shows up otherwise (kubectl always writes
/// `kind` first; a hand-written file may not).
enum Part<T> {
    Absent,
    Decoded(T),
    Later(Value),
}

impl<T: de::DeserializeOwned> Part<T> {
    fn read<'de, A: MapAccess<'de>>(
        map: &mut A,
        service: Option<bool>,
        sink: &mut Sink<'_>,
        index: usize,
    ) -> Result<Self, A::Error> {
        match service {
            Some(true) => match map.next_value::<T>() {
                Ok(v) => Ok(Part::Decoded(v)),
                Err(e) => Err(sink.fail(index, e)),
            },
            Some(false) => map.next_value::<IgnoredAny>().map(|_| Part::Absent),
            None => map.next_value::<Value>().map(Part::Later),
        }
    }

    fn finish(self) -> Result<Option<T>, serde_json::Error> {
        match self {
            Part::Absent => Ok(None),
            Part::Decoded(v) => Ok(Some(v)),
            Part::Later(v) => serde_json::from_value(v).map(Some),
        }
    }
}

fn is_service_kind(kind: &Value) -> bool {
    // A missing or non-string kind is read as "" (taken as a Service), as before.
    matches!(kind.as_str().unwrap_or(""), "" | "Service")
}

fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, mut map: A) -> Result<(), A::Error> {
    let mut service: Option<bool> = None;
    let mut is_list = false;
    // Objects only, never arrays, exactly as the review and watch decodes read them.
    let mut metadata: Option<MapOnly<WireMeta>> = None;
    let mut spec = Part::<MapOnly<WireSpec>>::Absent;
    let mut status = Part::<MapOnly<WireStatus>>::Absent;
    // This object's position, unless it turns out to be a list (whose items count instead).
    let index = sink.next_index;
    while let Some(Str(key)) = map.next_key::<Str>()? {
        match key.as_ref() {
            "kind" => service = Some(is_service_kind(&map.next_value::<Value>()?)),
            "items" => is_list |= map.next_value_seed(Items(&mut *sink))?,
            "metadata" if service == Some(false) => {
                map.next_value::<IgnoredAny>()?;
            }
            "metadata" => match map.next_value::<Option<MapOnly<WireMeta>>>() {
                Ok(m) => metadata = m,
                Err(e) => return Err(sink.fail(index, e)),
            },
            "spec" => spec = Part::read(&mut map, service, sink, index)?,
            "status" => status = Part::read(&mut map, service, sink, index)?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    if is_list {
        return Ok(());
    }
    sink.next_index += 1;
    if service == Some(false) {
        return Ok(());
    }
    let parts = spec.finish().and_then(|spec| Ok((spec, status.finish()?)));
    let (spec, status) = parts.map_err(|e| sink.fail::<A::Error>(index, e))?;
    let svc = WireService {
        api_version: (),
        kind: (),
        metadata,
        spec,
        status,
    }
    .into_service();
    (sink.services)(svc);
    Ok(())
}

/// The value of `items`: an array of objects (true), or anything else, skipped (false).
struct Items<'s, 'a>(&'s mut Sink<'a>);

impl<'de> DeserializeSeed<'de> for Items<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element_seed(Document(&mut *self.0))?.is_some() {}
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
}
