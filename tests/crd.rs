//! The VIPPool CRD: `manifest/base/crd.yaml` is exactly what the type generates (regenerate with
//! `UPDATE_CRD=1 cargo test --test crd`), and its schema holds only what Kubernetes 1.28 reads:
//! address patterns in RE2 syntax (checked here with the `regex` crate, RE2's semantics) that
//! accept every entry form and refuse the usual mistakes.

use std::path::Path;

use kube::CustomResourceExt;
use kube_vip_webhook::pools::VIPPool;
use kube_vip_webhook::pools::crd::ENTRY_PATTERN;
use regex::Regex;

const FILE: &str = "manifest/base/crd.yaml";

fn generated() -> String {
    let crd = VIPPool::crd();
    let yaml = serde_yaml_ng::to_string(&crd).unwrap();
    format!(
        "# Generated from src/pools/crd.rs (the VIPPool type): do not edit by hand.\n\
         # Regenerate with `UPDATE_CRD=1 cargo test --test crd`.\n{yaml}"
    )
}

#[test]
fn manifest_is_what_the_type_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let want = generated();
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{FILE} differs from the VIPPool type; run `UPDATE_CRD=1 cargo test --test crd`"
    );
}

/// The pattern as the apiserver applies it (RE2, whole string).
fn entry() -> Regex {
    Regex::new(ENTRY_PATTERN).unwrap()
}

#[test]
fn the_entry_pattern_accepts_every_form() {
    let re = entry();
    for ok in [
        "10.0.0.0/24",
        "10.0.0.1",
        "10.0.0.10-10.0.0.20",
        "0.0.0.0/0",
        "255.255.255.255/32",
        "fd00::/64",
        "fd00::1-fd00::ff",
        "::1",
        "::",
        "::/0",
        "2001:db8:0:0:0:0:0:1",
        "::ffff:10.0.0.1",
        "fe80::1:2:3:4:5:6",
        "2001:db8::/128",
    ] {
        assert!(re.is_match(ok), "{ok} refused");
    }
}

#[test]
fn the_entry_pattern_refuses_the_usual_mistakes() {
    let re = entry();
    for bad in [
        "",
        "10.0.0.0/33",
        "10.0.0.256",
        "10.0.0",
        "10.0.0.0/",
        "010.0.0.1",
        "10.0.0.1 - 10.0.0.2",
        "10.0.0.1-",
        "10.0.0.0/24,10.0.1.0/24",
        "fd00::/129",
        "fd00:::1",
        "fd00::1::2",
        "gggg::1",
        "1:2:3:4:5:6:7:8:9",
        "10.0.0.1-fd00::1",
        "fd00::1-10.0.0.1",
        "example.com",
        " 10.0.0.1",
    ] {
        assert!(!re.is_match(bad), "{bad:?} accepted");
    }
}

#[test]
fn the_schema_uses_nothing_newer_than_kubernetes_1_28() {
    let text = generated();
    // CEL validation rules (and the IP/CIDR library in them, 1.31+) are left out on purpose.
    assert!(!text.contains("x-kubernetes-validations"));
    let crd = VIPPool::crd();
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["vpool".to_string()][..])
    );
    assert_eq!(crd.spec.scope, "Cluster");
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Addresses",
            "Priority",
            "IPv4 Free",
            "IPv6 Free",
            "Ready",
            "Disabled",
            "Age"
        ]
    );
}
