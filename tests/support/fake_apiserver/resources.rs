//! The resource types the fake serves, and the discovery documents describing them.

use std::collections::HashMap;

use serde_json::{Value, json};

/// One served resource type (a group/version/plural), like an entry of `kubectl api-resources`.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    /// URL path segment, e.g. `services`.
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether a `/status` subresource exists. When it does, writes to the main resource keep the
    /// stored status and writes to `/status` change only the status, as on a real apiserver.
    pub status_subresource: bool,
    /// Status a created object starts with when `status_subresource` is set (`None`: no status).
    pub initial_status: Option<Value>,
    /// Field selector labels accepted besides `metadata.name` and `metadata.namespace`
    /// (dotted paths into the object).
    pub field_labels: Vec<String>,
}

impl ResourceDef {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: false,
            initial_status: None,
            field_labels: Vec::new(),
        }
    }

    /// Adds a `/status` subresource; `initial` is the status of newly created objects.
    pub fn with_status(mut self, initial: Option<Value>) -> Self {
        self.status_subresource = true;
        self.initial_status = initial;
        self
    }

    pub fn with_field_labels(mut self, labels: &[&str]) -> Self {
        self.field_labels = labels.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as error messages name a resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The resources every fake starts with.
pub fn builtins() -> Vec<ResourceDef> {
    let event_fields = [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    vec![
        ResourceDef::new("", "v1", "services", "Service", true)
            .with_status(Some(json!({ "loadBalancer": {} }))),
        ResourceDef::new("", "v1", "configmaps", "ConfigMap", true),
        ResourceDef::new("", "v1", "secrets", "Secret", true).with_field_labels(&["type"]),
        ResourceDef::new("", "v1", "events", "Event", true).with_field_labels(&event_fields),
        ResourceDef::new("", "v1", "endpoints", "Endpoints", true),
        ResourceDef::new("", "v1", "nodes", "Node", false),
        ResourceDef::new(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        ),
        ResourceDef::new("", "v1", "namespaces", "Namespace", false)
            .with_status(Some(json!({ "phase": "Active" }))),
        ResourceDef::new("events.k8s.io", "v1", "events", "Event", true),
        ResourceDef::new("coordination.k8s.io", "v1", "leases", "Lease", true),
        ResourceDef::new(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
        ),
        ResourceDef::new(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
        ),
    ]
}

/// Index of a resource in the [`Registry`]; stable for the life of the fake.
pub type ResId = usize;

/// Served resources, looked up by (group, version, plural).
#[derive(Default)]
pub struct Registry {
    defs: Vec<ResourceDef>,
    index: HashMap<(String, String, String), ResId>,
}

impl Registry {
    /// Adds `def`, replacing an existing definition of the same group/version/plural.
    pub fn register(&mut self, def: ResourceDef) -> ResId {
        let key = (def.group.clone(), def.version.clone(), def.plural.clone());
        if let Some(&id) = self.index.get(&key) {
            self.defs[id] = def;
            return id;
        }
        self.defs.push(def);
        let id = self.defs.len() - 1;
        self.index.insert(key, id);
        id
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResId> {
        self.index
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .copied()
    }

    pub fn def(&self, id: ResId) -> &ResourceDef {
        &self.defs[id]
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// Whether any resource is served under `group`/`version`.
    pub fn serves(&self, group: &str, version: &str) -> bool {
        self.defs
            .iter()
            .any(|d| d.group == group && d.version == version)
    }

    /// `GET /api`.
    pub fn core_versions(&self) -> Value {
        json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [] })
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for d in self.defs.iter().filter(|d| !d.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, versions)) if !versions.contains(&d.version) => {
                    versions.push(d.version.clone())
                }
                Some(_) => {}
                None => groups.push((d.group.clone(), vec![d.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(name, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({ "groupVersion": format!("{name}/{v}"), "version": v }))
                    .collect();
                json!({
                    "name": name,
                    "preferredVersion": versions[0].clone(),
                    "versions": versions,
                })
            })
            .collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub fn resource_list(&self, group: &str, version: &str) -> Value {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut resources = Vec::new();
        for d in self
            .defs
            .iter()
            .filter(|d| d.group == group && d.version == version)
        {
            resources.push(json!({
                "name": d.plural,
                "singularName": d.kind.to_lowercase(),
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": verbs,
            }));
            if d.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", d.plural),
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        })
    }
}
