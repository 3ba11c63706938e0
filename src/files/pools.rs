//! VIPPool objects from files (`plan --pools`, `serve --standalone --pools`), as
//! `kubectl get vippools -o yaml` prints them or as they are applied. Other kinds are skipped.

use std::path::PathBuf;

use super::{FileError, kind, load_objects};
use crate::pools::VIPPool;
use crate::pools::crd::KIND;

/// Every VIPPool of several files; an object of kind VIPPool that does not read is an error
/// naming its position (nothing is guessed).
pub fn load_pools(paths: &[PathBuf]) -> Result<Vec<VIPPool>, FileError> {
    let mut out = Vec::new();
    for path in paths {
        for (index, obj) in load_objects(path)?.into_iter().enumerate() {
            if kind(&obj) != KIND {
                continue;
            }
            let pool: VIPPool = serde_json::from_value(obj).map_err(|e| FileError::Object {
                path: path.clone(),
                index,
                kind: KIND.into(),
                reason: e.to_string(),
            })?;
            out.push(pool);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pools_skips_other_kinds_and_names_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pools.yaml");
        std::fs::write(
            &path,
            "apiVersion: lb.kube-vip.io/v1alpha1\nkind: VIPPool\nmetadata: {name: a}\n\
             spec: {addresses: [10.0.0.0/30], priority: 3}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip}\n",
        )
        .unwrap();
        let pools = load_pools(std::slice::from_ref(&path)).unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].spec.priority, 3);
        assert!(pools[0].spec.avoid_buggy_ips, "defaulted as the API does");
        std::fs::write(
            &path,
            "kind: ConfigMap\n---\nkind: VIPPool\nmetadata: {name: b}\nspec: {priority: high}\n",
        )
        .unwrap();
        let err = load_pools(&[path]).unwrap_err().to_string();
        assert!(err.contains("object #1 (kind VIPPool)"), "{err}");
    }
}
