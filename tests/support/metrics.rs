//! Reading `/metrics` in tests: scrape the admin port, find a sample, list the metric names.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The text of `GET /metrics` on an admin address.
pub async fn scrape(admin: SocketAddr) -> String {
    let resp = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("scrape /metrics");
    assert_eq!(resp.status(), 200, "/metrics status");
    resp.text().await.expect("/metrics body")
}

/// One sample line: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Splits a sample line `name{a="b",c="d"} value` into its name, labels and value. Enough for
/// our own exposition: label values never contain `,` `"` or `}`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let labels = body
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(n, have, _)| *n == name && labels.iter().all(|l| have.contains(l)))
        .map(|(_, _, v)| v)
}

/// Every series name exported (histograms and counters as their `_bucket`, `_total`... series).
pub fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .map(|(n, _, _)| n.to_string())
        .collect()
}
