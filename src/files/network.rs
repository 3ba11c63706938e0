//! What reserves addresses, from files (`plan --nodes`): Nodes as `kubectl get nodes -o yaml`
//! prints them, and optionally the `default/kubernetes` EndpointSlice and the
//! `kube-public/cluster-info` ConfigMap (`kubectl get -o yaml` of each, in the same or another
//! file). Any other object is an error: a file given for this is meant to be read whole.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{FileError, kind, load_objects};
use crate::reserved::objects::{
    self, CLUSTER_INFO_NAME, CLUSTER_INFO_NAMESPACE, KUBERNETES_NAMESPACE, KUBERNETES_SERVICE,
    LeanNode,
};
use crate::reserved::{Holding, Source};

/// Every source found in `paths`, in file order.
pub fn load_network(paths: &[PathBuf]) -> Result<Vec<(Source, Vec<Holding>)>, FileError> {
    let mut out = Vec::new();
    for path in paths {
        for (index, obj) in load_objects(path)?.into_iter().enumerate() {
            out.push(source_of(path, index, obj)?);
        }
    }
    Ok(out)
}

fn source_of(path: &Path, index: usize, obj: Value) -> Result<(Source, Vec<Holding>), FileError> {
    let kind = kind(&obj).to_string();
    let meta = |field: &str| {
        obj.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (namespace, name) = (meta("namespace"), meta("name"));
    let error = |reason: String| FileError::Object {
        path: path.to_path_buf(),
        index,
        kind: kind.clone(),
        reason,
    };
    match kind.as_str() {
        "Node" => Ok(objects::node(&decode::<LeanNode>(obj).map_err(error)?.0)),
        "EndpointSlice" if namespace == KUBERNETES_NAMESPACE && name == KUBERNETES_SERVICE => Ok(
            objects::endpoint_slice(&decode::<EndpointSlice>(obj).map_err(error)?),
        ),
        "ConfigMap" if namespace == CLUSTER_INFO_NAMESPACE && name == CLUSTER_INFO_NAME => {
            let cm = decode::<ConfigMap>(obj).map_err(error)?;
            Ok(objects::cluster_info(Some(&cm)))
        }
        _ => Err(error(format!(
            "expected Nodes, the {KUBERNETES_NAMESPACE}/{KUBERNETES_SERVICE} EndpointSlice or the \
             {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME} ConfigMap, found {kind} \
             {namespace}/{name}"
        ))),
    }
}

fn decode<T: DeserializeOwned>(obj: Value) -> Result<T, String> {
    serde_json::from_value(obj).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn nodes_slice_and_cluster_info_from_a_list_and_documents() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: worker-1}
  status:
    addresses:
    - {type: InternalIP, address: 10.0.0.5}
    - {type: Hostname, address: worker-1}
- apiVersion: v1
  kind: Node
  metadata: {name: worker-2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default}
addressType: IPv4
endpoints:
- addresses: [10.0.0.2]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cluster-info, namespace: kube-public}
data:
  kubeconfig: |
    clusters:
    - cluster: {server: "https://10.0.0.100:6443"}
"#;
        let (_dir, path) = write("nodes.yaml", text);
        let got = load_network(&[path]).unwrap();
        let owners: Vec<(Source, Vec<String>)> = got
            .iter()
            .map(|(s, h)| (s.clone(), h.iter().map(|h| h.owner.clone()).collect()))
            .collect();
        assert_eq!(
            owners,
            [
                (
                    Source::Node("worker-1".into()),
                    vec!["node worker-1's InternalIP".to_string()]
                ),
                (Source::Node("worker-2".into()), vec![]),
                (
                    Source::EndpointSlice("kubernetes".into()),
                    vec!["the API endpoint (EndpointSlice default/kubernetes)".to_string()]
                ),
                (
                    Source::ClusterInfo,
                    vec![
                        "the API endpoint (server https://10.0.0.100:6443 in ConfigMap \
                         kube-public/cluster-info)"
                            .to_string()
                    ]
                ),
            ]
        );
    }

    #[test]
    fn another_object_is_an_error_naming_it() {
        let (_dir, path) = write(
            "x.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip, namespace: kube-system}\n",
        );
        let e = load_network(&[path]).unwrap_err().to_string();
        assert!(
            e.contains("object #0 (kind ConfigMap)")
                && e.contains("found ConfigMap kube-system/kubevip"),
            "{e}"
        );
        let (_dir, path) = write(
            "n.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: 7}\n",
        );
        let e = load_network(&[path]).unwrap_err().to_string();
        assert!(e.contains("(kind Node) is not a valid Node"), "{e}");
    }
}
