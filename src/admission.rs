//! Decoding the AdmissionReviews the webhook answers, reading only what allocation reads.
//!
//! `serde_json::from_slice::<AdmissionReview<Service>>` costs most of a webhook call: kube's review
//! flattens its type fields, which makes serde buffer the whole document before decoding it, and
//! the full `Service` then builds every label, annotation (the last-applied configuration is often
//! the largest field), managedFields entry and selector. Here the same review is decoded in one
//! pass that skips everything the webhook never reads, into kube's own types, holding a `Service`
//! with exactly the fields the Service cache keeps. The rules about what a
//! field means stay in `service::SvcInfo::from_service`.
//!
//! The cluster-mode watch decodes Services the same way ([`LeanService`]): the initial list of 100k
//! Services would otherwise build every managedFields tree only to strip it.
//!
//! Answers are encoded in one pass too, with the patch as the base64 string the apiserver reads
//! (see `webhook::encode_review`).
//!
//! Like the full decode, a body is rejected when required fields are missing or have the wrong
//! type (`requestKind`, `requestResource`, `requestSubResource`, `userInfo` and `options` are never
//! read: they are skipped, and left empty in the request), and an object whose `apiVersion`/`kind` is not `v1`/`Service` is an error (the caller
//! then looks at what else it is); skipped fields are not checked.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, GroupVersionKind, GroupVersionResource, Status, TypeMeta};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::service::{
    INTERFACE_ANNOTATION, LB_IPS_ANNOTATION, POOL_ANNOTATION, REQUESTED_IP_ANNOTATION,
};

/// Decode a review of Services, keeping only what allocation reads.
pub fn decode_service_review(body: &[u8]) -> serde_json::Result<AdmissionReview<Service>> {
    let MapOnly(wire) = serde_json::from_slice::<MapOnly<WireReview>>(body)?;
    Ok(wire.into_review())
}

/// An answer (a review with a response and no request) as JSON, the patch as base64, the same
/// fields as kube's serialization otherwise. `None` for any other review.
pub fn encode_answer(
    review: &AdmissionReview<DynamicObject>,
) -> Option<serde_json::Result<Vec<u8>>> {
    let (None, Some(resp)) = (&review.request, &review.response) else {
        return None;
    };
    let answer = WireAnswer {
        api_version: &review.types.api_version,
        kind: &review.types.kind,
        response: WireResponse::of(resp),
    };
    Some(serde_json::to_vec(&answer))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireAnswer<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    /// kube sets the type with the patch (`with_patch`), and only JSON patches exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

impl<'a> WireResponse<'a> {
    fn of(resp: &'a AdmissionResponse) -> Self {
        let patch = resp.patch.as_deref().map(|p| BASE64.encode(p));
        WireResponse {
            uid: &resp.uid,
            allowed: resp.allowed,
            status: &resp.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &resp.audit_annotations,
            warnings: resp.warnings.as_ref(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    api_version: String,
    kind: String,
    #[serde(default)]
    request: Option<MapOnly<WireRequest>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    /// Required as in kube's request, never read.
    #[allow(dead_code)]
    user_info: IgnoredAny,
    #[serde(default)]
    object: Option<MapOnly<WireService>>,
    #[serde(default)]
    old_object: Option<MapOnly<WireService>>,
    #[serde(default)]
    dry_run: bool,
}

impl WireReview {
    fn into_review(self) -> AdmissionReview<Service> {
        let types = TypeMeta {
            api_version: self.api_version,
            kind: self.kind,
        };
        let request = self.request.map(|MapOnly(r)| AdmissionRequest {
            types: types.clone(),
            uid: r.uid,
            kind: r.kind,
            resource: r.resource,
            sub_resource: r.sub_resource,
            // Never read by the webhook: skipped (like userInfo and options).
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: r.name,
            namespace: r.namespace,
            operation: r.operation,
            user_info: Default::default(),
            object: r.object.map(|o| o.0.into_service()),
            old_object: r.old_object.map(|o| o.0.into_service()),
            dry_run: r.dry_run,
            options: None,
        });
        AdmissionReview {
            types,
            request,
            response: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireService {
    #[serde(default, deserialize_with = "expect_api_version")]
    #[allow(dead_code)]
    api_version: (),
    #[serde(default, deserialize_with = "expect_kind")]
    #[allow(dead_code)]
    kind: (),
    #[serde(default)]
    metadata: Option<MapOnly<WireMeta>>,
    #[serde(default)]
    spec: Option<MapOnly<WireSpec>>,
    #[serde(default)]
    status: Option<MapOnly<WireStatus>>,
}

fn expect_api_version<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    expect_str(d, "v1")
}

fn expect_kind<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    expect_str(d, "Service")
}

fn expect_str<'de, D: Deserializer<'de>>(d: D, want: &'static str) -> Result<(), D::Error> {
    let got = Str::deserialize(d)?.0;
    if got == want {
        Ok(())
    } else {
        Err(de::Error::invalid_value(de::Unexpected::Str(&got), &want))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    /// Only the keys we read; presence of the map is kept (the patch must know whether to create it).
    #[serde(default)]
    annotations: Option<Kept<AnnotationKeys>>,
    #[serde(default)]
    labels: Option<Kept<LabelKeys>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    load_balancer_class: Option<String>,
    #[serde(default, rename = "loadBalancerIP")]
    load_balancer_ip: Option<String>,
    #[serde(default)]
    ip_families: Option<Vec<String>>,
    #[serde(default)]
    ip_family_policy: Option<String>,
    #[serde(default)]
    ports: Option<Vec<MapOnly<WirePort>>>,
}

#[derive(Deserialize)]
struct WirePort {
    /// k8s-openapi defaults a missing or null port to 0; so do we.
    #[serde(default)]
    port: Option<i32>,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    #[serde(default)]
    load_balancer: Option<MapOnly<WireLbStatus>>,
}

#[derive(Deserialize)]
struct WireLbStatus {
    #[serde(default)]
    ingress: Option<Vec<MapOnly<WireIngress>>>,
}

#[derive(Deserialize)]
struct WireIngress {
    #[serde(default)]
    ip: Option<String>,
}

impl WireService {
    fn into_service(self) -> Service {
        let metadata = self
            .metadata
            .map(|MapOnly(m)| ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                generate_name: m.generate_name,
                uid: m.uid,
                resource_version: m.resource_version,
                annotations: m.annotations.map(|k| k.map),
                labels: m.labels.map(|k| k.map),
                ..ObjectMeta::default()
            })
            .unwrap_or_default();
        let spec = self.spec.map(|MapOnly(s)| ServiceSpec {
            type_: s.type_,
            load_balancer_class: s.load_balancer_class,
            load_balancer_ip: s.load_balancer_ip,
            ip_families: s.ip_families,
            ip_family_policy: s.ip_family_policy,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|MapOnly(p)| ServicePort {
                        port: p.port.unwrap_or_default(),
                        protocol: p.protocol,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        });
        let status = self.status.map(|MapOnly(st)| ServiceStatus {
            load_balancer: st.load_balancer.map(|MapOnly(lb)| LoadBalancerStatus {
                ingress: lb.ingress.map(|list| {
                    list.into_iter()
                        .map(|MapOnly(i)| LoadBalancerIngress {
                            ip: i.ip,
                            ..LoadBalancerIngress::default()
                        })
                        .collect()
                }),
            }),
            ..ServiceStatus::default()
        });
        Service {
            metadata,
            spec,
            status,
        }
    }
}

/// A Service decoded keeping only what allocation and the reconciler read, for watching
/// Services (the cache holds nothing else). Same API identity as `Service`.
#[derive(Clone, Debug)]
pub struct LeanService(pub Service);

impl<'de> Deserialize<'de> for LeanService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MapOnly::<WireService>::deserialize(d).map(|w| LeanService(w.0.into_service()))
    }
}

impl kube::Resource for LeanService {
    type DynamicType = ();
    type Scope = <Service as kube::Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        <Service as kube::Resource>::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// A struct that must be written as a JSON object. serde's derived structs also read a JSON
/// array, taking the fields by position; kube's and k8s-openapi's types refuse that, so the lean
/// decode must too (found by fuzzing: `"status": [...]` was read as a status).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = MapOnly<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<MapOnly<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(access)).map(MapOnly)
            }
        }

        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// Which keys of a string map are kept.
trait Keys {
    fn wanted(key: &str) -> bool;
}

struct AnnotationKeys;

impl Keys for AnnotationKeys {
    fn wanted(key: &str) -> bool {
        key == LB_IPS_ANNOTATION
            || key == REQUESTED_IP_ANNOTATION
            || key == INTERFACE_ANNOTATION
            || key == POOL_ANNOTATION
    }
}

struct LabelKeys;

/// Every label: pool objects select Services by any of them (Kubernetes bounds a label's key to
/// 316 bytes and its value to 63, and the whole object's size; the webhook bounds the body).
impl Keys for LabelKeys {
    fn wanted(_key: &str) -> bool {
        true
    }
}

/// A string map of which only the wanted keys are decoded; other values are skipped unread.
struct Kept<K> {
    map: BTreeMap<String, String>,
    keys: PhantomData<K>,
}

impl<'de, K: Keys> Deserialize<'de> for Kept<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeptVisitor<K>(PhantomData<K>);

        impl<'de, K: Keys> Visitor<'de> for KeptVisitor<K> {
            type Value = Kept<K>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Kept<K>, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(Str(key)) = access.next_key()? {
                    if K::wanted(&key) {
                        let value: String = access.next_value()?;
                        map.insert(key.into_owned(), value);
                    } else {
                        access.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Kept {
                    map,
                    keys: PhantomData,
                })
            }
        }

        d.deserialize_map(KeptVisitor(PhantomData))
    }
}

/// A string borrowed from the body when it has no escapes (serde's `Cow` always allocates).
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;

        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }

        d.deserialize_str(StrVisitor)
    }
}

pub mod objects;

#[cfg(test)]
mod tests;
