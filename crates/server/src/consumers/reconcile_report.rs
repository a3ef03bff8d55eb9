//! Reading aids of the reconciliation report (`GET .../reconciliation`,
//! `tally reconcile report`), computed at read time from the stored
//! findings: findings grouped into **incidents**, a summary per class, and
//! the **trend** of completeness from the buckets the reconciler keeps.
//!
//! An incident is one tailnet's findings of one node at fault and one
//! class (for `count_mismatch`, also one peer) whose windows follow each
//! other with at most [`INCIDENT_GAP_NS`] (2 minutes) between the end of
//! one and the start of the next: a 70-s agent outage, judged per 5-s
//! window and per connection, is one incident, two outages ten minutes
//! apart are two. Its ID is `inc-` and the first 16 hex digits of the ID of
//! its first finding (the one with the earliest window), so it stays the
//! same while that finding is in the requested span.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;
use tally_reconcile::{Bucket, FindingClass};

/// Most time between the end of one finding's window and the start of the
/// next for both to belong to one incident (2 minutes, ns).
pub const INCIDENT_GAP_NS: i64 = 120_000_000_000;
/// Most findings one request groups into incidents (the newest of the
/// span); beyond it the answer says the incidents are capped.
pub const MAX_GROUPED: usize = 100_000;
/// Most connections listed per incident (all are counted).
pub const MAX_CONNECTIONS: usize = 20;
/// Least connection-windows judged in each half for a trend.
pub const TREND_MIN_JUDGED: u64 = 10;
/// Least difference of the halves' completeness for a trend other than
/// `steady` (2 points).
pub const TREND_POINTS: f64 = 0.02;

/// The window of a stored finding (server time, Unix ns).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct FindingWindow {
    /// Start, inclusive.
    pub start: i64,
    /// End, exclusive.
    pub end: i64,
}

/// The connection a stored finding is about.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FindingConnection {
    /// IANA protocol number.
    #[serde(default)]
    pub proto: Option<u8>,
    /// Sending side `ip:port`.
    #[serde(default)]
    pub src: Option<String>,
    /// Receiving side `ip:port`.
    #[serde(default)]
    pub dst: Option<String>,
}

/// What the report needs of one stored finding (the `findings` collection
/// holds [`tally_reconcile::Finding`] as JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct FindingRef {
    /// Store position (not part of the JSON).
    #[serde(skip)]
    pub seq: u64,
    /// Finding ID.
    pub id: String,
    /// Class name.
    pub class: String,
    /// Severity name.
    pub severity: String,
    /// Tailnet ID.
    pub tailnet: String,
    /// The node at fault.
    pub node: String,
    /// The other node (or an address).
    #[serde(default)]
    pub peer: Option<String>,
    /// Window judged.
    pub window: FindingWindow,
    /// The connection (protocol and addresses).
    #[serde(default)]
    pub evidence: FindingConnection,
}

impl FindingRef {
    /// `proto src -> dst`, when the finding names a connection.
    pub fn connection(&self) -> Option<String> {
        let e = &self.evidence;
        let (src, dst) = (e.src.as_deref()?, e.dst.as_deref()?);
        let proto = match e.proto {
            Some(1) => "icmp".to_owned(),
            Some(6) => "tcp".to_owned(),
            Some(17) => "udp".to_owned(),
            Some(58) => "icmpv6".to_owned(),
            Some(p) => format!("proto-{p}"),
            None => "?".to_owned(),
        };
        Some(format!("{proto} {src} -> {dst}"))
    }
}

/// Rank of a severity name (unknown names rank lowest).
pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

/// Findings of one node and class close in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// `inc-` and the first 16 hex digits of the first finding's ID.
    pub id: String,
    /// Tailnet ID.
    pub tailnet: String,
    /// The node at fault.
    pub node: String,
    /// Class name.
    pub class: String,
    /// Highest severity of its findings.
    pub severity: String,
    /// Start of the earliest window (Unix ns).
    pub start: i64,
    /// End of the latest window (Unix ns).
    pub end: i64,
    /// Number of findings.
    pub findings: u64,
    /// ID of the finding with the earliest window.
    pub first_finding: String,
    /// ID of the finding with the latest window.
    pub last_finding: String,
    /// Peers named by its findings.
    pub peers: BTreeSet<String>,
    /// Connections (`proto src -> dst`) of its findings.
    pub connections: BTreeSet<String>,
    /// Store positions of its findings.
    pub members: Vec<u64>,
}

/// Groups findings into incidents, newest (latest end) first. The order
/// of `findings` does not matter.
pub fn group(findings: &[FindingRef], gap_ns: i64) -> Vec<Incident> {
    let mut keyed: BTreeMap<(&str, &str, &str, Option<&str>), Vec<&FindingRef>> = BTreeMap::new();
    for f in findings {
        let peer = (f.class == FindingClass::CountMismatch.name()).then_some(f.peer.as_deref());
        keyed
            .entry((&f.tailnet, &f.node, &f.class, peer.flatten()))
            .or_default()
            .push(f);
    }
    let mut out = Vec::new();
    for (_, mut fs) in keyed {
        fs.sort_by(|a, b| {
            (a.window.start, a.window.end, &a.id, a.seq).cmp(&(
                b.window.start,
                b.window.end,
                &b.id,
                b.seq,
            ))
        });
        let mut cur: Option<Incident> = None;
        for f in fs {
            if let Some(c) = cur.as_mut()
                && f.window.start <= c.end.saturating_add(gap_ns)
            {
                c.findings += 1;
                if f.window.end >= c.end {
                    c.last_finding = f.id.clone();
                }
                c.end = c.end.max(f.window.end);
                if severity_rank(&f.severity) > severity_rank(&c.severity) {
                    c.severity = f.severity.clone();
                }
                c.peers.extend(f.peer.clone());
                c.connections.extend(f.connection());
                c.members.push(f.seq);
                continue;
            }
            out.extend(cur.take());
            cur = Some(Incident {
                id: format!("inc-{}", f.id.chars().take(16).collect::<String>()),
                tailnet: f.tailnet.clone(),
                node: f.node.clone(),
                class: f.class.clone(),
                severity: f.severity.clone(),
                start: f.window.start,
                end: f.window.end,
                findings: 1,
                first_finding: f.id.clone(),
                last_finding: f.id.clone(),
                peers: f.peer.iter().cloned().collect(),
                connections: f.connection().into_iter().collect(),
                members: vec![f.seq],
            });
        }
        out.extend(cur);
    }
    out.sort_by(|a, b| (b.end, b.start, &a.id).cmp(&(a.end, a.start, &b.id)));
    out
}

/// Findings and incidents of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassSummary {
    /// Findings of the class.
    pub findings: u64,
    /// Incidents of the class.
    pub incidents: u64,
}

/// Per class, in report order ([`FindingClass::ALL`], then other names):
/// `findings` counts every finding of the span (`counted`), `incidents`
/// those grouped.
pub fn summary(
    counted: &BTreeMap<String, u64>,
    incidents: &[Incident],
) -> Vec<(String, ClassSummary)> {
    let mut per: BTreeMap<&str, ClassSummary> = BTreeMap::new();
    for (c, n) in counted {
        per.entry(c).or_default().findings += n;
    }
    for i in incidents {
        per.entry(&i.class).or_default().incidents += 1;
    }
    let rank = |c: &str| {
        FindingClass::ALL
            .iter()
            .position(|k| k.name() == c)
            .unwrap_or(FindingClass::ALL.len())
    };
    let mut v: Vec<(String, ClassSummary)> =
        per.into_iter().map(|(c, s)| (c.to_owned(), s)).collect();
    v.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    v
}

/// The names of the finding classes, in report order.
pub fn class_names() -> Vec<&'static str> {
    FindingClass::ALL.iter().map(|c| c.name()).collect()
}

/// Direction of completeness over the buckets the reconciler keeps (the
/// last hour of judged windows, 10-minute buckets, oldest first): the
/// older half of the buckets that judged anything against the newer half
/// (with an odd number, the middle bucket counts in neither). `improving`
/// or `worsening` when the halves' shares of matched windows differ by
/// more than [`TREND_POINTS`], else `steady`; `unknown` when fewer than two
/// buckets judged anything or a half judged fewer than
/// [`TREND_MIN_JUDGED`] connection-windows.
pub fn trend(buckets: &[Bucket]) -> &'static str {
    let mut b: Vec<&Bucket> = buckets.iter().filter(|b| b.judged > 0).collect();
    b.sort_by_key(|b| b.start);
    let half = b.len() / 2;
    if half == 0 {
        return "unknown";
    }
    let sum = |part: &[&Bucket]| {
        part.iter().fold((0u64, 0u64), |(j, m), b| {
            (j + u64::from(b.judged), m + u64::from(b.matched))
        })
    };
    let (early, late) = (sum(&b[..half]), sum(&b[b.len() - half..]));
    if early.0 < TREND_MIN_JUDGED || late.0 < TREND_MIN_JUDGED {
        return "unknown";
    }
    let d = late.1 as f64 / late.0 as f64 - early.1 as f64 / early.0 as f64;
    if d > TREND_POINTS {
        "improving"
    } else if d < -TREND_POINTS {
        "worsening"
    } else {
        "steady"
    }
}

/// How a `node` parameter names a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMatch {
    /// This node ID.
    Id(String),
    /// No node of that name, or several.
    NotFound,
    /// Several nodes have that name: their IDs.
    Ambiguous(Vec<String>),
}

/// Resolves `given` (a node ID or name) against the tailnet's nodes
/// `(id, name)`: an ID first, then an exact name, then a name ignoring
/// ASCII case. A value shaped like a node ID (`n` and 16 hex digits, a
/// deleted node's) or an address (`node_unknown` findings) is taken as is.
pub fn resolve_node(given: &str, nodes: &[(String, String)]) -> NodeMatch {
    if nodes.iter().any(|(id, _)| id == given) {
        return NodeMatch::Id(given.to_owned());
    }
    for exact in [true, false] {
        let ids: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| {
                if exact {
                    n == given
                } else {
                    n.eq_ignore_ascii_case(given)
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        match ids.len() {
            0 => {}
            1 => return NodeMatch::Id(ids.into_iter().next().unwrap_or_default()),
            _ => return NodeMatch::Ambiguous(ids),
        }
    }
    let id_shaped = given.len() == 17
        && given.starts_with('n')
        && given[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if id_shaped
        || given.parse::<std::net::IpAddr>().is_ok()
        || given.parse::<std::net::SocketAddr>().is_ok()
    {
        return NodeMatch::Id(given.to_owned());
    }
    NodeMatch::NotFound
}

/// The name of `id` for the answer: the node's name, `(deleted)` for a
/// node ID the control database no longer has, none for an address.
pub fn name_of(id: &str, names: &HashMap<String, String>) -> Option<String> {
    if let Some(n) = names.get(id) {
        return Some(n.clone());
    }
    if id.parse::<std::net::IpAddr>().is_ok() || id.parse::<std::net::SocketAddr>().is_ok() {
        return None;
    }
    Some("(deleted)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn f(seq: u64, class: &str, node: &str, peer: &str, start: i64, port: u16) -> FindingRef {
        FindingRef {
            seq,
            id: format!("{seq:016x}{:016x}", 7),
            class: class.into(),
            severity: if seq == 3 { "high" } else { "medium" }.into(),
            tailnet: "t".into(),
            node: node.into(),
            peer: Some(peer.into()),
            window: FindingWindow {
                start,
                end: start + 5 * S,
            },
            evidence: FindingConnection {
                proto: Some(6),
                src: Some(format!("100.64.0.1:{port}")),
                dst: Some("100.64.0.2:22".into()),
            },
        }
    }

    #[test]
    fn consecutive_windows_are_one_incident_and_a_gap_splits() {
        let mut v = Vec::new();
        for k in 0..14 {
            v.push(f(
                k + 1,
                "missing_agent_silent",
                "b",
                "a",
                k as i64 * 5 * S,
                1000,
            ));
        }
        // 2 min 1 s after the end of the last window: a new incident.
        let later = 14 * 5 * S + INCIDENT_GAP_NS + S;
        v.push(f(100, "missing_agent_silent", "b", "c", later, 1001));
        v.push(f(101, "count_mismatch", "b", "a", 0, 1000));
        v.push(f(102, "count_mismatch", "b", "c", 0, 1000));
        let inc = group(&v, INCIDENT_GAP_NS);
        assert_eq!(inc.len(), 4, "{inc:#?}");
        assert_eq!(inc[0].findings, 1);
        assert_eq!(inc[0].start, later);
        let big = inc.iter().find(|i| i.findings == 14).expect("the outage");
        assert_eq!(big.severity, "high");
        assert_eq!(big.first_finding, format!("{:016x}{:016x}", 1, 7));
        assert_eq!(big.last_finding, format!("{:016x}{:016x}", 14, 7));
        assert_eq!(big.id, "inc-0000000000000001");
        assert_eq!(big.connections.len(), 1);
        let s = summary(
            &BTreeMap::from([
                ("count_mismatch".into(), 2),
                ("missing_agent_silent".into(), 15),
            ]),
            &inc,
        );
        assert_eq!(s[0].0, "count_mismatch");
        assert_eq!(
            s[0].1,
            ClassSummary {
                findings: 2,
                incidents: 2
            }
        );
        assert_eq!(
            s[1].1,
            ClassSummary {
                findings: 15,
                incidents: 2
            }
        );
    }

    fn bucket(k: i64, judged: u32, matched: u32) -> Bucket {
        Bucket {
            start: k * tally_reconcile::BUCKET_NS,
            judged,
            matched,
        }
    }

    #[test]
    fn trend_compares_halves_of_the_buckets_there_are() {
        assert_eq!(trend(&[]), "unknown");
        assert_eq!(trend(&[bucket(1, 500, 400)]), "unknown");
        assert_eq!(trend(&[bucket(1, 100, 100), bucket(2, 9, 0)]), "unknown");
        assert_eq!(
            trend(&[bucket(1, 100, 100), bucket(2, 100, 50)]),
            "worsening"
        );
        assert_eq!(
            trend(&[bucket(1, 100, 50), bucket(2, 0, 0), bucket(3, 100, 99)]),
            "improving"
        );
        assert_eq!(
            trend(&[bucket(1, 100, 100), bucket(2, 100, 0), bucket(3, 100, 99)]),
            "steady"
        );
    }

    #[test]
    fn nodes_resolve_by_id_or_name() {
        let nodes = vec![
            ("n0000000000000001".to_owned(), "alpha".to_owned()),
            ("n0000000000000002".to_owned(), "twin".to_owned()),
            ("n0000000000000003".to_owned(), "twin".to_owned()),
        ];
        assert_eq!(
            resolve_node("alpha", &nodes),
            NodeMatch::Id("n0000000000000001".into())
        );
        assert_eq!(
            resolve_node("ALPHA", &nodes),
            NodeMatch::Id("n0000000000000001".into())
        );
        assert_eq!(
            resolve_node("n0000000000000002", &nodes),
            NodeMatch::Id("n0000000000000002".into())
        );
        assert!(matches!(resolve_node("twin", &nodes), NodeMatch::Ambiguous(v) if v.len() == 2));
        assert_eq!(resolve_node("gamma", &nodes), NodeMatch::NotFound);
        assert_eq!(
            resolve_node("n00000000000000ff", &nodes),
            NodeMatch::Id("n00000000000000ff".into())
        );
        assert_eq!(
            resolve_node("100.64.0.9", &nodes),
            NodeMatch::Id("100.64.0.9".into())
        );
        let names = HashMap::from([("n0000000000000001".to_owned(), "alpha".to_owned())]);
        assert_eq!(
            name_of("n0000000000000001", &names).as_deref(),
            Some("alpha")
        );
        assert_eq!(
            name_of("n0000000000000009", &names).as_deref(),
            Some("(deleted)")
        );
        assert_eq!(name_of("100.64.0.9:22", &names), None);
    }
}
