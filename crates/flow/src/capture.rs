//! Packet capture on one Linux interface through an `AF_PACKET` socket (no
//! libpcap): the only I/O of this crate.
//!
//! - The interface's link type comes from `/sys/class/net/IFACE/type`
//!   (ARPHRD): Ethernet (1) and loopback (772, whose frames carry a zeroed
//!   Ethernet header) are read with `SOCK_RAW` and parsed as
//!   [`LinkType::Ethernet`]; everything else (65534 none/tun/WireGuard,
//!   776 sit, 778 GRE, 768/769 IP tunnels, 512 PPP, 519 raw IP, ...) is read
//!   with `SOCK_DGRAM`, where the kernel removes any link header, and parsed
//!   as [`LinkType::RawIp`]. On `SOCK_DGRAM` sockets packets whose protocol
//!   is neither IPv4 nor IPv6 are skipped (counted in
//!   [`CaptureStats::ignored`]).
//! - The socket is bound to the interface by ifindex. The direction comes
//!   from `sockaddr_ll.sll_pkttype`: `PACKET_OUTGOING` is [`Direction::Tx`];
//!   `PACKET_HOST`, `PACKET_BROADCAST` and `PACKET_MULTICAST` are
//!   [`Direction::Rx`] (all were delivered to this host); `PACKET_OTHERHOST`
//!   (promiscuous), `PACKET_LOOPBACK` (our own multicast looped back, a
//!   duplicate of its Tx) and the rest are ignored. On `lo` a packet is both
//!   sent and received by this node, so it is seen once as Tx and once as
//!   Rx, each counted under its own socket's key.
//! - Only the first [`CaptureConfig::snaplen`] bytes of each packet are copied
//!   out of the kernel (a one-instruction BPF filter truncates them); the wire
//!   length comes with each packet, and the parser only needs the headers.
//! - Two read paths: [`CaptureMode::Ring`] (default), a `PACKET_RX_RING`
//!   `TPACKET_V3` memory-mapped ring read without a system call per packet,
//!   and [`CaptureMode::Recv`], one `recvmsg` per packet with a large
//!   `SO_RCVBUF`. Kernel drops are counted through `PACKET_STATISTICS`.
//! - Capture needs `CAP_NET_RAW`; without it [`CaptureError::PermissionDenied`]
//!   says so and how to grant it.
//!
//! Segmentation offload: outgoing TCP on interfaces with TSO/GSO is seen
//! before segmentation, so one captured "packet" may be several on the wire
//! (its bytes are right). `ethtool -K IFACE tso off gso off` makes the
//! packet counts match the wire; tun/WireGuard interfaces are not affected
//! unless they enable offloads themselves.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::parse::LinkType;
use crate::table::Direction;

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IFNAMSIZ: usize = 16;

/// How packets are read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// `PACKET_RX_RING` with `TPACKET_V3`: a memory-mapped ring of blocks.
    Ring,
    /// One `recvmsg` per packet.
    Recv,
}

/// What to capture and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Interface name (`wg0`, `tailscale0`, `eth0`, `lo`).
    pub iface: String,
    /// Read path (default [`CaptureMode::Ring`]).
    pub mode: CaptureMode,
    /// Bytes copied per packet (default 256: enough for Ethernet, two VLAN
    /// tags, IPv6 with common extension headers and a TCP header with
    /// options).
    pub snaplen: u32,
    /// `SO_RCVBUF` in bytes for [`CaptureMode::Recv`] (default 8 MiB; raised
    /// past `net.core.rmem_max` with `SO_RCVBUFFORCE` when allowed).
    pub rcvbuf_bytes: usize,
    /// Ring block size in bytes (default 1 MiB; a power of two, at least a
    /// page).
    pub ring_block_size: u32,
    /// Ring block count (default 4: 4 MiB of ring).
    pub ring_blocks: u32,
    /// Longest a partly filled ring block waits before it is handed over
    /// (default 20 ms): the latency bound at low packet rates.
    pub ring_block_timeout: Duration,
}

impl CaptureConfig {
    /// Defaults for `iface`.
    pub fn new(iface: impl Into<String>) -> CaptureConfig {
        CaptureConfig {
            iface: iface.into(),
            mode: CaptureMode::Ring,
            snaplen: 256,
            rcvbuf_bytes: 8 << 20,
            ring_block_size: 1 << 20,
            ring_blocks: 4,
            ring_block_timeout: Duration::from_millis(20),
        }
    }
}

/// Capture failures.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// No `CAP_NET_RAW`.
    #[error(
        "capturing packets on {iface} needs the CAP_NET_RAW capability, which this process \
         lacks: run the agent as root, or grant it with `sudo setcap cap_net_raw+ep $(which tally)`, \
         or under systemd add `AmbientCapabilities=CAP_NET_RAW` to the service"
    )]
    PermissionDenied {
        /// The interface.
        iface: String,
    },
    /// The interface name is empty, too long or contains `/`.
    #[error("invalid interface name {0:?}")]
    BadInterfaceName(String),
    /// No interface of that name.
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    /// A system call failed.
    #[error("{op} on {iface}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The interface.
        iface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Counters of one capture (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureStats {
    /// Packets delivered to the callback.
    pub delivered: u64,
    /// Packets read but skipped (other hosts' packets, looped-back
    /// duplicates, non-IP on layer-3 interfaces).
    pub ignored: u64,
    /// Packets the kernel passed to the socket (`PACKET_STATISTICS`).
    pub kernel_packets: u64,
    /// Packets the kernel dropped because the socket buffer or ring was full.
    pub kernel_drops: u64,
}

/// One captured packet, as delivered to the callback.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Capture time, Unix nanoseconds.
    pub at: u64,
    /// Sent or received by this node.
    pub dir: Direction,
    /// How `data` starts.
    pub link: LinkType,
    /// The first bytes of the frame (up to the snap length).
    pub data: &'a [u8],
    /// The frame's full length.
    pub wire_len: usize,
}

#[derive(Debug, Default)]
struct SharedStats {
    delivered: AtomicU64,
    ignored: AtomicU64,
    kernel_packets: AtomicU64,
    kernel_drops: AtomicU64,
}

/// An open capture socket on one interface.
pub struct Capture {
    fd: Arc<OwnedFd>,
    iface: String,
    link: LinkType,
    raw: bool,
    ring: Option<Ring>,
    block_timeout: Duration,
    buf: Vec<u8>,
    stats: Arc<SharedStats>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("iface", &self.iface)
            .field("link", &self.link)
            .field("ring", &self.ring.is_some())
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, iface: &str) -> CaptureError {
    CaptureError::Io {
        op,
        iface: iface.to_string(),
        source: io::Error::last_os_error(),
    }
}

fn check(ret: libc::c_int, op: &'static str, iface: &str) -> Result<(), CaptureError> {
    if ret < 0 {
        Err(io_err(op, iface))
    } else {
        Ok(())
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks, before anything else starts, that this process may open packet
/// sockets (`CAP_NET_RAW`): opens and closes one bound to nothing.
/// `iface` only names the interface in the error.
pub fn check_permission(iface: &str) -> Result<(), CaptureError> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => CaptureError::PermissionDenied {
                iface: iface.to_string(),
            },
            _ => CaptureError::Io {
                op: "socket(AF_PACKET)",
                iface: iface.to_string(),
                source: err,
            },
        });
    }
    // SAFETY: `fd` was just returned by socket(2); dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Reads the interface's ARPHRD type from sysfs.
pub fn interface_arphrd(iface: &str) -> Result<u16, CaptureError> {
    validate_name(iface)?;
    let path = format!("/sys/class/net/{iface}/type");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u16>().map_err(|e| CaptureError::Io {
            op: "parsing /sys/class/net/IFACE/type",
            iface: iface.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(CaptureError::NoSuchInterface(iface.to_string()))
        }
        Err(source) => Err(CaptureError::Io {
            op: "reading /sys/class/net/IFACE/type",
            iface: iface.to_string(),
            source,
        }),
    }
}

/// The link type packets of an interface of ARPHRD type `arphrd` are read as.
pub fn link_type_for(arphrd: u16) -> LinkType {
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => LinkType::Ethernet,
        _ => LinkType::RawIp,
    }
}

fn validate_name(iface: &str) -> Result<(), CaptureError> {
    if iface.is_empty()
        || iface.len() >= IFNAMSIZ
        || iface.contains('/')
        || iface.contains('\0')
        || iface == "."
        || iface == ".."
    {
        return Err(CaptureError::BadInterfaceName(iface.to_string()));
    }
    Ok(())
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    op: &'static str,
    iface: &str,
) -> Result<(), CaptureError> {
    // SAFETY: `value` is a valid, initialized T for the duration of the call
    // and the length passed is exactly its size; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret, op, iface)
}

impl Capture {
    /// Opens a packet socket bound to `config.iface`.
    pub fn open(config: &CaptureConfig) -> Result<Capture, CaptureError> {
        let iface = config.iface.as_str();
        let arphrd = interface_arphrd(iface)?;
        let link = link_type_for(arphrd);
        let raw = link == LinkType::Ethernet;
        let name = CString::new(iface).map_err(|_| CaptureError::BadInterfaceName(iface.into()))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(CaptureError::NoSuchInterface(iface.to_string()));
        }

        let sock_type = if raw {
            libc::SOCK_RAW
        } else {
            libc::SOCK_DGRAM
        };
        // Protocol 0: the socket receives nothing until bind() names the
        // interface and ETH_P_ALL, so no other interface's packet slips in.
        // SAFETY: plain socket(2) call with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, sock_type | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => CaptureError::PermissionDenied {
                    iface: iface.to_string(),
                },
                _ => CaptureError::Io {
                    op: "socket(AF_PACKET)",
                    iface: iface.to_string(),
                    source: err,
                },
            });
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw_fd = fd.as_raw_fd();

        // Snap length: a BPF program of one instruction, "return snaplen".
        let snaplen = config.snaplen.max(64);
        let mut filter = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: snaplen,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: filter.as_mut_ptr(),
        };
        setsockopt(
            raw_fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
            "SO_ATTACH_FILTER",
            iface,
        )?;

        let mut ring = None;
        match config.mode {
            CaptureMode::Recv => {
                let size = libc::c_int::try_from(config.rcvbuf_bytes).unwrap_or(libc::c_int::MAX);
                if setsockopt(
                    raw_fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size,
                    "",
                    iface,
                )
                .is_err()
                {
                    setsockopt(
                        raw_fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        &size,
                        "SO_RCVBUF",
                        iface,
                    )?;
                }
                let on: libc::c_int = 1;
                setsockopt(
                    raw_fd,
                    libc::SOL_PACKET,
                    libc::PACKET_AUXDATA,
                    &on,
                    "PACKET_AUXDATA",
                    iface,
                )?;
            }
            CaptureMode::Ring => {
                ring = Some(Ring::new(raw_fd, config, iface)?);
            }
        }

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
        let ret = unsafe {
            libc::bind(
                raw_fd,
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)", iface)?;

        let capture = Capture {
            fd: Arc::new(fd),
            iface: iface.to_string(),
            link,
            raw,
            ring,
            block_timeout: config.ring_block_timeout.max(Duration::from_millis(1)),
            buf: vec![0u8; snaplen as usize],
            stats: Arc::new(SharedStats::default()),
        };
        // Start the kernel counters from zero (reading them resets them).
        read_kernel_stats(&capture.fd, &capture.stats, capture.ring.is_some());
        capture.stats.kernel_packets.store(0, Ordering::Relaxed);
        capture.stats.kernel_drops.store(0, Ordering::Relaxed);
        Ok(capture)
    }

    /// How frames of this interface are parsed.
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// The interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Counters so far (reads the kernel's drop counters).
    pub fn stats(&self) -> CaptureStats {
        read_kernel_stats(&self.fd, &self.stats, self.ring.is_some());
        snapshot(&self.stats)
    }

    /// Waits up to `timeout` (forever if `None`) for packets and delivers
    /// every packet available to `on_packet`; returns how many were
    /// delivered. `stop_fd`, when given, ends the wait when readable.
    pub fn poll_packets(
        &mut self,
        timeout: Option<Duration>,
        stop_fd: Option<RawFd>,
        on_packet: &mut dyn FnMut(&Packet<'_>),
    ) -> Result<usize, CaptureError> {
        let n = self.read_available(on_packet)?;
        if n > 0 {
            return Ok(n);
        }
        match self.wait(timeout, stop_fd) {
            Ok(false) => Ok(0),
            Ok(true) => self.read_available(on_packet),
            Err(e) => {
                // The interface went down or away: deliver what the kernel
                // captured before it did (a partly filled ring block is
                // handed over when its timeout expires), then report.
                let _ = self.read_available(on_packet);
                if self.ring.is_some() {
                    let _ = self.wait(Some(self.block_timeout * 2), stop_fd);
                    let _ = self.read_available(on_packet);
                }
                Err(e)
            }
        }
    }

    fn read_available(
        &mut self,
        on_packet: &mut dyn FnMut(&Packet<'_>),
    ) -> Result<usize, CaptureError> {
        if self.ring.is_some() {
            Ok(self.read_ring(on_packet))
        } else {
            self.read_recv(on_packet)
        }
    }

    /// poll(2) on the socket (and the stop fd); false on timeout or stop.
    fn wait(
        &self,
        timeout: Option<Duration>,
        stop_fd: Option<RawFd>,
    ) -> Result<bool, CaptureError> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = match timeout {
            None => -1,
            Some(t) => libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX),
        };
        loop {
            // SAFETY: `fds` is a valid array of two pollfd (a negative fd is
            // ignored by poll) and the count matches it.
            let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if ret < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(io_err("poll", &self.iface));
            }
            if fds[0].revents & libc::POLLNVAL != 0 {
                return Err(CaptureError::Io {
                    op: "poll",
                    iface: self.iface.clone(),
                    source: io::Error::from_raw_os_error(libc::EBADF),
                });
            }
            if fds[0].revents & libc::POLLERR != 0 {
                // Reading SO_ERROR reports and clears the pending error.
                let err = socket_error(&self.fd);
                if err != 0 {
                    return Err(CaptureError::Io {
                        op: "poll",
                        iface: self.iface.clone(),
                        source: io::Error::from_raw_os_error(err),
                    });
                }
            }
            return Ok(ret > 0 && fds[1].revents == 0);
        }
    }

    /// Reads every queued packet with recvmsg (non-blocking).
    fn read_recv(&mut self, on_packet: &mut dyn FnMut(&Packet<'_>)) -> Result<usize, CaptureError> {
        let mut delivered = 0usize;
        let mut ignored = 0u64;
        loop {
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            // Room for one cmsghdr carrying tpacket_auxdata, 8-byte aligned.
            let mut control = [0u64; 8];
            let mut iov = libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast::<libc::c_void>(),
                iov_len: self.buf.len(),
            };
            // SAFETY: msghdr is plain old data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast::<libc::c_void>();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: every pointer in `msg` refers to live buffers of the
            // stated lengths (addr, iov -> self.buf, control) for the call.
            let n = unsafe {
                libc::recvmsg(
                    self.fd.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => break,
                    _ => {
                        self.stats.ignored.fetch_add(ignored, Ordering::Relaxed);
                        return Err(CaptureError::Io {
                            op: "recvmsg",
                            iface: self.iface.clone(),
                            source: err,
                        });
                    }
                }
            }
            let at = now_nanos();
            let copied = (n as usize).min(self.buf.len());
            let mut wire_len = n as usize;
            // SAFETY: the kernel filled `control` up to msg_controllen; the
            // CMSG_* helpers only walk within it and each header's data is
            // read unaligned.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_PACKET
                        && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>(),
                        );
                        wire_len = aux.tp_len as usize;
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            match self.classify(addr.sll_pkttype, u16::from_be(addr.sll_protocol)) {
                Some(dir) => {
                    on_packet(&Packet {
                        at,
                        dir,
                        link: self.link,
                        data: &self.buf[..copied],
                        wire_len: wire_len.max(copied),
                    });
                    delivered += 1;
                }
                None => ignored += 1,
            }
        }
        self.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.stats.ignored.fetch_add(ignored, Ordering::Relaxed);
        Ok(delivered)
    }

    /// Delivers the packets of every ready ring block and hands them back.
    fn read_ring(&mut self, on_packet: &mut dyn FnMut(&Packet<'_>)) -> usize {
        let link = self.link;
        let raw = self.raw;
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let mut delivered = 0usize;
        let mut ignored = 0u64;
        while let Some(block) = ring.ready_block() {
            for p in block.packets() {
                match classify(raw, p.pkttype, p.protocol) {
                    Some(dir) => {
                        on_packet(&Packet {
                            at: p.at,
                            dir,
                            link,
                            data: p.data,
                            wire_len: p.wire_len,
                        });
                        delivered += 1;
                    }
                    None => ignored += 1,
                }
            }
            ring.release(block);
        }
        self.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.stats.ignored.fetch_add(ignored, Ordering::Relaxed);
        delivered
    }

    fn classify(&self, pkttype: u8, protocol: u16) -> Option<Direction> {
        classify(self.raw, pkttype, protocol)
    }

    /// Runs the capture on a new thread, calling `on_packet` for every
    /// packet, until [`CaptureHandle::stop`].
    pub fn spawn<F>(mut self, mut on_packet: F) -> Result<CaptureHandle, CaptureError>
    where
        F: FnMut(&Packet<'_>) + Send + 'static,
    {
        // SAFETY: eventfd(2) with constant flags.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io_err("eventfd", &self.iface));
        }
        // SAFETY: `efd` was just returned by eventfd(2) and is owned by nobody else.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let stop_reader = Arc::clone(&stop);
        let stopping = Arc::new(AtomicBool::new(false));
        let stopping_reader = Arc::clone(&stopping);
        let fd = Arc::clone(&self.fd);
        let stats = Arc::clone(&self.stats);
        let ring = self.ring.is_some();
        let iface = self.iface.clone();
        let thread = std::thread::Builder::new()
            .name(format!("capture-{}", self.iface))
            .spawn(move || -> Result<(), CaptureError> {
                let stop_fd = stop_reader.as_raw_fd();
                while !stopping_reader.load(Ordering::Acquire) {
                    self.poll_packets(None, Some(stop_fd), &mut on_packet)?;
                }
                Ok(())
            })
            .map_err(|source| CaptureError::Io {
                op: "spawning the capture thread",
                iface: iface.clone(),
                source,
            })?;
        Ok(CaptureHandle {
            iface,
            fd,
            stop,
            stopping,
            stats,
            ring,
            thread: Some(thread),
        })
    }
}

fn classify(raw: bool, pkttype: u8, protocol: u16) -> Option<Direction> {
    if !raw && protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return None;
    }
    match pkttype {
        libc::PACKET_OUTGOING => Some(Direction::Tx),
        libc::PACKET_HOST | libc::PACKET_BROADCAST | libc::PACKET_MULTICAST => Some(Direction::Rx),
        _ => None,
    }
}

/// The socket's pending error (SO_ERROR), cleared by reading it.
fn socket_error(fd: &OwnedFd) -> libc::c_int {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` is writable for `len` bytes and `len` is a valid in/out
    // length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if ret < 0 { libc::EIO } else { err }
}

fn snapshot(stats: &SharedStats) -> CaptureStats {
    CaptureStats {
        delivered: stats.delivered.load(Ordering::Relaxed),
        ignored: stats.ignored.load(Ordering::Relaxed),
        kernel_packets: stats.kernel_packets.load(Ordering::Relaxed),
        kernel_drops: stats.kernel_drops.load(Ordering::Relaxed),
    }
}

/// Adds the kernel's counters (which reset on every read) to `stats`.
fn read_kernel_stats(fd: &OwnedFd, stats: &SharedStats, v3: bool) {
    // tpacket_stats_v3 starts like tpacket_stats; reserve the larger one.
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len: libc::socklen_t = if v3 {
        std::mem::size_of::<libc::tpacket_stats_v3>()
    } else {
        std::mem::size_of::<libc::tpacket_stats>()
    } as libc::socklen_t;
    // SAFETY: `st` is writable for `len` bytes (len <= its size) and `len`
    // is a valid in/out length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if ret == 0 {
        // tp_packets counts every packet seen, dropped ones included.
        stats
            .kernel_packets
            .fetch_add(u64::from(st.tp_packets), Ordering::Relaxed);
        stats
            .kernel_drops
            .fetch_add(u64::from(st.tp_drops), Ordering::Relaxed);
    }
}

/// A running capture thread (see [`Capture::spawn`]).
pub struct CaptureHandle {
    iface: String,
    fd: Arc<OwnedFd>,
    stop: Arc<OwnedFd>,
    stopping: Arc<AtomicBool>,
    stats: Arc<SharedStats>,
    ring: bool,
    thread: Option<JoinHandle<Result<(), CaptureError>>>,
}

impl std::fmt::Debug for CaptureHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureHandle")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

impl CaptureHandle {
    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Counters so far (reads the kernel's drop counters).
    pub fn stats(&self) -> CaptureStats {
        read_kernel_stats(&self.fd, &self.stats, self.ring);
        snapshot(&self.stats)
    }

    /// True once the thread has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn signal_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        let _ = unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Stops the thread, waits for it, and returns the final counters, or
    /// the error that ended the thread early.
    pub fn stop(mut self) -> Result<CaptureStats, CaptureError> {
        self.signal_stop();
        let result = match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(CaptureError::Io {
                    op: "capture thread",
                    iface: self.iface.clone(),
                    source: io::Error::other("the packet callback panicked"),
                })
            }),
            None => Ok(()),
        };
        result.map(|()| self.stats())
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.signal_stop();
            let _ = t.join();
        }
    }
}

/// The `TPACKET_V3` receive ring.
struct Ring {
    base: *mut u8,
    size: usize,
    block_size: usize,
    blocks: usize,
    current: usize,
}

// SAFETY: the mapping is owned by the Ring alone (no aliasing pointers are
// handed out beyond a borrow of &mut Ring), so moving it to the capture
// thread is sound.
unsafe impl Send for Ring {}

struct RingPacket<'a> {
    at: u64,
    pkttype: u8,
    protocol: u16,
    data: &'a [u8],
    wire_len: usize,
}

/// A block handed to user space; its packets stay valid until released
/// (the packet slices borrow the Block, which `Ring::release` consumes).
struct Block {
    desc: *mut libc::tpacket_block_desc,
    len: usize,
}

impl Ring {
    fn new(fd: RawFd, config: &CaptureConfig, iface: &str) -> Result<Ring, CaptureError> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
            "PACKET_VERSION",
            iface,
        )?;
        let block_size = config.ring_block_size.max(4096).next_power_of_two();
        let blocks = config.ring_blocks.max(2);
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: blocks,
            tp_frame_size: frame_size,
            tp_frame_nr: (block_size / frame_size) * blocks,
            tp_retire_blk_tov: u32::try_from(config.ring_block_timeout.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            "PACKET_RX_RING",
            iface,
        )?;
        let size = block_size as usize * blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket;
        // the length is exactly the ring's size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io_err("mmap(PACKET_RX_RING)", iface));
        }
        Ok(Ring {
            base: base.cast::<u8>(),
            size,
            block_size: block_size as usize,
            blocks: blocks as usize,
            current: 0,
        })
    }

    fn status(&self, desc: *mut libc::tpacket_block_desc) -> &AtomicU32 {
        // SAFETY: `desc` points at a block descriptor inside the live
        // mapping; block_status is a 4-byte aligned u32 shared with the
        // kernel, which is exactly what AtomicU32 models.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*desc).hdr.bh1.block_status)) }
    }

    /// The current block if the kernel has handed it over.
    fn ready_block(&self) -> Option<Block> {
        // SAFETY: current < blocks, so the offset stays inside the mapping.
        let desc = unsafe { self.base.add(self.current * self.block_size) }
            .cast::<libc::tpacket_block_desc>();
        if self.status(desc).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return None;
        }
        Some(Block {
            desc,
            len: self.block_size,
        })
    }

    /// Gives a block back to the kernel and moves to the next one.
    fn release(&mut self, block: Block) {
        self.status(block.desc)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.current = (self.current + 1) % self.blocks;
    }
}

impl Block {
    fn packets(&self) -> impl Iterator<Item = RingPacket<'_>> + '_ {
        // SAFETY: the block belongs to user space (TP_STATUS_USER was seen
        // with Acquire ordering) until released, so the kernel does not
        // write it; the header fields are read in place.
        let (count, first) = unsafe {
            let h = &(*self.desc).hdr.bh1;
            (h.num_pkts as usize, h.offset_to_first_pkt as usize)
        };
        let base = self.desc.cast::<u8>();
        let len = self.len;
        let hdr_len = (std::mem::size_of::<libc::tpacket3_hdr>() + 15) & !15;
        let mut offset = first;
        (0..count).map_while(move |_| {
            if offset + hdr_len + std::mem::size_of::<libc::sockaddr_ll>() > len {
                return None;
            }
            // SAFETY: `offset` plus the header and sockaddr_ll lie inside
            // the block (checked above); the kernel aligns each packet
            // header to 16 bytes; unaligned reads are used regardless.
            let (h, sll) = unsafe {
                let hp = base.add(offset);
                (
                    std::ptr::read_unaligned(hp.cast::<libc::tpacket3_hdr>()),
                    std::ptr::read_unaligned(hp.add(hdr_len).cast::<libc::sockaddr_ll>()),
                )
            };
            let start = offset + usize::from(h.tp_mac);
            let snap = h.tp_snaplen as usize;
            if start + snap > len {
                return None;
            }
            // SAFETY: [start, start + snap) lies inside the block (checked
            // above), which stays untouched by the kernel until released;
            // the returned slice cannot outlive the Block borrow.
            let data = unsafe { std::slice::from_raw_parts(base.add(start), snap) };
            let packet = RingPacket {
                at: u64::from(h.tp_sec) * 1_000_000_000 + u64::from(h.tp_nsec),
                pkttype: sll.sll_pkttype,
                protocol: u16::from_be(sll.sll_protocol),
                data,
                wire_len: (h.tp_len as usize).max(snap),
            };
            offset += h.tp_next_offset as usize;
            Some(packet)
        })
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in Ring::new; no slice
        // into it outlives the Ring (they borrow it).
        unsafe {
            libc::munmap(self.base.cast::<libc::c_void>(), self.size);
        }
    }
}
