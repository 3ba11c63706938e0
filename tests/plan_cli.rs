//! `kube-vip-webhook plan` as a user runs it: the real binary, the example files.

use std::process::Command;

fn plan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kube-vip-webhook"))
        .arg("plan")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

const CM: &str = "manifest/examples/kubevip-configmap.yaml";

#[test]
fn json_plan_of_the_examples() {
    let out = plan(&[
        "--configmap",
        CM,
        "--services",
        "manifest/examples/services.yaml",
        "--request",
        "manifest/examples/new-services.yaml",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n).unwrap().clone();
    // .200 (annotation) and .201 (pinned spec.loadBalancerIP) are taken.
    assert_eq!(by_name("web")["ips"], serde_json::json!(["192.168.10.202"]));
    assert_eq!(
        by_name("web")["annotations"]["kube-vip.io/loadbalancerIPs"],
        "192.168.10.202"
    );
    assert_eq!(by_name("web")["labels"]["implementation"], "kube-vip");
    assert_eq!(by_name("web")["error"], serde_json::Value::Null);
    // RequireDualStack, IPv6 first.
    assert_eq!(
        by_name("api")["ips"],
        serde_json::json!(["fd00:20::", "10.20.0.1"])
    );
    // UDP 53 shares with the TCP 53 holder.
    assert_eq!(by_name("dns-udp")["ips"], serde_json::json!(["10.30.0.1"]));
    // Clashing pinned address: no address, the reason names the holder.
    let clash = by_name("clash");
    assert_eq!(clash["ips"], serde_json::json!([]));
    assert!(clash["error"].as_str().unwrap().contains("default/ingress"));
    let pools = v["pools"].as_array().unwrap();
    let global = pools.iter().find(|p| p["key"] == "range-global").unwrap();
    assert_eq!(
        (
            global["size"].as_u64(),
            global["used"].as_u64(),
            global["free"].as_u64()
        ),
        (Some(11), Some(3), Some(8))
    );
    assert_eq!(v["config_errors"], serde_json::json!([]));
}

#[test]
fn reconciler_mode_without_requests_and_table_output() {
    let out = plan(&[
        "--configmap",
        CM,
        "--services",
        "manifest/examples/services.yaml",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Only the Service without an address is decided.
    assert!(
        text.contains("waiting") && text.contains("192.168.10.202"),
        "{text}"
    );
    assert!(!text.contains("legacy-pinned"), "{text}");
    assert!(
        text.contains("POOL") && text.contains("range-global"),
        "{text}"
    );
}

#[test]
fn unreadable_input_is_the_only_failure() {
    let out = plan(&["--configmap", "does/not/exist.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does/not/exist.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed").unwrap();
    let out = plan(&["--configmap", CM, "--services", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML or JSON"));
    // An exhausted pool is a result, not a failure.
    let cm = dir.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "kind: ConfigMap\ndata:\n  range-global: 10.0.0.1-10.0.0.1\n",
    )
    .unwrap();
    let out = plan(&[
        "--configmap",
        cm.to_str().unwrap(),
        "--request",
        "manifest/examples/new-services.yaml",
        "-o",
        "json",
    ]);
    assert!(out.status.success());
}

/// Issue 14: Nodes and cluster-info from a file, `--exclude`: never handed out, pinning one is
/// denied naming its owner, and the plan lists them with the pools that contain them.
#[test]
fn nodes_the_api_endpoint_and_exclusions_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.yaml");
    let svc = |name: &str, pinned: Option<&str>| {
        let annotations = pinned.map_or(String::new(), |ip| {
            format!("\n  annotations: {{kube-vip.io/loadbalancerIPs: \"{ip}\"}}")
        });
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default{annotations}\n\
             spec:\n  type: LoadBalancer\n  ports: [{{port: 80}}]\n"
        )
    };
    let docs = [
        svc("pinned-node", Some("192.168.10.202")),
        svc("pinned-excluded", Some("192.168.10.201")),
        svc("a", None),
        svc("b", None),
    ];
    std::fs::write(&requests, docs.join("---\n")).unwrap();
    let args = [
        "--configmap",
        CM,
        "--services",
        "manifest/examples/services.yaml",
        "--nodes",
        "manifest/examples/nodes.yaml",
        "--exclude",
        "192.168.10.201,192.168.10.203",
        "--request",
        requests.to_str().unwrap(),
    ];
    let out = plan(&[&args[..], &["-o", "json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n).unwrap().clone();
    let error = |n: &str| by_name(n)["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error("pinned-node").contains("address 192.168.10.202 is node worker-1's InternalIP"),
        "{}",
        error("pinned-node")
    );
    assert!(
        error("pinned-excluded").contains("address 192.168.10.201 is excluded by --exclude"),
        "{}",
        error("pinned-excluded")
    );
    // .200 and .201 (the examples' Services: .201 is pinned there, exclusions never move a
    // holder) are used, .202 is worker-1, .203 is excluded: the next free are .204 and .205.
    assert_eq!(by_name("a")["ips"], serde_json::json!(["192.168.10.204"]));
    assert_eq!(by_name("b")["ips"], serde_json::json!(["192.168.10.205"]));
    let reserved = &v["reserved"];
    assert_eq!(
        reserved["addresses"],
        serde_json::json!([
            {"address": "192.168.1.12", "owner": "node worker-2's InternalIP", "pools": []},
            {"address": "192.168.10.202", "owner": "node worker-1's InternalIP",
             "pools": ["range-global"]},
            {"address": "192.168.10.210", "owner": "the API endpoint (server \
              https://192.168.10.210:6443 in ConfigMap kube-public/cluster-info)",
             "pools": ["range-global"]},
        ])
    );
    assert_eq!(
        reserved["excluded"],
        serde_json::json!([{"source": "--exclude",
                            "addresses": "192.168.10.201, 192.168.10.203"}])
    );
    let text = String::from_utf8(plan(&args).stdout).unwrap();
    assert!(text.contains("NEVER HANDED OUT"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("192.168.10.202")
            && l.contains("node worker-1's InternalIP")
            && l.ends_with("range-global")),
        "{text}"
    );
    // A bad --exclude entry is refused, not ignored.
    let out = plan(&["--configmap", CM, "--exclude", "192.168.10.300"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--exclude: entry \"192.168.10.300\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--pools`: VIPPool objects from a file come before the ConfigMap, as in the cluster.
#[test]
fn pool_objects_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.yaml");
    std::fs::write(
        &requests,
        "apiVersion: v1\nkind: Service\nmetadata: {name: shop, namespace: prod, labels: {tier: web}}\n\
         spec: {type: LoadBalancer, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: gold, namespace: default}\n\
         spec: {type: LoadBalancer, loadBalancerClass: example.com/gold, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\n\
         spec: {type: LoadBalancer, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let out = plan(&[
        "--configmap",
        CM,
        "--pools",
        "manifest/examples/vippools.yaml",
        "--request",
        requests.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let ips = |n: &str| results.iter().find(|r| r["name"] == n).unwrap()["ips"].clone();
    // Files carry no namespace labels: `prod` is not known to be env=prod, so web-prod does not
    // select it; the ConfigMap does (its global range).
    assert_eq!(ips("gold"), serde_json::json!(["192.168.60.10"]));
    let gold = results.iter().find(|r| r["name"] == "gold").unwrap();
    assert_eq!(gold["annotations"]["kube-vip.io/serviceInterface"], "eth1");
    assert_ne!(ips("other"), serde_json::json!([]));
    let keys: Vec<&str> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"vippool/gold") && keys.contains(&"vippool/web-prod"),
        "{keys:?}"
    );
    // A broken pools file is an error naming the object.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: VIPPool\nmetadata: {name: x}\nspec: {addresses: 7}\n",
    )
    .unwrap();
    let out = plan(&["--configmap", CM, "--pools", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kind VIPPool"));
}

/// Installed as a kubectl plugin (README: a symlink named `kubectl-vip` on the PATH), kubectl
/// runs `kubectl-vip plan ...`: the binary must work under that name.
#[cfg(unix)]
#[test]
fn works_as_the_kubectl_vip_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-vip");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kube-vip-webhook"), &plugin).unwrap();
    let out = Command::new(&plugin)
        .args(["plan", "--configmap", CM])
        .args(["--request", "manifest/examples/new-services.yaml"])
        .args(["-o", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["results"].as_array().unwrap().is_empty(), "{v}");
}
