//! A JSON tree that keeps what `serde_json::Value` loses (member order, duplicate keys, number
//! tokens as written, broken tokens), and the structural mutations applied to it.

use std::fmt;

use proptest::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON document as text would write it.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// A number token exactly as written (huge, `-0`, exponents survive).
    Num(String),
    Str(String),
    /// Text written verbatim: a token no `Value` can hold (lone surrogate escape, deep nesting).
    Raw(String),
    Arr(Vec<J>),
    /// Members in document order; keys may repeat.
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn obj(members: &[(&str, J)]) -> J {
        J::Obj(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    pub fn str(s: &str) -> J {
        J::Str(s.to_string())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            J::Num(n) | J::Raw(n) => out.extend_from_slice(n.as_bytes()),
            J::Str(s) => write_str(s, out),
            J::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            J::Obj(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(k, out);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// The first member named `key` (objects only).
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Set `key` (replacing every member of that name, or appending).
    pub fn set(&mut self, key: &str, value: J) {
        if let J::Obj(m) = self {
            m.retain(|(k, _)| k != key);
            m.push((key.to_string(), value));
        }
    }

    /// Keep only the members named in `keys`, then run `each` on every kept member.
    pub fn keep(&mut self, keys: &[&str], mut each: impl FnMut(&str, &mut J)) {
        if let J::Obj(m) = self {
            m.retain(|(k, _)| keys.contains(&k.as_str()));
            for (k, v) in m.iter_mut() {
                each(k, v);
            }
        }
    }

    /// Every node, pre-order, as paths of child positions.
    pub fn paths(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        out.push(at.clone());
        let n = match self {
            J::Arr(items) => items.len(),
            J::Obj(members) => members.len(),
            _ => 0,
        };
        for i in 0..n {
            at.push(i);
            self.child(i).collect_paths(at, out);
            at.pop();
        }
    }

    fn child(&self, i: usize) -> &J {
        match self {
            J::Arr(items) => &items[i],
            J::Obj(members) => &members[i].1,
            _ => unreachable!("leaves have no children"),
        }
    }

    pub fn at(&self, path: &[usize]) -> &J {
        path.iter().fold(self, |j, i| j.child(*i))
    }

    pub fn at_mut(&mut self, path: &[usize]) -> &mut J {
        let mut j = self;
        for i in path {
            j = match j {
                J::Arr(items) => &mut items[*i],
                J::Obj(members) => &mut members[*i].1,
                _ => unreachable!("paths only lead through containers"),
            };
        }
        j
    }

    /// Every object key in the tree (the vocabulary for renames and insertions).
    pub fn keys(&self, out: &mut Vec<String>) {
        match self {
            J::Arr(items) => items.iter().for_each(|i| i.keys(out)),
            J::Obj(members) => {
                for (k, v) in members {
                    out.push(k.clone());
                    v.keys(out);
                }
            }
            _ => {}
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // Infallible for a &str.
    out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E: de::Error>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<J, E> {
                Ok(J::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<J, E> {
                Ok(J::Num(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<J, E> {
                Ok(J::Num(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<J, E> {
                // `{:?}` keeps a fraction (`1.0`), so the token stays a float.
                Ok(J::Num(format!("{n:?}")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<J, E> {
                Ok(J::Str(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(J::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = a.next_entry()? {
                    members.push((k, v));
                }
                Ok(J::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// A replacement value. Indices pick from the pools below (modulo their length).
#[derive(Clone, Debug)]
pub enum Filler {
    Null,
    Bool(bool),
    Number(u8),
    Text(u8),
    /// A string of `len` copies of one of the `TEXT` strings.
    Long {
        len: u32,
        text: u8,
    },
    EmptyObj,
    EmptyArr,
    /// `depth` nested arrays or objects around a scalar.
    Deep {
        depth: u16,
        objects: bool,
    },
}

/// Number tokens that sit on the edges of what decoders accept.
pub const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "80",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "1.5",
    "1e3",
    "1E400",
    "-1e400",
    "1e-400",
    "0.0000000000000000000000001",
    "123456789012345678901234567890",
];

/// Strings: addresses, near-misses, enum values of the fields, unicode and control characters.
pub const TEXT: &[&str] = &[
    "",
    " ",
    "10.0.0.1",
    "10.0.0.255",
    "0.0.0.0",
    "fd00::1",
    "::ffff:10.0.0.1",
    "10.0.0.1,fd00::1",
    " 10.0.0.2 , ,",
    "10.0.0.1/32",
    "10.0.0.01",
    "256.0.0.1",
    "lb.example.com",
    "-bad-.example",
    "LoadBalancer",
    "ClusterIP",
    "TCP",
    "UDP",
    "SCTP",
    "tcp",
    "IPv4",
    "IPv6",
    "SingleStack",
    "PreferDualStack",
    "RequireDualStack",
    "CREATE",
    "UPDATE",
    "DELETE",
    "CONNECT",
    "v1",
    "Service",
    "admission.k8s.io/v1",
    "kube-vip.io/kube-vip-class",
    "kube-vip",
    "é",
    "\u{1d11e}",
    "\u{202e}gpj.exe",
    "\u{0}",
    "\u{feff}10.0.0.1",
    "10.0.0.1\u{a0}",
    "\"quoted\"",
    "back\\slash",
    "line\nbreak",
];

impl Filler {
    pub fn build(&self) -> J {
        match self {
            Filler::Null => J::Null,
            Filler::Bool(b) => J::Bool(*b),
            Filler::Number(i) => J::Num(pick(NUMBERS, *i).to_string()),
            Filler::Text(i) => J::str(pick(TEXT, *i)),
            Filler::Long { len, text } => {
                let unit = match pick(TEXT, *text) {
                    "" => "a",
                    t => t,
                };
                J::Str(unit.repeat(*len as usize))
            }
            Filler::EmptyObj => J::Obj(Vec::new()),
            Filler::EmptyArr => J::Arr(Vec::new()),
            Filler::Deep { depth, objects } => {
                let (open, close) = if *objects {
                    ("{\"a\":", "}")
                } else {
                    ("[", "]")
                };
                let d = *depth as usize;
                J::Raw(format!("{}1{}", open.repeat(d), close.repeat(d)))
            }
        }
    }
}

pub fn pick<T: Copy>(pool: &[T], i: impl Into<usize>) -> T {
    pool[i.into() % pool.len()]
}

fn value() -> impl Strategy<Value = Filler> {
    prop_oneof![
        1 => Just(Filler::Null),
        1 => any::<bool>().prop_map(Filler::Bool),
        1 => any::<u8>().prop_map(Filler::Number),
        4 => any::<u8>().prop_map(Filler::Text),
        1 => (prop_oneof![1u32..64, 1000u32..70_000], any::<u8>())
            .prop_map(|(len, text)| Filler::Long { len, text }),
        1 => Just(Filler::EmptyObj),
        1 => Just(Filler::EmptyArr),
        1 => (prop_oneof![1u16..20, 100u16..140, 1000u16..5000], any::<bool>())
            .prop_map(|(depth, objects)| Filler::Deep { depth, objects }),
    ]
}

/// One structural change. `node` picks a node (pre-order, modulo the node count), `child` a
/// member or element of it, `key` a key from the seeds' vocabulary.
#[derive(Clone, Debug)]
pub enum Mutation {
    Drop {
        node: u32,
        child: u32,
    },
    /// Repeat a member (a duplicate key) or element, optionally with another value.
    Duplicate {
        node: u32,
        child: u32,
        with: Option<Filler>,
    },
    Replace {
        node: u32,
        with: Filler,
    },
    Rename {
        node: u32,
        child: u32,
        key: u32,
    },
    Insert {
        node: u32,
        key: u32,
        with: Filler,
    },
    /// Replace a node with a node of another seed (`seed`, `from` modulo).
    Splice {
        node: u32,
        seed: u32,
        from: u32,
    },
    /// Rotate the members of an object (order-dependent decoders).
    Rotate {
        node: u32,
        by: u32,
    },
    /// String <-> number <-> bool with the same text, or the scalar wrapped in an array.
    Retype {
        node: u32,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let n = any::<u32>;
    prop_oneof![
        3 => (n(), n()).prop_map(|(node, child)| Mutation::Drop { node, child }),
        2 => (n(), n(), prop::option::of(value()))
            .prop_map(|(node, child, with)| Mutation::Duplicate { node, child, with }),
        4 => (n(), value()).prop_map(|(node, with)| Mutation::Replace { node, with }),
        2 => (n(), n(), n()).prop_map(|(node, child, key)| Mutation::Rename { node, child, key }),
        2 => (n(), n(), value()).prop_map(|(node, key, with)| Mutation::Insert { node, key, with }),
        2 => (n(), n(), n()).prop_map(|(node, seed, from)| Mutation::Splice { node, seed, from }),
        1 => (n(), n()).prop_map(|(node, by)| Mutation::Rotate { node, by }),
        2 => n().prop_map(|node| Mutation::Retype { node }),
    ]
}

/// Keys that are not in any seed but near one (case, spacing, unicode look-alikes).
const NEAR_KEYS: &[&str] = &[
    "",
    "UID",
    "Kind",
    "apiversion",
    "metadata ",
    "annotations\u{0}",
    "kube-vip.io/loadBalancerIPs",
    "kube-vip.io/loadbalancerIPs ",
    "kube-vip.io\u{2044}loadbalancerIPs",
    "spec.type",
    "__proto__",
];

/// What mutations draw from: every seed tree, and every key in them.
pub struct Pool {
    pub seeds: Vec<J>,
    keys: Vec<String>,
}

impl Pool {
    pub fn new(seeds: Vec<J>) -> Pool {
        let mut keys: Vec<String> = NEAR_KEYS.iter().map(|k| k.to_string()).collect();
        for s in &seeds {
            s.keys(&mut keys);
        }
        keys.sort();
        keys.dedup();
        Pool { seeds, keys }
    }

    fn key(&self, i: u32) -> String {
        self.keys[i as usize % self.keys.len()].clone()
    }

    /// Apply one mutation; one that does not fit the picked node changes nothing.
    pub fn apply(&self, tree: &mut J, m: &Mutation) {
        let paths = tree.paths();
        let path = |node: u32| paths[node as usize % paths.len()].clone();
        match m {
            Mutation::Drop { node, child } => match tree.at_mut(&path(*node)) {
                J::Arr(items) if !items.is_empty() => {
                    let i = *child as usize % items.len();
                    items.remove(i);
                }
                J::Obj(members) if !members.is_empty() => {
                    let i = *child as usize % members.len();
                    members.remove(i);
                }
                _ => {}
            },
            Mutation::Duplicate { node, child, with } => match tree.at_mut(&path(*node)) {
                J::Arr(items) if !items.is_empty() => {
                    let i = *child as usize % items.len();
                    let v = with
                        .as_ref()
                        .map_or_else(|| items[i].clone(), Filler::build);
                    items.insert(i + 1, v);
                }
                J::Obj(members) if !members.is_empty() => {
                    let i = *child as usize % members.len();
                    let (k, v) = members[i].clone();
                    let v = with.as_ref().map_or(v, Filler::build);
                    members.insert(i + 1, (k, v));
                }
                _ => {}
            },
            Mutation::Replace { node, with } => *tree.at_mut(&path(*node)) = with.build(),
            Mutation::Rename { node, child, key } => {
                if let J::Obj(members) = tree.at_mut(&path(*node))
                    && !members.is_empty()
                {
                    let i = *child as usize % members.len();
                    members[i].0 = self.key(*key);
                }
            }
            Mutation::Insert { node, key, with } => {
                if let J::Obj(members) = tree.at_mut(&path(*node)) {
                    let at = *key as usize % (members.len() + 1);
                    members.insert(at, (self.key(*key), with.build()));
                }
            }
            Mutation::Splice { node, seed, from } => {
                let donor = &self.seeds[*seed as usize % self.seeds.len()];
                let donor_paths = donor.paths();
                let part = donor
                    .at(&donor_paths[*from as usize % donor_paths.len()])
                    .clone();
                *tree.at_mut(&path(*node)) = part;
            }
            Mutation::Rotate { node, by } => {
                if let J::Obj(members) = tree.at_mut(&path(*node))
                    && !members.is_empty()
                {
                    let n = *by as usize % members.len();
                    members.rotate_left(n);
                }
            }
            Mutation::Retype { node } => {
                let at = tree.at_mut(&path(*node));
                *at = match std::mem::replace(at, J::Null) {
                    J::Str(s) if s.parse::<f64>().is_ok() => J::Num(s),
                    J::Str(s) if s == "true" || s == "false" => J::Bool(s == "true"),
                    J::Str(s) => J::Arr(vec![J::Str(s)]),
                    J::Num(n) => J::Str(n),
                    J::Bool(b) => J::Str(b.to_string()),
                    J::Null => J::str("null"),
                    other => J::Arr(vec![other]),
                };
            }
        }
    }
}

/// One byte-level change of the serialized document; positions are taken modulo its length.
#[derive(Clone, Debug)]
pub enum ByteMutation {
    Flip { pos: u32, bit: u8 },
    Set { pos: u32, byte: u8 },
    Insert { pos: u32, token: u8 },
    Delete { pos: u32, len: u8 },
    Truncate { pos: u32 },
    Copy { from: u32, len: u8, to: u32 },
}

/// Bytes and tokens that change how a JSON reader proceeds.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"1e999",
    b"-",
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b" \t\r\n",
    b"\"kind\":\"Service\",",
    b"\"uid\":\"x\",",
];

pub fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let n = any::<u32>;
    prop_oneof![
        1 => (n(), 0u8..8).prop_map(|(pos, bit)| ByteMutation::Flip { pos, bit }),
        1 => (n(), any::<u8>()).prop_map(|(pos, byte)| ByteMutation::Set { pos, byte }),
        2 => (n(), any::<u8>()).prop_map(|(pos, token)| ByteMutation::Insert { pos, token }),
        1 => (n(), 1u8..32).prop_map(|(pos, len)| ByteMutation::Delete { pos, len }),
        1 => n().prop_map(|pos| ByteMutation::Truncate { pos }),
        1 => (n(), 1u8..64, n()).prop_map(|(from, len, to)| ByteMutation::Copy { from, len, to }),
    ]
}

pub fn apply_bytes(bytes: &mut Vec<u8>, m: &ByteMutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |p: u32| p as usize % bytes.len();
    match *m {
        ByteMutation::Flip { pos, bit } => {
            let i = at(pos);
            bytes[i] ^= 1 << bit;
        }
        ByteMutation::Set { pos, byte } => {
            let i = at(pos);
            bytes[i] = byte;
        }
        ByteMutation::Insert { pos, token } => {
            let i = at(pos);
            let t = pick(TOKENS, token);
            bytes.splice(i..i, t.iter().copied());
        }
        ByteMutation::Delete { pos, len } => {
            let i = at(pos);
            let end = (i + len as usize).min(bytes.len());
            bytes.drain(i..end);
        }
        ByteMutation::Truncate { pos } => {
            let i = at(pos);
            bytes.truncate(i);
        }
        ByteMutation::Copy { from, len, to } => {
            let i = at(from);
            let end = (i + len as usize).min(bytes.len());
            let chunk = bytes[i..end].to_vec();
            let j = at(to);
            bytes.splice(j..j, chunk);
        }
    }
}
