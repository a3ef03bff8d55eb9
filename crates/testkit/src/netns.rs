//! Real hosts for flow tests: network namespaces joined through veth pairs
//! to a bridge in the test's own namespace (which also reaches the server).
//! Needs root and `ip`; without them the tests skip with a one-line notice
//! unless `TALLY_REQUIRE_NETNS=1`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Set to `1` to make missing namespaces support a failure.
pub const REQUIRE_ENV: &str = "TALLY_REQUIRE_NETNS";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A bridge with `n` namespaces attached; removed on drop.
pub struct Lab {
    /// Bridge name (in the test's namespace).
    pub bridge: String,
    /// The bridge's address (the server listens there).
    pub gateway: Ipv4Addr,
    /// The namespaces, in order; each has `eth0` with `addr(i)`.
    pub namespaces: Vec<String>,
    prefix: String,
}

impl Lab {
    /// Builds the lab, or returns `None` (after a notice) where namespaces
    /// cannot be made and `TALLY_REQUIRE_NETNS` is not `1`.
    pub fn new(test: &str, n: usize) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let usable = root && Command::new("ip").arg("-V").output().is_ok();
        if !usable {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: network namespaces need root and iproute2 ({REQUIRE_ENV}=1)");
            }
            eprintln!(
                "skipping {test}: network namespaces need root and iproute2 (run as root; set {REQUIRE_ENV}=1 to make this a failure)"
            );
            return None;
        }
        let id = std::process::id() % 100_000;
        let salt = rand::random::<u16>() % 1000;
        let prefix = format!("tl{id}{salt}");
        let third = 10 + (salt % 200) as u8;
        let lab = Self {
            bridge: format!("{prefix}br"),
            gateway: Ipv4Addr::new(10, 213, third, 254),
            namespaces: (0..n).map(|i| format!("{prefix}n{i}")).collect(),
            prefix,
        };
        if let Err(e) = lab.build() {
            panic!("{test}: cannot build the namespaces: {e}");
        }
        Some(lab)
    }

    /// The address of namespace `i` (`eth0`).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let o = self.gateway.octets();
        Ipv4Addr::new(
            o[0],
            o[1],
            o[2],
            u8::try_from(i + 1).expect("few namespaces"),
        )
    }

    fn build(&self) -> Result<(), String> {
        let gw = format!("{}/24", self.gateway);
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &gw, "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            let host_end = format!("{}v{i}", self.prefix);
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &host_end, "master", &self.bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            let a = format!("{}/24", self.addr(i));
            ip(&["-n", ns, "addr", "add", &a, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command run inside namespace `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[i], program]);
        c
    }

    /// Runs `f` on a new thread inside namespace `i` (sockets it opens live
    /// there) and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.namespaces[i]);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a namespace file we hold open; it changes only
            // this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
