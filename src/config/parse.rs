//! Parsing of single ConfigMap values and list entries. Every function returns the reason text
//! of a `ConfigError` on failure; the caller adds the key and the entry.

use std::net::IpAddr;

use ipnet::IpNet;

/// Splits a list value on `,` and trims each entry. Empty entries (`a,,b`, a trailing comma, a
/// value made of spaces) are skipped without a report: they carry no address, and a YAML block
/// scalar or a trailing comma is a formatting habit, not a mistake worth a Warning Event.
pub(super) fn entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// Parses one CIDR entry (`10.0.0.210/29`); host bits are masked (`10.0.0.208/29`).
pub(crate) fn cidr(entry: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = entry.split_once('/') else {
        let hint = if entry.contains('-') {
            " (a range cannot be mixed into a list that contains '/')"
        } else {
            " (a value containing '/' is a CIDR list; a single address is written as a /32 or /128)"
        };
        return Err(format!("not a CIDR prefix like 10.0.0.0/24{hint}"));
    };
    let ip = ip(addr.trim())?;
    let len = len.trim();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    // Digits only: `u8::from_str` would also accept `+24`.
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid prefix length {len:?}"));
    }
    let len: u8 = len
        .parse()
        .map_err(|_| format!("invalid prefix length {len:?}"))?;
    if len > max {
        return Err(format!(
            "prefix length {len} is longer than {max}, the maximum for {family}"
        ));
    }
    IpNet::new(ip, len)
        .map(|net| net.trunc())
        .map_err(|_| format!("prefix length {len} is longer than {max}, the maximum for {family}"))
}

/// Parses one range entry `start-end` (inclusive). Both ends must be of the same family and
/// `start <= end`. IPv6 addresses never contain `-`, so the single `-` is the separator.
pub(crate) fn range(entry: &str) -> Result<(IpAddr, IpAddr), String> {
    let Some((start, end)) = entry.split_once('-') else {
        return Err(
            "not a range: expected start-end (a value without '/' is a range list; \
             a single address is written as a-a)"
                .to_string(),
        );
    };
    if end.contains('-') {
        return Err("expected exactly one '-' between start and end".to_string());
    }
    let start = ip(start.trim()).map_err(|r| format!("start of range: {r}"))?;
    let end = ip(end.trim()).map_err(|r| format!("end of range: {r}"))?;
    if start.is_ipv4() != end.is_ipv4() {
        return Err(format!(
            "mixed families in one range: start is {}, end is {}",
            family_name(start),
            family_name(end)
        ));
    }
    if start > end {
        return Err(format!("reversed range: start {start} is after end {end}"));
    }
    Ok((start, end))
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Parses an address, with a reason that tells which family the operator probably meant.
pub(crate) fn ip(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    Err(if text.is_empty() {
        "missing address".to_string()
    } else if text.contains(':') {
        "invalid IPv6 address".to_string()
    } else if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        "invalid IPv4 address".to_string()
    } else {
        format!("{text:?} is not an IP address")
    })
}

/// Booleans: `true/false/1/0/t/f`, any case, trimmed.
pub(super) fn boolean(value: &str) -> Result<bool, String> {
    let v = value.trim();
    for (text, b) in [
        ("true", true),
        ("t", true),
        ("1", true),
        ("false", false),
        ("f", false),
        ("0", false),
    ] {
        if v.eq_ignore_ascii_case(text) {
            return Ok(b);
        }
    }
    Err(if v.is_empty() {
        "empty value is not a boolean (expected true/false/1/0/t/f); taken as false".to_string()
    } else {
        "not a boolean (expected true/false/1/0/t/f); taken as false".to_string()
    })
}

/// `search-order`: `Ok(true)` for descending (`desc`), `Ok(false)` for ascending (`asc` or empty).
pub(super) fn descending(value: &str) -> Result<bool, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("desc") {
        Ok(true)
    } else if v.is_empty() || v.eq_ignore_ascii_case("asc") {
        Ok(false)
    } else {
        Err("not a search order (expected asc or desc); taken as asc".to_string())
    }
}

/// Interface name, trimmed; `Ok(None)` when empty. Rejects what Linux can never name a link
/// (`dev_valid_name`): kube-vip would fail on it for every Service.
pub(crate) fn interface(value: &str) -> Result<Option<&str>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > 15 {
        return Err("interface name longer than 15 bytes; ignored".to_string());
    }
    if v == "." || v == ".." || v.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("not a valid interface name; ignored".to_string());
    }
    Ok(Some(v))
}

/// Whether `name` can be a namespace (RFC 1123 label). A key for any other suffix never applies.
pub(super) fn is_namespace_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
        && b.iter().all(|c| ok(c) || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_trimmed_and_empty_ones_skipped() {
        let got: Vec<_> = entries(" 10.0.0.0/24,  10.0.1.0/24 ,,\t").collect();
        assert_eq!(got, ["10.0.0.0/24", "10.0.1.0/24"]);
        assert_eq!(entries("").count(), 0);
        assert_eq!(entries(" , ").count(), 0);
    }

    #[test]
    fn cidr_masks_host_bits() {
        assert_eq!(cidr("192.168.0.210/29"), Ok(net("192.168.0.208/29")));
        assert_eq!(cidr("fd00::17/126"), Ok(net("fd00::14/126")));
        assert_eq!(cidr("10.0.0.5 / 32"), Ok(net("10.0.0.5/32")));
        assert_eq!(cidr("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
        assert_eq!(cidr("::/0"), Ok(net("::/0")));
    }

    #[test]
    fn cidr_reasons() {
        assert_eq!(cidr("10.0.0.300/24"), Err("invalid IPv4 address".into()));
        assert_eq!(cidr("fd00::zz/64"), Err("invalid IPv6 address".into()));
        assert_eq!(cidr("web/24"), Err("\"web\" is not an IP address".into()));
        assert_eq!(cidr("/24"), Err("missing address".into()));
        assert_eq!(cidr("10.0.0.0/"), Err("invalid prefix length \"\"".into()));
        assert_eq!(
            cidr("10.0.0.0/+8"),
            Err("invalid prefix length \"+8\"".into())
        );
        assert_eq!(
            cidr("10.0.0.0/24/5"),
            Err("invalid prefix length \"24/5\"".into())
        );
        assert_eq!(
            cidr("10.0.0.0/33"),
            Err("prefix length 33 is longer than 32, the maximum for IPv4".into())
        );
        assert_eq!(
            cidr("fd00::/129"),
            Err("prefix length 129 is longer than 128, the maximum for IPv6".into())
        );
        assert!(cidr("10.0.0.0/0256").is_err());
        assert!(
            cidr("10.0.0.1")
                .unwrap_err()
                .starts_with("not a CIDR prefix")
        );
        assert!(cidr("10.0.0.1-10.0.0.5").unwrap_err().contains("range"));
    }

    #[test]
    fn range_ok() {
        assert_eq!(
            range("10.0.0.1-10.0.0.5"),
            Ok((addr("10.0.0.1"), addr("10.0.0.5")))
        );
        assert_eq!(
            range("10.0.0.1 - 10.0.0.1"),
            Ok((addr("10.0.0.1"), addr("10.0.0.1")))
        );
        assert_eq!(
            range("2001::10-2001::20"),
            Ok((addr("2001::10"), addr("2001::20")))
        );
    }

    #[test]
    fn range_reasons() {
        assert!(range("10.0.0.1").unwrap_err().starts_with("not a range"));
        assert_eq!(
            range("10.0.0.1-10.0.0.2-10.0.0.3"),
            Err("expected exactly one '-' between start and end".into())
        );
        assert_eq!(
            range("10.0.0.1-10.0.0.300"),
            Err("end of range: invalid IPv4 address".into())
        );
        assert_eq!(
            range("-10.0.0.3"),
            Err("start of range: missing address".into())
        );
        assert_eq!(
            range("10.0.0.9-10.0.0.1"),
            Err("reversed range: start 10.0.0.9 is after end 10.0.0.1".into())
        );
        assert_eq!(
            range("10.0.0.1-fd00::1"),
            Err("mixed families in one range: start is IPv4, end is IPv6".into())
        );
        assert_eq!(
            range("fd00::1-10.0.0.1"),
            Err("mixed families in one range: start is IPv6, end is IPv4".into())
        );
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "True", "tRuE", "t", "T", "1", " true \n"] {
            assert_eq!(boolean(t), Ok(true), "{t:?}");
        }
        for f in ["false", "FALSE", "f", "F", "0", " 0 "] {
            assert_eq!(boolean(f), Ok(false), "{f:?}");
        }
        for bad in ["yes", "no", "", "2", "on", "truee"] {
            assert!(boolean(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_order() {
        assert_eq!(descending("desc"), Ok(true));
        assert_eq!(descending(" DESC "), Ok(true));
        assert_eq!(descending("asc"), Ok(false));
        assert_eq!(descending("Asc"), Ok(false));
        assert_eq!(descending(""), Ok(false));
        assert!(descending("descending").is_err());
        assert!(descending("random").is_err());
    }

    #[test]
    fn interfaces() {
        assert_eq!(interface(" eth0 "), Ok(Some("eth0")));
        assert_eq!(interface("bond0.100"), Ok(Some("bond0.100")));
        assert_eq!(interface(""), Ok(None));
        assert_eq!(interface("  "), Ok(None));
        assert!(interface("a-name-too-long-x").is_err());
        assert!(interface("eth0:1").is_err());
        assert!(interface("eth 0").is_err());
        assert!(interface("a/b").is_err());
        assert!(interface("..").is_err());
    }

    #[test]
    fn namespace_names() {
        for ok in ["default", "global", "kube-system", "a", "a1", "0"] {
            assert!(is_namespace_name(ok), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_namespace_name(bad), "{bad}");
        }
    }
}
