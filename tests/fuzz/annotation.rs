//! (d) The requested-address path: `kube-vip.io/loadbalancerIPs` / `spec.loadBalancerIP` values
//! (real ones from `tests/fuzz-seeds/annotations.txt`, mutated as text, or lists of addresses
//! other Services hold), read by `SvcInfo::requested`/`held` and decided by the engine against
//! an index of other holders.

use std::collections::HashSet;
use std::net::IpAddr;

use kube_vip_webhook::config::Config;
use kube_vip_webhook::engine::{Options, Outcome, View, decide};
use kube_vip_webhook::index::{Holder, HolderId, UsedIndex};
use kube_vip_webhook::service::{
    IMPLEMENTATION_LABEL, LB_IPS_ANNOTATION, PortKey, Protocol, RequestSource, ServiceKey, SvcInfo,
    port_clash,
};
use proptest::prelude::*;

use crate::harness::json::pick;
use crate::harness::{TextMutation, fuzz, line_seeds, mutate_text, text_mutation};

const CASES: u32 = 2500;

/// Addresses in and around the pool, in both families, that holders and requests share.
const ADDRS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.0.7",
    "10.0.1.1",
    "0.0.0.0",
    "fd00::1",
    "fd00::2",
    "::ffff:10.0.0.1",
    "192.168.10.200",
];
const PORTS: &[i32] = &[53, 80, 443, 0, -1, 65536];
const PROTOCOLS: &[Protocol] = &[
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Sctp,
    Protocol::Other,
];

#[derive(Clone, Debug)]
enum Text {
    /// A seed line, mutated.
    Seed(u32, Vec<TextMutation>),
    /// Addresses from `ADDRS` joined by `sep`.
    List(Vec<u8>, u8),
    Any(String),
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => (any::<u32>(), prop::collection::vec(text_mutation(), 0..4)).prop_map(|(s, m)| Text::Seed(s, m)),
        3 => (prop::collection::vec(any::<u8>(), 1..4), any::<u8>()).prop_map(|(l, s)| Text::List(l, s)),
        1 => "\\PC{0,40}".prop_map(Text::Any),
    ]
}

type Ports = Vec<(u8, u8)>;

fn ports() -> impl Strategy<Value = Ports> {
    prop::collection::vec((any::<u8>(), any::<u8>()), 0..3)
}

#[derive(Clone, Debug)]
struct Case {
    annotation: Option<Text>,
    spec_ip: Option<Text>,
    dhcp: Option<Text>,
    status: Vec<u8>,
    load_balancer: bool,
    labelled: bool,
    ports: Ports,
    /// UPDATE: the old object requested the same value (validation skipped) or nothing.
    old_same: Option<bool>,
    /// Other holders: (address, ports, is this very Service).
    holders: Vec<(u8, Ports, bool)>,
    share: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            prop::option::weighted(0.8, text()),
            prop::option::weighted(0.4, text()),
            prop::option::weighted(0.2, text()),
        ),
        prop::collection::vec(any::<u8>(), 0..2),
        (prop::bool::weighted(0.9), any::<bool>(), ports()),
        prop::option::of(any::<bool>()),
        prop::collection::vec((any::<u8>(), ports(), prop::bool::weighted(0.1)), 0..5),
        any::<bool>(),
    )
        .prop_map(
            |(
                (annotation, spec_ip, dhcp),
                status,
                (load_balancer, labelled, ports),
                old_same,
                holders,
                share,
            )| Case {
                annotation,
                spec_ip,
                dhcp,
                status,
                load_balancer,
                labelled,
                ports,
                old_same,
                holders,
                share,
            },
        )
}

fn render(t: &Text, seeds: &[String]) -> String {
    match t {
        Text::Seed(s, muts) => {
            let mut v = seeds[*s as usize % seeds.len()].clone();
            muts.iter().for_each(|m| mutate_text(&mut v, m));
            v
        }
        Text::List(l, sep) => {
            let sep = pick(&[",", ", ", " , ", ",,", ";"], *sep);
            l.iter()
                .map(|i| pick(ADDRS, *i))
                .collect::<Vec<_>>()
                .join(sep)
        }
        Text::Any(s) => s.clone(),
    }
}

fn port_keys(p: &Ports) -> Vec<PortKey> {
    p.iter()
        .map(|(port, proto)| PortKey {
            port: pick(PORTS, *port),
            protocol: pick(PROTOCOLS, *proto),
        })
        .collect()
}

fn svc(c: &Case, seeds: &[String]) -> SvcInfo {
    SvcInfo {
        namespace: "default".into(),
        name: "web".into(),
        load_balancer: c.load_balancer,
        lb_ips_annotation: c.annotation.as_ref().map(|t| render(t, seeds)),
        spec_lb_ip: c.spec_ip.as_ref().map(|t| render(t, seeds)),
        requested_ip_annotation: c.dhcp.as_ref().map(|t| render(t, seeds)),
        status_ips: c
            .status
            .iter()
            .map(|i| pick(ADDRS, *i).to_string())
            .collect(),
        ports: port_keys(&c.ports),
        has_implementation_label: c.labelled,
        ..SvcInfo::default()
    }
}

fn entries(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|e| !e.is_empty())
}

fn check(
    c: &Case,
    seeds: &[String],
    config: &Config,
    tally: &crate::harness::Tally,
) -> Result<(), TestCaseError> {
    let s = svc(c, seeds);
    // requested(): a non-blank annotation wins over a non-blank spec.loadBalancerIP.
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
    let req = s.requested();
    let want = if !blank(&s.lb_ips_annotation) {
        s.lb_ips_annotation
            .as_deref()
            .map(|v| (v.trim(), RequestSource::Annotation))
    } else if !blank(&s.spec_lb_ip) {
        s.spec_lb_ip
            .as_deref()
            .map(|v| (v.trim(), RequestSource::SpecLoadBalancerIp))
    } else {
        None
    };
    prop_assert_eq!(req.map(|r| (r.value, r.source)), want);

    // held(): every parsable address once, no DHCP placeholder, every other entry counted.
    let held = s.held();
    let all: Vec<&str> = [
        &s.lb_ips_annotation,
        &s.spec_lb_ip,
        &s.requested_ip_annotation,
    ]
    .into_iter()
    .flatten()
    .flat_map(|v| entries(v))
    .chain(
        s.status_ips
            .iter()
            .map(|i| i.trim())
            .filter(|e| !e.is_empty()),
    )
    .collect();
    if s.load_balancer {
        let parsed: HashSet<IpAddr> = all
            .iter()
            .filter_map(|e| e.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        prop_assert_eq!(
            held.ips.len(),
            parsed.len(),
            "duplicates or misses in {:?}",
            held.ips
        );
        prop_assert_eq!(held.ips.iter().copied().collect::<HashSet<_>>(), parsed);
        prop_assert_eq!(
            held.malformed.len(),
            all.iter().filter(|e| e.parse::<IpAddr>().is_err()).count()
        );
    } else {
        prop_assert!(
            held.ips.is_empty() && held.malformed.is_empty(),
            "a non-LoadBalancer holds {:?}",
            held
        );
    }

    // The engine's decision on the request, against other holders.
    let me = HolderId::Service(s.key());
    let mut index = UsedIndex::new();
    for (i, (addr, ports, mine)) in c.holders.iter().enumerate() {
        let (id, label) = if *mine {
            (me.clone(), "default/web".to_string())
        } else {
            (
                HolderId::Service(ServiceKey::new("other", format!("h{i}"))),
                format!("other/h{i}"),
            )
        };
        let ip: IpAddr = pick(ADDRS, *addr).parse().expect("ADDRS are addresses");
        let mut ips = index.addresses_of(&id).to_vec();
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
        index.set_holder(Holder::new(id, label, &port_keys(ports)), &ips);
    }
    // The old object requested the same, or nothing.
    let old = c.old_same.map(|same| {
        if same {
            s.clone()
        } else {
            SvcInfo {
                lb_ips_annotation: None,
                spec_lb_ip: None,
                ..s.clone()
            }
        }
    });
    let unchanged = c.old_same == Some(true) && req.is_some();
    let options = Options::default();
    let view = View {
        config,
        config_name: "kube-system/kubevip",
        index: &index,
        options: &options,
        me: std::slice::from_ref(&me),
    };
    let d = decide(&s, old.as_ref(), &view);
    // What no Service can carry (ports out of range, too many addresses or ports) is denied
    // as such, before anything else is looked at.
    if let Some(why) = kube_vip_webhook::engine::check_bounds(&s, &options) {
        prop_assert_eq!(&d.outcome, &Outcome::Denied(why));
        tally.exec(d.outcome.label());
        return Ok(());
    }
    let Some(req) = req.filter(|_| s.load_balancer) else {
        prop_assert!(
            !matches!(d.outcome, Outcome::Requested { .. } | Outcome::Denied(_)),
            "{:?}",
            d
        );
        tally.exec(d.outcome.label());
        return Ok(());
    };
    let list: Vec<&str> = entries(req.value).collect();
    let ips: Vec<IpAddr> = list.iter().filter_map(|e| e.parse().ok()).collect();
    let not_ips: Vec<&str> = list
        .iter()
        .copied()
        .filter(|e| e.parse::<IpAddr>().is_err())
        .collect();
    match &d.outcome {
        Outcome::Requested { ips: got } => {
            prop_assert_eq!(got, &ips);
            for e in &not_ips {
                // Quoted as the engine quotes user input: cut to MAX_QUOTED characters.
                let shown: String = e
                    .chars()
                    .take(kube_vip_webhook::engine::MAX_QUOTED)
                    .collect();
                let named = format!("{shown:?}");
                prop_assert!(
                    d.warnings.iter().any(|w| w.contains(&named)),
                    "entry {} admitted without a warning",
                    named
                );
            }
            if !unchanged {
                for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
                    for h in index.holders(*ip).iter().filter(|h| h.id != me) {
                        prop_assert!(
                            port_clash(&s.ports, h.ports()).is_none(),
                            "{} admitted although {} holds it on clashing ports",
                            ip,
                            h.label
                        );
                    }
                }
            }
            let copied = d.changes.annotations.get(LB_IPS_ANNOTATION);
            match req.source {
                RequestSource::Annotation => prop_assert!(copied.is_none()),
                RequestSource::SpecLoadBalancerIp => {
                    prop_assert_eq!(copied.map(String::as_str), Some(req.value))
                }
            }
            prop_assert_eq!(
                d.changes.labels.contains_key(IMPLEMENTATION_LABEL),
                !s.has_implementation_label
            );
        }
        Outcome::Denied(why) => {
            // Long entries are shortened in messages ("..."): their start must be named.
            let bad_entry = why.contains("is neither an IP address nor a DNS name")
                && not_ips.iter().any(|e| {
                    let quoted = format!("{e:?}");
                    let start: String = quoted.chars().take(24).collect();
                    why.contains(&quoted) || why.contains(&start)
                });
            let clash = !unchanged
                && ips.iter().any(|ip| {
                    index.holders(*ip).iter().any(|h| {
                        h.id != me
                            && port_clash(&s.ports, h.ports()).is_some()
                            && why.contains(&format!(
                                "address {ip} is already used by Service {}",
                                h.label
                            ))
                    })
                });
            // A Service has at most one address per family (engine bound).
            let families = |v4: bool| ips.iter().filter(|ip| ip.is_ipv4() == v4).count();
            let per_family = (families(true) > 1 || families(false) > 1)
                && why.contains("a Service has at most one address per family");
            prop_assert!(
                bad_entry || clash || per_family,
                "denied without naming a bad entry, a real clash or two addresses of one family: {}",
                why
            );
        }
        other => prop_assert!(false, "a request decided as {:?}", other),
    }
    tally.exec(d.outcome.label());
    Ok(())
}

#[test]
fn requested_addresses() {
    let seeds = line_seeds("annotations.txt");
    let configs: Vec<Config> = [false, true]
        .into_iter()
        .map(|share| {
            let mut data = std::collections::BTreeMap::new();
            data.insert(
                "cidr-global".to_string(),
                "10.0.0.0/29,fd00::/125".to_string(),
            );
            data.insert("allow-share-global".to_string(), share.to_string());
            Config::from_data(&data)
        })
        .collect();
    fuzz(
        "requested_addresses",
        CASES,
        case(),
        |c| format!("{:#?}", svc(c, &seeds)),
        |c, tally| check(&c, &seeds, &configs[usize::from(c.share)], tally),
    );
}
