//! The 100 extra detection rules of the throughput run: the kind of rules a
//! tailnet's operators write for themselves (port lists, CIDR matches,
//! tag filters, regular expressions on node names, traffic kinds, byte
//! thresholds), generated with varied parameters so that no two are the
//! same and the engine cannot share their work.

/// Ports a rule watches, with what they are.
const PORT_SETS: &[(&str, &[u16])] = &[
    ("SOCKS or HTTP proxy", &[1080, 3128, 8118, 8888]),
    ("Tor", &[9001, 9030, 9050, 9051, 9150]),
    (
        "IRC",
        &[6660, 6661, 6662, 6663, 6664, 6665, 6668, 6669, 7000],
    ),
    ("mining pool", &[3333, 5555, 7777, 8333, 14444, 45700]),
    ("exposed datastore", &[27017, 9200, 9300, 5984, 11211, 8086]),
    ("container API", &[2375, 2376, 10250, 10255, 4243]),
    ("legacy cleartext", &[21, 69, 110, 143, 512, 513]),
    ("Windows RPC", &[135, 139, 593, 49152]),
    ("other databases", &[1433, 1521, 3306, 9042, 7199]),
    ("screen sharing", &[5800, 5938, 6568, 7070]),
    ("SNMP", &[161, 162, 10161]),
    ("mail", &[25, 465, 587, 2525]),
    ("printing", &[515, 631, 9101, 9102]),
];

/// Internet ranges a rule flags in exit traffic.
const CIDR_SETS: &[(&str, &[&str])] = &[
    (
        "a Tor exit range",
        &["185.220.100.0/22", "185.220.101.0/24"],
    ),
    ("a bulletproof host", &["45.9.148.0/24", "91.92.240.0/22"]),
    (
        "documentation ranges",
        &["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"],
    ),
    (
        "cloud metadata",
        &["169.254.169.254/32", "fd00:ec2::254/128"],
    ),
    ("paste sites", &["104.20.67.0/24", "172.67.0.0/20"]),
    ("a sanctioned region", &["5.8.0.0/16", "31.13.192.0/18"]),
    ("file sharing", &["162.125.0.0/16", "199.47.216.0/22"]),
    ("dynamic DNS", &["37.10.0.0/16", "80.82.64.0/20"]),
    ("known C2", &["23.106.215.0/24", "194.165.16.0/22"]),
    ("crypto exchanges", &["104.18.0.0/20", "141.101.64.0/18"]),
    ("residential proxies", &["5.188.0.0/16"]),
    ("an anonymising VPN", &["89.187.160.0/19"]),
    (
        "private ranges",
        &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
    ),
];

/// (tag a destination has, tags allowed to reach it): the tailnet's own
/// segmentation, written as rules.
const TAG_PAIRS: &[(&str, &[&str])] = &[
    ("tag:db", &["tag:api", "tag:admin", "tag:backup"]),
    ("tag:cache", &["tag:api", "tag:admin"]),
    ("tag:mq", &["tag:api", "tag:admin"]),
    ("tag:backup", &["tag:db", "tag:admin"]),
    ("tag:monitoring", &["tag:grafana", "tag:admin"]),
    ("tag:exit", &["tag:admin"]),
    (
        "tag:logging",
        &[
            "tag:web",
            "tag:api",
            "tag:db",
            "tag:cache",
            "tag:mq",
            "tag:dns",
            "tag:git",
            "tag:files",
            "tag:grafana",
        ],
    ),
    ("tag:admin", &["tag:monitoring"]),
    ("tag:db", &["tag:api"]),
    ("tag:cache", &["tag:api"]),
    ("tag:mq", &["tag:api", "tag:mq"]),
    ("tag:backup", &["tag:db"]),
    ("tag:grafana", &["tag:admin", "tag:monitoring"]),
];

/// Node-name patterns.
const NAME_RES: &[&str] = &[
    "^(kali|parrot|pentest)[-.]",
    "(?i)(temp|tmp|scratch)",
    "^ci-runner-[0-9]+$",
    "^db-[0-9]+$",
    "^laptop-u0[0-4][0-9]$",
    "(?i)^test-",
    "^desktop-[0-9]*7$",
    "^dev-vm-1[0-9]{2}$",
    "^(old|legacy)-",
    "^web-0[0-5]$",
    "^api-(0[5-9]|1[0-9])$",
    "^files-[0-9]$",
    "guest",
];

/// Tailnet ranges (parts of 100.64.0.0/10).
const SRC_CIDRS: &[&str] = &[
    "100.64.0.0/12",
    "100.80.0.0/12",
    "100.96.0.0/12",
    "100.112.0.0/12",
    "100.100.0.0/16",
    "100.64.0.0/16",
    "100.120.0.0/14",
];

/// A YAML list of quoted strings.
fn yaml_list(items: &[&str], indent: usize) -> String {
    let pad = " ".repeat(indent);
    items.iter().map(|i| format!("{pad}- '{i}'\n")).collect()
}

/// A YAML list of numbers.
fn yaml_ports(items: &[u16], indent: usize) -> String {
    let pad = " ".repeat(indent);
    items.iter().map(|i| format!("{pad}- {i}\n")).collect()
}

/// The `i`th extra rule (YAML). Eight templates, in turn; the parameters
/// of each come from its own table, offset so that rules of a template
/// differ.
pub(crate) fn rule(i: usize) -> String {
    let k = i / 8;
    let header = |title: &str, level: &str| {
        format!(
            "title: {title} ({i})\nid: bench-extra-{i:03}\nstatus: experimental\nlogsource:\n    product: tally\n    service: flows\nlevel: {level}\n"
        )
    };
    match i % 8 {
        0 => {
            let (what, ports) = PORT_SETS[k % PORT_SETS.len()];
            let proto = if k % 3 == 2 { "udp" } else { "tcp" };
            format!(
                "{}detection:\n    selection:\n        Protocol: {proto}\n        dst_port:\n{}    filter_admin:\n        src_tags: tag:admin\n    condition: selection and not filter_admin\n",
                header(&format!("Connection to a {what} port"), "medium"),
                yaml_ports(ports, 12)
            )
        }
        1 => {
            let (what, cidrs) = CIDR_SETS[k % CIDR_SETS.len()];
            format!(
                "{}detection:\n    selection:\n        kind: exit\n        dst_ip|cidr:\n{}    condition: selection\n",
                header(&format!("Exit traffic to {what}"), "high"),
                yaml_list(cidrs, 12)
            )
        }
        2 => {
            let (dst, allowed) = TAG_PAIRS[k % TAG_PAIRS.len()];
            format!(
                "{}detection:\n    selection:\n        kind: virtual\n        dst_tags: '{dst}'\n    filter_allowed:\n        src_tags:\n{}    condition: selection and not filter_allowed\n",
                header(
                    &format!("{dst} reached from a node not allowed to"),
                    "medium"
                ),
                yaml_list(allowed, 12)
            )
        }
        3 => {
            let re = NAME_RES[k % NAME_RES.len()];
            let side = if k.is_multiple_of(2) {
                "src_node"
            } else {
                "dst_node"
            };
            let (what, ports) = PORT_SETS[(k + 5) % PORT_SETS.len()];
            format!(
                "{}detection:\n    selection_name:\n        {side}|re: '{re}'\n    selection_port:\n        dst_port:\n{}    condition: selection_name and selection_port\n",
                header(&format!("Node named like {re} on a {what} port"), "medium"),
                yaml_ports(ports, 12)
            )
        }
        4 => {
            let (what, ports) = PORT_SETS[(k + 3) % PORT_SETS.len()];
            format!(
                "{}detection:\n    selection:\n        kind: subnet\n        dst_port:\n{}    condition: selection\n",
                header(&format!("Subnet traffic to a {what} port"), "low"),
                yaml_ports(ports, 12)
            )
        }
        5 => {
            let allowed: &[u16] = match k % 3 {
                0 => &[53, 443, 123],
                1 => &[53, 443, 123, 3478],
                _ => &[53, 443, 123, 500, 4500],
            };
            format!(
                "{}detection:\n    selection:\n        kind: exit\n        Protocol: udp\n    filter_usual:\n        dst_port:\n{}    condition: selection and not filter_usual\n",
                header("Unusual UDP through an exit node", "low"),
                yaml_ports(allowed, 12)
            )
        }
        6 => {
            let (dst, _) = TAG_PAIRS[(k + 4) % TAG_PAIRS.len()];
            let mib = 256u64 << (k % 4);
            format!(
                "{}detection:\n    selection:\n        kind: virtual\n        dst_tags: '{dst}'\n        tx_bytes|gte: {}\n    condition: selection\n",
                header(&format!("More than {mib} MiB sent to {dst}"), "low"),
                mib << 20
            )
        }
        _ => {
            let cidr = SRC_CIDRS[k % SRC_CIDRS.len()];
            let (what, ports) = PORT_SETS[(k + 8) % PORT_SETS.len()];
            format!(
                "{}detection:\n    selection:\n        src_ip|cidr: '{cidr}'\n        dst_port:\n{}    filter_monitoring:\n        src_tags: tag:monitoring\n    condition: selection and not filter_monitoring\n",
                header(&format!("{cidr} on a {what} port"), "low"),
                yaml_ports(ports, 12)
            )
        }
    }
}
