//! The monitoring files as tests read them: the PrometheusRule's rule groups, the Grafana
//! dashboard's queries, and the metric names a PromQL expression uses.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The PrometheusRule's `spec` (the rule groups, as a Prometheus rules file holds them).
pub fn rule_groups() -> Value {
    let path = repo().join("manifest/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("read prometheusrule.yaml");
    let rule: Value = serde_yaml_ng::from_str(&text).expect("prometheusrule.yaml is YAML");
    rule["spec"].clone()
}

/// The rule groups as a rules file for promtool and Prometheus.
pub fn rules_file(groups: &Value) -> String {
    serde_yaml_ng::to_string(groups).expect("rules as YAML")
}

/// Every alerting rule: (alert name, rule object).
pub fn alerts(groups: &Value) -> Vec<(String, Value)> {
    groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r)))
        .collect()
}

/// The dashboard JSON.
pub fn dashboard() -> Value {
    let path = repo().join("manifest/monitoring/dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read dashboard.json");
    serde_json::from_str(&text).expect("dashboard.json is JSON")
}

/// Every panel (rows' nested panels included).
pub fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        out.extend(p["panels"].as_array().cloned().unwrap_or_default());
    }
    out
}

/// Every query of the dashboard: (panel title and refId, expression as Grafana stores it).
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let name = format!(
                "{} / {}",
                p["title"].as_str().unwrap_or("?"),
                t["refId"].as_str().unwrap_or("?")
            );
            out.push((name, t["expr"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// A Grafana query as Prometheus receives it: the interval variables Grafana fills in.
pub fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// Words that are never metric names: binary operators and modifiers, number literals, and the
/// aggregation operators (they may be followed by `by (...)` before their parenthesis).
const KEYWORDS: [&str; 26] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "topk",
    "bottomk",
    "quantile",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers, strings,
/// range brackets and grouping lists that are not functions, keywords or numbers.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skip from an opening bracket to its closing one, stepping over quoted strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                '"' | '\'' | '`' => {
                    let q = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != q {
                        i += usize::from(chars[i] == '\\') + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += usize::from(chars[i] == '\\') + 1;
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (or duration like 5m, 1e3): skip its word.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                if called {
                    i = skip_group(next, '(', ')'); // a label list, not expressions
                }
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `promtool` when installed; otherwise says once why the caller skips.
pub fn promtool(test: &str) -> Option<PathBuf> {
    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Some(PathBuf::from("promtool")),
        _ => {
            eprintln!(
                "{test}: promtool not installed (Debian: apt-get install prometheus); skipping"
            );
            None
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PromtoolTests {
    pub tests: Vec<PromtoolGroup>,
}

#[derive(Debug, Deserialize)]
pub struct PromtoolGroup {
    #[serde(default)]
    pub alert_rule_test: Vec<AlertCase>,
}

#[derive(Debug, Deserialize)]
pub struct AlertCase {
    pub alertname: String,
    #[serde(default)]
    pub exp_alerts: Vec<Value>,
}

/// The promtool unit tests of the alerts (tests/monitoring/alerts.test.yaml).
pub fn alert_tests() -> (String, PromtoolTests) {
    let path = repo().join("tests/monitoring/alerts.test.yaml");
    let text = std::fs::read_to_string(&path).expect("read alerts.test.yaml");
    let parsed = serde_yaml_ng::from_str(&text).expect("alerts.test.yaml");
    (text, parsed)
}
