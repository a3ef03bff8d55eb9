//! This node's own tailnet addresses, found without configuration: the
//! addresses of the capture interfaces (`getifaddrs`; link-local IPv6
//! skipped) and, where the local mesh daemon is Tailscale, what `tailscale
//! ip` prints. `--address` overrides both.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `tailscale ip` may take before it is given up on.
const TAILSCALE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `ip` is IPv6 link-local (fe80::/10): every interface has one, it
/// is no tailnet address.
fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Whether the kernel's interface label `label` belongs to `iface` (IPv4
/// aliases are labelled `eth0:1`).
fn label_of(label: &str, iface: &str) -> bool {
    label == iface
        || label
            .strip_prefix(iface)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The IPv4 and IPv6 addresses of the interfaces `ifaces` (link-local IPv6
/// skipped), read with `getifaddrs`, in the system's order per interface.
/// An interface that does not exist has none.
pub fn interface_addresses(ifaces: &[String]) -> std::io::Result<Vec<(String, IpAddr)>> {
    struct List(*mut libc::ifaddrs);
    impl Drop for List {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the list came from getifaddrs and is freed once.
                unsafe { libc::freeifaddrs(self.0) };
            }
        }
    }
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let list = List(head);
    let mut found = Vec::new();
    let mut cur = list.0;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until `list` is dropped.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let label = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        let Some(iface) = ifaces.iter().find(|i| label_of(&label, i)) else {
            continue;
        };
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose
        // family says which larger structure it is.
        let ip = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if is_ipv6_link_local(&ip) {
            continue;
        }
        if !found.iter().any(|(_, f)| *f == ip) {
            found.push((iface.clone(), ip));
        }
    }
    Ok(found)
}

/// The first executable file named `name` in `$PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Parses what `tailscale ip` prints: one address a line.
fn parse_tailscale_ip(out: &str) -> Vec<IpAddr> {
    out.lines()
        .filter_map(|l| l.trim().parse::<IpAddr>().ok())
        .filter(|ip| !is_ipv6_link_local(ip))
        .collect()
}

/// Runs `{tailscale} ip`, at most [`TAILSCALE_TIMEOUT`].
async fn tailscale_addresses(tailscale: &Path) -> Result<Vec<IpAddr>, String> {
    let run = tokio::process::Command::new(tailscale)
        .arg("ip")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TAILSCALE_TIMEOUT, run)
        .await
        .map_err(|_| format!("`{} ip` did not answer within 2 s", tailscale.display()))?
        .map_err(|e| format!("cannot run `{} ip`: {e}", tailscale.display()))?;
    if !out.status.success() {
        let err: String = String::from_utf8_lossy(&out.stderr)
            .trim()
            .chars()
            .take(200)
            .collect();
        return Err(format!(
            "`{} ip` failed ({}): {err}",
            tailscale.display(),
            out.status
        ));
    }
    Ok(parse_tailscale_ip(&String::from_utf8_lossy(&out.stdout)))
}

/// Addresses found, and where each came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// The addresses, IPv4 first, each once (as reported to the server).
    pub addresses: Vec<String>,
    /// Where they came from, for the log: `10.0.0.5 (wg0), 100.64.0.5
    /// (tailscale ip)`.
    pub sources: String,
    /// Those of the interfaces (to notice a change between reports).
    pub from_interfaces: Vec<IpAddr>,
    /// Why the mesh daemon gave none, when it was asked and failed.
    pub daemon_problem: Option<String>,
}

/// Finds this node's tailnet addresses.
#[derive(Debug, Clone)]
pub(crate) struct AddressFinder {
    /// The capture interfaces: their addresses are the node's.
    ifaces: Vec<String>,
    /// `tailscale`, when found in `$PATH` and Tailscale is the mesh (no
    /// `--iface`, or one named `tailscale*`).
    tailscale: Option<PathBuf>,
}

impl AddressFinder {
    /// A finder for the interfaces `ifaces`.
    pub fn new(ifaces: &[String]) -> Self {
        let tailscale_mesh = ifaces.is_empty() || ifaces.iter().any(|i| i.starts_with("tailscale"));
        Self {
            ifaces: ifaces.to_vec(),
            tailscale: if tailscale_mesh {
                find_in_path("tailscale")
            } else {
                None
            },
        }
    }

    /// What the interfaces hold now (cheap: no process is run).
    pub fn interface_addresses(&self) -> Vec<(String, IpAddr)> {
        if self.ifaces.is_empty() {
            return Vec::new();
        }
        match interface_addresses(&self.ifaces) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot read the addresses of the interfaces: {e}");
                Vec::new()
            }
        }
    }

    /// Reads the interfaces, then asks the mesh daemon.
    pub async fn find(&self) -> Found {
        let ifs = self.interface_addresses();
        let mut all: Vec<(String, IpAddr)> = ifs.clone();
        let mut daemon_problem = None;
        if let Some(ts) = &self.tailscale {
            match tailscale_addresses(ts).await {
                Ok(ips) => all.extend(ips.into_iter().map(|ip| ("tailscale ip".to_owned(), ip))),
                Err(e) => daemon_problem = Some(e),
            }
        }
        let mut seen = BTreeSet::new();
        let mut ordered: Vec<(String, IpAddr)> = all
            .into_iter()
            .map(|(s, ip)| (s, ip.to_canonical()))
            .filter(|(_, ip)| seen.insert(*ip))
            .collect();
        ordered.sort_by_key(|(_, ip)| (ip.is_ipv6(), *ip));
        Found {
            addresses: ordered.iter().map(|(_, ip)| ip.to_string()).collect(),
            sources: ordered
                .iter()
                .map(|(s, ip)| format!("{ip} ({s})"))
                .collect::<Vec<_>>()
                .join(", "),
            from_interfaces: ifs.into_iter().map(|(_, ip)| ip).collect(),
            daemon_problem,
        }
    }

    /// Describes where addresses are looked for, for messages.
    pub fn where_looked(&self) -> String {
        let mut places: Vec<String> = self.ifaces.iter().map(|i| format!("--iface {i}")).collect();
        if self.tailscale.is_some() {
            places.push("`tailscale ip`".into());
        }
        if places.is_empty() {
            "nowhere (no --iface, no tailscale binary)".into()
        } else {
            places.join(", ")
        }
    }
}

/// Whether `ip` is an address a node of a mesh could have but the Internet
/// cannot route: RFC 1918, the shared range 100.64.0.0/10 (Tailscale's),
/// unique local IPv6 fc00::/7. Traffic classified as exit to such an
/// address may be with a node that registered after the last report.
pub(crate) fn could_be_mesh_node(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_holds_127_0_0_1() {
        let found = interface_addresses(&["lo".to_owned()]).unwrap();
        assert!(
            found
                .iter()
                .any(|(i, ip)| i == "lo" && *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{found:?}"
        );
        assert!(found.iter().all(|(i, _)| i == "lo"), "{found:?}");
    }

    #[test]
    fn unknown_interface_holds_nothing() {
        let found = interface_addresses(&["no-such-if0".to_owned()]).unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert!(interface_addresses(&[]).unwrap().is_empty());
    }

    #[test]
    fn link_local_ipv6_is_skipped() {
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_ipv6_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"100.64.0.1".parse().unwrap()));
        // Every interface with IPv6 has one; none is read.
        let all: Vec<String> = ["lo", "eth0", "tailscale0", "wg0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let found = interface_addresses(&all).unwrap();
        assert!(
            found.iter().all(|(_, ip)| !is_ipv6_link_local(ip)),
            "{found:?}"
        );
    }

    #[test]
    fn alias_labels_belong_to_their_interface() {
        assert!(label_of("eth0", "eth0"));
        assert!(label_of("eth0:1", "eth0"));
        assert!(!label_of("eth01", "eth0"));
        assert!(!label_of("eth", "eth0"));
    }

    #[test]
    fn tailscale_ip_output_is_parsed() {
        let out = "100.101.102.103\nfd7a:115c:a1e0:ab12:4843:cd96:6265:6667\n\nnot an address\n";
        assert_eq!(
            parse_tailscale_ip(out),
            vec![
                "100.101.102.103".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0:ab12:4843:cd96:6265:6667".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn finder_orders_ipv4_first_and_names_sources() {
        let f = AddressFinder {
            ifaces: vec!["lo".into()],
            tailscale: None,
        };
        let found = f.find().await;
        assert_eq!(
            found.addresses.first().map(String::as_str),
            Some("127.0.0.1")
        );
        assert!(found.sources.contains("127.0.0.1 (lo)"), "{found:?}");
        if let Some(i) = found.addresses.iter().position(|a| a.contains(':')) {
            assert!(found.addresses[i..].iter().all(|a| a.contains(':')));
        }
        assert!(found.daemon_problem.is_none());
        assert!(f.where_looked().contains("--iface lo"));
    }

    #[tokio::test]
    async fn a_failing_mesh_daemon_is_a_problem_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let f = AddressFinder {
            ifaces: vec!["lo".into()],
            tailscale: Some(script(
                "down",
                "#!/bin/sh\necho 'not running' >&2\nexit 1\n",
            )),
        };
        let found = f.find().await;
        assert!(found.addresses.contains(&"127.0.0.1".to_owned()));
        let problem = found.daemon_problem.expect("a problem");
        assert!(problem.contains("not running"), "{problem}");

        let f = AddressFinder {
            ifaces: vec!["lo".into()],
            tailscale: Some(script("up", "#!/bin/sh\necho 100.64.0.7\necho fe80::1\n")),
        };
        let found = f.find().await;
        assert!(
            found.sources.contains("100.64.0.7 (tailscale ip)"),
            "{found:?}"
        );
        assert!(!found.addresses.iter().any(|a| a.starts_with("fe80")));
    }

    #[test]
    fn mesh_like_addresses() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "fd7a:115c:a1e0::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(could_be_mesh_node(a.parse().unwrap()), "{a}");
        }
        for a in [
            "1.1.1.1",
            "100.128.0.1",
            "100.63.255.255",
            "2001:db8::1",
            "ff02::1",
            "fe80::1",
        ] {
            assert!(!could_be_mesh_node(a.parse().unwrap()), "{a}");
        }
    }
}
