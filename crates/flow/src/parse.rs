//! Packet parsing: one captured frame to the few fields a flow table needs.
//!
//! Parsing is zero-copy and allocation-free, built on `etherparse`'s header
//! slices (no libpcap). Two link types exist:
//!
//! - [`LinkType::Ethernet`]: an Ethernet II header (optionally followed by up
//!   to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags) before the IP packet. Linux
//!   loopback (`lo`, ARPHRD_LOOPBACK) frames use it too, with zeroed MACs.
//! - [`LinkType::RawIp`]: the IP packet with no link header (WireGuard `wg0`,
//!   `tailscale0`, any tun); the version comes from the first nibble.
//!
//! What is counted follows Tailscale's tun statistics: [`PacketInfo::ip_len`]
//! is the IP packet length (IP header included, link header excluded) taken
//! from the IP header's own length field, so Ethernet padding does not count
//! and Ethernet and layer-3 interfaces count alike.
//!
//! Keying choices, documented here because they decide what a "flow" is:
//!
//! - TCP and UDP: the ports from the transport header.
//! - ICMP and ICMPv6: ports 0, as Tailscale's `net/packet` parser does
//!   (`SrcPort = DstPort = 0` for ICMP), so all ICMP between two addresses is
//!   one flow. Echo identifiers and type/code are not part of the key.
//! - Any other IP protocol (GRE, ESP, SCTP, ...): ports 0.
//! - IPv6 extension headers (hop-by-hop, routing, fragment, destination
//!   options, AH) are skipped and the protocol is the first non-extension
//!   header. IPv4 options are skipped through the header length.
//! - Fragments other than the first carry no transport header: they are keyed
//!   with ports 0 under their protocol (so they form a separate flow from
//!   the first fragment, which has the ports).
//! - Large segmentation-offload packets whose IPv4 total length (or IPv6
//!   payload length) field is 0 because the packet exceeds 64 KiB ("BIG
//!   TCP") take their length from the wire length instead.
//!
//! Checksums are not verified (the kernel captures outgoing packets before
//! checksum offload fills them in).

use std::net::IpAddr;

use etherparse::err::ipv4::{HeaderError as Ipv4HeaderError, HeaderSliceError as Ipv4SliceError};
use etherparse::err::ipv6::HeaderSliceError as Ipv6SliceError;
use etherparse::err::tcp::HeaderSliceError as TcpSliceError;
use etherparse::{
    EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6ExtensionsSlice,
    Ipv6HeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use thiserror::Error;

/// IANA protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IANA protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Most VLAN tags skipped in front of the IP header (QinQ plus one).
pub const MAX_VLAN_TAGS: usize = 3;

/// Smallest ICMP/ICMPv6 message (type, code, checksum, 4 bytes of body).
const ICMP_MIN_LEN: usize = 8;
const ETHERNET_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const IPV6_HEADER_LEN: usize = 40;

/// How a captured frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II header, optional VLAN tags, then IP (also Linux loopback).
    Ethernet,
    /// The IP packet itself, version in the first nibble (tun, WireGuard).
    RawIp,
}

/// TCP flag bits (the low byte of the TCP flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers (connection open).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;

    /// FIN is set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// SYN is set.
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// RST is set.
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// ACK is set.
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// SYN without ACK: the first packet of a TCP connection.
    pub fn is_initial_syn(self) -> bool {
        self.syn() && !self.ack()
    }
}

/// The fields of one IP packet that flow tracking needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// IANA protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port (0 for protocols without ports, see the module docs).
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
    /// IP packet length: IP header included, link header excluded, from the
    /// IP header's length field.
    pub ip_len: u32,
    /// TCP flags (all clear for other protocols).
    pub tcp_flags: TcpFlags,
}

/// Why a frame yields no [`PacketInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ParseError {
    /// An Ethernet frame that does not carry IP (ARP, LLDP, ...): not an
    /// error, just not a flow packet.
    #[error("not an IP packet (EtherType {0:#06x})")]
    NotIp(u16),
    /// Truncated or inconsistent headers.
    #[error("malformed packet: {0}")]
    Malformed(#[from] Malformed),
}

impl ParseError {
    /// True for [`ParseError::Malformed`].
    pub fn is_malformed(&self) -> bool {
        matches!(self, ParseError::Malformed(_))
    }
}

/// What is wrong with a malformed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum Malformed {
    /// The frame is shorter than its Ethernet header or VLAN tags.
    #[error("truncated link-layer header")]
    TruncatedLink,
    /// More VLAN tags than [`MAX_VLAN_TAGS`].
    #[error("too many VLAN tags")]
    TooManyVlanTags,
    /// The first nibble is neither 4 nor 6 (or disagrees with the EtherType).
    #[error("IP version {0} where 4 or 6 was expected")]
    BadIpVersion(u8),
    /// The frame ends inside the IP header.
    #[error("truncated IP header")]
    TruncatedIp,
    /// The IPv4 header length field is below 5 words.
    #[error("IPv4 header length below 20 bytes")]
    BadIpHeaderLen,
    /// The IP length field is smaller than the IP header.
    #[error("IP length field smaller than the IP header")]
    IpLenTooSmall,
    /// The IP length field claims more bytes than the frame had on the wire.
    #[error("IP length field exceeds the frame length")]
    IpLenExceedsFrame,
    /// An IPv6 extension header is truncated or misplaced.
    #[error("truncated or invalid IPv6 extension header")]
    BadExtensionHeader,
    /// The packet ends inside the TCP header.
    #[error("truncated TCP header")]
    TruncatedTcp,
    /// The TCP data offset is below 5 words.
    #[error("TCP header length below 20 bytes")]
    BadTcpHeaderLen,
    /// The packet ends inside the UDP header.
    #[error("truncated UDP header")]
    TruncatedUdp,
    /// The packet ends inside the ICMP header.
    #[error("truncated ICMP header")]
    TruncatedIcmp,
}

/// Parses one complete frame.
///
/// Equivalent to [`parse_packet_truncated`] with `wire_len = frame.len()`.
pub fn parse_packet(link: LinkType, frame: &[u8]) -> Result<PacketInfo, ParseError> {
    parse_packet_truncated(link, frame, frame.len())
}

/// Parses a frame of which only the first `frame.len()` bytes were captured
/// out of `wire_len` (a capture snap length). All headers must be inside
/// `frame`; the IP length field is checked against `wire_len`.
pub fn parse_packet_truncated(
    link: LinkType,
    frame: &[u8],
    wire_len: usize,
) -> Result<PacketInfo, ParseError> {
    let wire_len = wire_len.max(frame.len());
    match link {
        LinkType::RawIp => {
            let Some(&first) = frame.first() else {
                return Err(Malformed::TruncatedIp.into());
            };
            match first >> 4 {
                4 => parse_ipv4(frame, wire_len),
                6 => parse_ipv6(frame, wire_len),
                v => Err(Malformed::BadIpVersion(v).into()),
            }
        }
        LinkType::Ethernet => {
            let eth =
                Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Malformed::TruncatedLink)?;
            let mut ether_type = eth.ether_type();
            let mut offset = ETHERNET_HEADER_LEN;
            let mut tags = 0;
            while matches!(
                ether_type,
                EtherType::VLAN_TAGGED_FRAME
                    | EtherType::PROVIDER_BRIDGING
                    | EtherType::VLAN_DOUBLE_TAGGED_FRAME
            ) {
                if tags == MAX_VLAN_TAGS {
                    return Err(Malformed::TooManyVlanTags.into());
                }
                let rest = frame.get(offset..).ok_or(Malformed::TruncatedLink)?;
                let vlan = SingleVlanHeaderSlice::from_slice(rest)
                    .map_err(|_| Malformed::TruncatedLink)?;
                ether_type = vlan.ether_type();
                offset += VLAN_TAG_LEN;
                tags += 1;
            }
            let ip = frame.get(offset..).ok_or(Malformed::TruncatedLink)?;
            let ip_wire = wire_len - offset;
            match ether_type {
                EtherType::IPV4 => parse_ipv4(ip, ip_wire),
                EtherType::IPV6 => parse_ipv6(ip, ip_wire),
                other => Err(ParseError::NotIp(other.0)),
            }
        }
    }
}

/// `ip` starts at the IPv4 header; `wire` is the IP-layer length on the wire.
fn parse_ipv4(ip: &[u8], wire: usize) -> Result<PacketInfo, ParseError> {
    let header = Ipv4HeaderSlice::from_slice(ip).map_err(|e| match e {
        Ipv4SliceError::Len(_) => Malformed::TruncatedIp,
        Ipv4SliceError::Content(Ipv4HeaderError::UnexpectedVersion { version_number }) => {
            Malformed::BadIpVersion(version_number)
        }
        Ipv4SliceError::Content(Ipv4HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
            Malformed::BadIpHeaderLen
        }
    })?;
    let header_len = header.slice().len();
    let total = usize::from(header.total_len());
    let ip_len = if total == 0 && wire > usize::from(u16::MAX) {
        wire // segmentation offload beyond 64 KiB: the length field is 0
    } else if total < header_len {
        return Err(Malformed::IpLenTooSmall.into());
    } else if total > wire {
        return Err(Malformed::IpLenExceedsFrame.into());
    } else {
        total
    };
    let proto = header.protocol().0;
    let src = IpAddr::V4(header.source_addr());
    let dst = IpAddr::V4(header.destination_addr());
    let payload = &ip[header_len..ip.len().min(ip_len)];
    let first_fragment = header.fragments_offset().value() == 0;
    finish(
        proto,
        src,
        dst,
        ip_len,
        first_fragment.then_some(payload),
        false,
    )
}

/// `ip` starts at the IPv6 header; `wire` is the IP-layer length on the wire.
fn parse_ipv6(ip: &[u8], wire: usize) -> Result<PacketInfo, ParseError> {
    let header = Ipv6HeaderSlice::from_slice(ip).map_err(|e| match e {
        Ipv6SliceError::Len(_) => Malformed::TruncatedIp,
        Ipv6SliceError::Content(etherparse::err::ipv6::HeaderError::UnexpectedVersion {
            version_number,
        }) => Malformed::BadIpVersion(version_number),
    })?;
    let payload_len = usize::from(header.payload_length());
    let ip_len = if payload_len == 0 && wire > IPV6_HEADER_LEN + usize::from(u16::MAX) {
        wire // jumbogram / BIG TCP: the payload length field is 0
    } else if IPV6_HEADER_LEN + payload_len > wire {
        return Err(Malformed::IpLenExceedsFrame.into());
    } else {
        IPV6_HEADER_LEN + payload_len
    };
    let src = IpAddr::V6(header.source_addr());
    let dst = IpAddr::V6(header.destination_addr());
    let after = &ip[IPV6_HEADER_LEN..ip.len().min(ip_len)];
    let (exts, proto, payload) = Ipv6ExtensionsSlice::from_slice(header.next_header(), after)
        .map_err(|_| Malformed::BadExtensionHeader)?;
    let first_fragment = !exts.is_fragmenting_payload()
        || !exts.into_iter().any(|ext| {
            matches!(ext, Ipv6ExtensionSlice::Fragment(frag) if frag.fragment_offset().value() != 0)
        });
    finish(
        proto.0,
        src,
        dst,
        ip_len,
        first_fragment.then_some(payload),
        true,
    )
}

/// Reads ports and flags from the transport header (`None` for a non-first
/// fragment, which has none).
fn finish(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    ip_len: usize,
    transport: Option<&[u8]>,
    v6: bool,
) -> Result<PacketInfo, ParseError> {
    let mut info = PacketInfo {
        proto,
        src,
        src_port: 0,
        dst,
        dst_port: 0,
        ip_len: u32::try_from(ip_len).unwrap_or(u32::MAX),
        tcp_flags: TcpFlags(0),
    };
    let Some(transport) = transport else {
        return Ok(info);
    };
    match proto {
        PROTO_TCP => {
            let tcp = TcpHeaderSlice::from_slice(transport).map_err(|e| match e {
                TcpSliceError::Len(_) => Malformed::TruncatedTcp,
                TcpSliceError::Content(_) => Malformed::BadTcpHeaderLen,
            })?;
            info.src_port = tcp.source_port();
            info.dst_port = tcp.destination_port();
            // Byte 13 holds CWR ECE URG ACK PSH RST SYN FIN.
            info.tcp_flags = TcpFlags(tcp.slice()[13]);
        }
        PROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(transport).map_err(|_| Malformed::TruncatedUdp)?;
            info.src_port = udp.source_port();
            info.dst_port = udp.destination_port();
        }
        PROTO_ICMP | PROTO_ICMPV6
            if (proto == PROTO_ICMPV6) == v6 && transport.len() < ICMP_MIN_LEN =>
        {
            return Err(Malformed::TruncatedIcmp.into());
        }
        _ => {}
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [100, 64, 0, 1];
    const V4_B: [u8; 4] = [100, 64, 0, 2];
    const V6_A: [u8; 16] = [
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    const V6_B: [u8; 16] = [
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ];

    /// (name, link, frame, ip_len, proto, src port, dst port) for every IP
    /// version × transport on both link types.
    type Sample = (&'static str, LinkType, Vec<u8>, u32, u8, u16, u16);

    fn samples() -> Vec<Sample> {
        let payload = [7u8; 33];
        let mut out = Vec::new();
        for eth in [true, false] {
            let link = if eth {
                LinkType::Ethernet
            } else {
                LinkType::RawIp
            };
            // IPv4 TCP
            let mut v = Vec::new();
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(V4_A, V4_B, 64)
                    .tcp(40000, 443, 1, 65535)
                    .syn()
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv4(V4_A, V4_B, 64)
                    .tcp(40000, 443, 1, 65535)
                    .syn()
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v4 tcp", link, v, 20 + 20 + 33, PROTO_TCP, 40000, 443));
            // IPv4 UDP
            let mut v = Vec::new();
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(V4_A, V4_B, 64)
                    .udp(5353, 53)
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv4(V4_A, V4_B, 64)
                    .udp(5353, 53)
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v4 udp", link, v, 20 + 8 + 33, PROTO_UDP, 5353, 53));
            // IPv4 ICMP echo
            let mut v = Vec::new();
            let echo = IcmpEchoHeader { id: 9, seq: 1 };
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(V4_A, V4_B, 64)
                    .icmpv4(Icmpv4Type::EchoRequest(echo))
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv4(V4_A, V4_B, 64)
                    .icmpv4(Icmpv4Type::EchoRequest(echo))
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v4 icmp", link, v, 20 + 8 + 33, PROTO_ICMP, 0, 0));
            // IPv6 TCP
            let mut v = Vec::new();
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv6(V6_A, V6_B, 64)
                    .tcp(40001, 22, 1, 65535)
                    .ack(5)
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv6(V6_A, V6_B, 64)
                    .tcp(40001, 22, 1, 65535)
                    .ack(5)
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v6 tcp", link, v, 40 + 20 + 33, PROTO_TCP, 40001, 22));
            // IPv6 UDP
            let mut v = Vec::new();
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv6(V6_A, V6_B, 64)
                    .udp(41641, 41641)
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv6(V6_A, V6_B, 64)
                    .udp(41641, 41641)
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v6 udp", link, v, 40 + 8 + 33, PROTO_UDP, 41641, 41641));
            // IPv6 ICMPv6 echo
            let mut v = Vec::new();
            if eth {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv6(V6_A, V6_B, 64)
                    .icmpv6(Icmpv6Type::EchoRequest(echo))
                    .write(&mut v, &payload)
                    .unwrap();
            } else {
                PacketBuilder::ipv6(V6_A, V6_B, 64)
                    .icmpv6(Icmpv6Type::EchoRequest(echo))
                    .write(&mut v, &payload)
                    .unwrap();
            }
            out.push(("v6 icmp", link, v, 40 + 8 + 33, PROTO_ICMPV6, 0, 0));
        }
        out
    }

    #[test]
    fn parses_every_version_transport_and_link() {
        for (name, link, frame, ip_len, proto, sp, dp) in samples() {
            let info = parse_packet(link, &frame).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info.ip_len, ip_len, "{name} {link:?}");
            let link_len = if link == LinkType::Ethernet { 14 } else { 0 };
            assert_eq!(info.ip_len as usize, frame.len() - link_len, "{name}");
            assert_eq!(info.proto, proto, "{name}");
            assert_eq!((info.src_port, info.dst_port), (sp, dp), "{name}");
            if name.starts_with("v4") {
                assert_eq!(info.src, IpAddr::from(V4_A));
                assert_eq!(info.dst, IpAddr::from(V4_B));
            } else {
                assert_eq!(info.src, IpAddr::from(V6_A));
                assert_eq!(info.dst, IpAddr::from(V6_B));
            }
        }
    }

    #[test]
    fn tcp_flags_are_read() {
        let mut v = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .tcp(1, 2, 3, 4)
            .fin()
            .rst()
            .ack(1)
            .write(&mut v, &[])
            .unwrap();
        let f = parse_packet(LinkType::RawIp, &v).unwrap().tcp_flags;
        assert!(f.fin() && f.rst() && f.ack() && !f.syn());
        let mut v = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .tcp(1, 2, 3, 4)
            .syn()
            .write(&mut v, &[])
            .unwrap();
        assert!(
            parse_packet(LinkType::RawIp, &v)
                .unwrap()
                .tcp_flags
                .is_initial_syn()
        );
    }

    #[test]
    fn ethernet_padding_is_not_counted() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .udp(1, 2)
            .write(&mut v, &[1])
            .unwrap();
        assert_eq!(v.len(), 14 + 29);
        v.resize(60, 0); // minimum Ethernet frame
        let info = parse_packet(LinkType::Ethernet, &v).unwrap();
        assert_eq!(info.ip_len, 29);
    }

    #[test]
    fn vlan_tags_are_skipped() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6(V6_A, V6_B, 64)
            .udp(7, 8)
            .write(&mut v, &[0; 10])
            .unwrap();
        let info = parse_packet(LinkType::Ethernet, &v).unwrap();
        assert_eq!(
            (info.proto, info.src_port, info.dst_port, info.ip_len),
            (17, 7, 8, 58)
        );
    }

    #[test]
    fn non_ip_ethernet_is_not_ip() {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&MAC_A);
        frame.extend_from_slice(&[0x08, 0x06]); // ARP
        frame.extend_from_slice(&[0; 28]);
        assert_eq!(
            parse_packet(LinkType::Ethernet, &frame),
            Err(ParseError::NotIp(0x0806))
        );
        assert!(!ParseError::NotIp(0x0806).is_malformed());
    }

    #[test]
    fn loopback_zero_mac_frames_parse() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .udp(9, 10)
            .write(&mut v, b"hi")
            .unwrap();
        assert_eq!(parse_packet(LinkType::Ethernet, &v).unwrap().ip_len, 30);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // Hop-by-hop (8 bytes) then UDP, built by hand.
        let mut v = Vec::new();
        PacketBuilder::ipv6(V6_A, V6_B, 64)
            .udp(1000, 2000)
            .write(&mut v, &[0xaa; 4])
            .unwrap();
        let udp = v[40..].to_vec();
        let mut p = v[..40].to_vec();
        p[6] = 0; // next header: hop-by-hop
        let plen = (8 + udp.len()) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next=UDP, len 0, PadN
        p.extend_from_slice(&udp);
        let info = parse_packet(LinkType::RawIp, &p).unwrap();
        assert_eq!((info.proto, info.src_port, info.dst_port), (17, 1000, 2000));
        assert_eq!(info.ip_len as usize, p.len());
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut v = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .udp(1, 2)
            .write(&mut v, &[0; 16])
            .unwrap();
        v[6] = 0x00;
        v[7] = 0x10; // fragment offset 16 (x8 bytes)
        let info = parse_packet(LinkType::RawIp, &v).unwrap();
        assert_eq!((info.proto, info.src_port, info.dst_port), (17, 0, 0));
    }

    #[test]
    fn other_protocols_have_port_zero() {
        let mut v = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .udp(1, 2)
            .write(&mut v, &[0; 16])
            .unwrap();
        v[9] = 47; // GRE
        let info = parse_packet(LinkType::RawIp, &v).unwrap();
        assert_eq!((info.proto, info.src_port, info.dst_port), (47, 0, 0));
    }

    #[test]
    fn malformed_reasons() {
        use Malformed::*;
        let err = |link, b: &[u8]| parse_packet(link, b).unwrap_err();
        assert_eq!(err(LinkType::RawIp, &[]), TruncatedIp.into());
        assert_eq!(err(LinkType::RawIp, &[0x50; 30]), BadIpVersion(5).into());
        assert_eq!(err(LinkType::RawIp, &[0x45, 0, 0]), TruncatedIp.into());
        assert_eq!(err(LinkType::Ethernet, &[0; 10]), TruncatedLink.into());
        let mut v = Vec::new();
        PacketBuilder::ipv4(V4_A, V4_B, 64)
            .tcp(1, 2, 3, 4)
            .write(&mut v, &[0; 10])
            .unwrap();
        // Cut inside the TCP header, with the IP length fixed up to match.
        let mut cut = v[..30].to_vec();
        cut[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(err(LinkType::RawIp, &cut), TruncatedTcp.into());
        // IP length larger than the frame.
        assert_eq!(err(LinkType::RawIp, &v[..45]), IpLenExceedsFrame.into());
        // IHL below 5.
        let mut bad = v.clone();
        bad[0] = 0x44;
        assert_eq!(err(LinkType::RawIp, &bad), BadIpHeaderLen.into());
        // Total length below the header.
        let mut bad = v.clone();
        bad[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(err(LinkType::RawIp, &bad), IpLenTooSmall.into());
        // TCP data offset below 5.
        let mut bad = v.clone();
        bad[20 + 12] = 0x30;
        assert_eq!(err(LinkType::RawIp, &bad), BadTcpHeaderLen.into());
        // IPv6 EtherType carrying an IPv4 header.
        let mut e = vec![0; 12];
        e.extend_from_slice(&[0x86, 0xdd]);
        e.extend_from_slice(&v);
        assert_eq!(err(LinkType::Ethernet, &e), BadIpVersion(4).into());
    }

    #[test]
    fn snap_length_truncation_keeps_ip_length() {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .udp(1, 2)
            .write(&mut v, &[0; 1400])
            .unwrap();
        let info = parse_packet_truncated(LinkType::Ethernet, &v[..96], v.len()).unwrap();
        assert_eq!(info.ip_len, 1428);
        assert!(
            parse_packet(LinkType::Ethernet, &v[..96])
                .unwrap_err()
                .is_malformed()
        );
    }
}
