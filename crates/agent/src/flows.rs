//! Network flow logging in the agent: while the tailnet has flow logging on
//! (learned from the server's answers to the agent's reports), capture the
//! mesh interfaces (`tally-flow`), count connections in a bounded table and,
//! every interval, queue one Tailscale-shaped flow record for the
//! `tailtraffic` collection. Flow opens and closes are entries of the node's
//! log stream (source `tally-flows`). Turning flow logging off stops the
//! capture without a restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_flow::record::MAX_ENTRIES_PER_RECORD;
use tally_flow::{
    Capture, CaptureConfig, CaptureError, CaptureHandle, Classifier, ConnTable, FlowEvent,
    FlowEventKind, IntervalCounts, IpPrefix, TableConfig, TrafficKind,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::addrs::could_be_mesh_node;
use crate::entry::Line;
use crate::report::{NodeSettings, RefreshRequest};
use crate::writer::{Item, WriteRequest};

/// Source name of flow events in the node's log stream.
pub const FLOW_SOURCE: &str = "tally-flows";
/// Most flow events logged per interval (a summary counts the rest).
const MAX_EVENTS_PER_INTERVAL: usize = 2000;
/// An unknown address is asked about again after this, doubling each time
/// up to [`ASK_BACKOFF_MAX`].
const ASK_BACKOFF_FIRST: Duration = Duration::from_secs(30);
/// Longest wait before asking about the same unknown address again.
const ASK_BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// Shortest time between two early reports asked for by the flow runner.
const ASK_GAP: Duration = Duration::from_secs(4);
/// How long an interval's record waits for the early report's answer.
const ASK_WAIT: Duration = Duration::from_secs(3);
/// Most unknown addresses remembered.
const MAX_ASKED: usize = 4096;

/// Flow capture settings.
#[derive(Debug, Clone)]
pub struct FlowOptions {
    /// Interfaces to capture (the mesh interface: `tailscale0`, `wg0`, ...).
    pub ifaces: Vec<String>,
    /// Length of one record's interval.
    pub interval: Duration,
    /// Connection table limits and timeouts.
    pub table: TableConfig,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            ifaces: Vec::new(),
            interval: Duration::from_secs(5),
            table: TableConfig::default(),
        }
    }
}

/// Shared between capture threads and the interval task.
struct Shared {
    table: ConnTable,
    events: Vec<FlowEvent>,
    events_dropped: u64,
    /// When this capture started (Unix ns): every record says it, so the
    /// server knows intervals without a record had no traffic.
    capture_start: u64,
}

/// The flow loop's inputs.
pub(crate) struct FlowRunner {
    /// Settings.
    pub opts: FlowOptions,
    /// Routes this node advertises.
    pub own_routes: Vec<String>,
    /// What the server says (and this node's own addresses).
    pub settings: watch::Receiver<NodeSettings>,
    /// The `tailtraffic` pipeline.
    pub records: mpsc::Sender<WriteRequest>,
    /// The node's log pipeline.
    pub logs: mpsc::Sender<WriteRequest>,
    /// Asks the reporter for a report now (to learn new peers).
    pub refresh: mpsc::Sender<RefreshRequest>,
    /// Unknown addresses asked about: when to ask again, and the backoff.
    pub asked: HashMap<IpAddr, (Instant, Duration)>,
    /// No early report is asked for before this.
    pub next_ask: Option<Instant>,
}

fn prefixes(list: &[String]) -> impl Iterator<Item = IpPrefix> + '_ {
    list.iter().filter_map(|s| s.parse::<IpPrefix>().ok())
}

fn classifier(own_routes: &[String], s: &NodeSettings) -> Classifier {
    // Addresses may carry a prefix length ("100.64.0.5/32", "10.0.0.5/24"):
    // the node's address is the part before it.
    let hosts = |list: &[String]| -> Vec<IpAddr> {
        list.iter()
            .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect()
    };
    let mut c = Classifier::default();
    c.tailnet_nodes.extend(hosts(&s.addresses));
    c.routes.extend(prefixes(own_routes));
    for peer in &s.peers {
        c.tailnet_nodes.extend(hosts(&peer.addresses));
        c.routes.extend(prefixes(&peer.advertised_routes));
    }
    c
}

fn now() -> u64 {
    u64::try_from(tally_proto::timefmt::now_nanos()).unwrap_or(0)
}

fn event_line(e: &FlowEvent) -> Line {
    let proto = match e.key.proto {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => format!("proto-{n}"),
    };
    let t = &e.totals;
    let text = match e.kind {
        FlowEventKind::Open => format!(
            "flow open {proto} {} -> {}{}",
            e.key.local_addr(),
            e.key.remote_addr(),
            if e.mid_stream { " (mid-stream)" } else { "" }
        ),
        FlowEventKind::Close(reason) => format!(
            "flow close {proto} {} -> {} ({}): tx {} pkts {} B, rx {} pkts {} B",
            e.key.local_addr(),
            e.key.remote_addr(),
            reason.as_str(),
            t.tx_pkts,
            t.tx_bytes,
            t.rx_pkts,
            t.rx_bytes
        ),
    };
    agent_line(text, i64::try_from(e.at).unwrap_or(i64::MAX))
}

fn agent_line(text: String, at: i64) -> Line {
    Line::note(FLOW_SOURCE, text, at)
}

impl FlowRunner {
    async fn log(&self, lines: Vec<Line>) {
        if lines.is_empty() {
            return;
        }
        let req = WriteRequest {
            items: lines.into_iter().map(Item::Line).collect(),
            reply: None,
        };
        let _ = self.logs.send(req).await;
    }

    /// Starts one capture per interface; failures are logged (and written to
    /// the node's log) and that interface is skipped.
    async fn start_captures_of(
        &self,
        ifaces: &[String],
        shared: &Arc<Mutex<Shared>>,
    ) -> Vec<CaptureHandle> {
        let mut handles = Vec::new();
        let mut notes = Vec::new();
        for iface in ifaces {
            let opened = Capture::open(&CaptureConfig::new(iface.clone())).and_then(|cap| {
                let shared = Arc::clone(shared);
                cap.spawn(move |p| {
                    let Ok(mut s) = shared.lock() else { return };
                    if let Ok(events) = s
                        .table
                        .observe_frame(p.at, p.dir, p.link, p.data, p.wire_len)
                    {
                        for e in events {
                            if s.events.len() < MAX_EVENTS_PER_INTERVAL {
                                s.events.push(e);
                            } else {
                                s.events_dropped += 1;
                            }
                        }
                    }
                })
            });
            match opened {
                Ok(h) => {
                    tracing::info!(%iface, "capturing flows");
                    notes.push(agent_line(
                        format!("flow capture started on {iface}"),
                        tally_proto::timefmt::now_nanos(),
                    ));
                    handles.push(h);
                }
                Err(e) => {
                    let hint = matches!(e, CaptureError::PermissionDenied { .. });
                    tracing::error!("flow capture not started: {e}");
                    notes.push(agent_line(
                        format!(
                            "flow capture on {iface} not started: {e}{}",
                            if hint { "" } else { "; logs are still shipped" }
                        ),
                        tally_proto::timefmt::now_nanos(),
                    ));
                }
            }
        }
        self.log(notes).await;
        handles
    }

    /// Runs until `stop`: captures while flow logging is on.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        loop {
            // Wait for flow logging on and a node ID.
            let node_id = loop {
                let s = self.settings.borrow_and_update().clone();
                if let (true, Some(id)) = (s.flow_logging, s.node_id) {
                    break id;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = self.settings.changed() => if changed.is_err() { return },
                }
            };
            let shared = Arc::new(Mutex::new(Shared {
                table: ConnTable::new(self.opts.table.clone()),
                events: Vec::new(),
                events_dropped: 0,
                capture_start: now(),
            }));
            let mut handles = self.start_captures_of(&self.opts.ifaces, &shared).await;
            if handles.is_empty() {
                // Nothing to capture: wait for the next settings change.
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = self.settings.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let mut start = shared.lock().map_or_else(|_| now(), |s| s.capture_start);
            let mut ticker = tokio::time::interval_at(
                tokio::time::Instant::now() + self.opts.interval,
                self.opts.interval,
            );
            // Kernel drops already counted, per interface.
            let mut drops: std::collections::HashMap<String, u64> = Default::default();
            let stopping = loop {
                let turned_off = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = ticker.tick() => false,
                    changed = self.settings.changed() => {
                        if changed.is_err() || !self.settings.borrow().flow_logging {
                            true
                        } else {
                            // New peers or addresses: used at the interval's end.
                            continue;
                        }
                    }
                };
                let end = now();
                if !turned_off && handles.iter().any(CaptureHandle::is_finished) {
                    // An interface went away (or down): note it and try to
                    // capture it again from the next interval on.
                    let (done, live): (Vec<_>, Vec<_>) =
                        handles.into_iter().partition(CaptureHandle::is_finished);
                    let mut lines = Vec::new();
                    for h in done {
                        let iface = h.iface().to_owned();
                        drops.remove(&iface);
                        let why = match h.stop() {
                            Err(e) => e.to_string(),
                            Ok(_) => "the interface went away".into(),
                        };
                        lines.push(agent_line(
                            format!("flow capture on {iface} ended: {why}"),
                            tally_proto::timefmt::now_nanos(),
                        ));
                    }
                    self.log(lines).await;
                    handles = live;
                    let missing: Vec<String> = self
                        .opts
                        .ifaces
                        .iter()
                        .filter(|i| !handles.iter().any(|h| h.iface() == i.as_str()))
                        .cloned()
                        .collect();
                    handles.extend(self.start_captures_of(&missing, &shared).await);
                }
                for h in &handles {
                    let d = h.stats().kernel_drops;
                    let seen = drops.entry(h.iface().to_owned()).or_default();
                    if d > *seen {
                        if let Ok(mut s) = shared.lock() {
                            s.table.note_dropped(d - *seen);
                        }
                        *seen = d;
                    }
                }
                self.flush(&shared, start, end, &node_id, turned_off).await;
                start = end;
                if turned_off {
                    break stop.is_cancelled();
                }
            };
            let stopped = tokio::task::spawn_blocking(move || {
                for h in handles {
                    let _ = h.stop();
                }
            });
            let _ = stopped.await;
            self.log(vec![agent_line(
                "flow capture stopped".into(),
                tally_proto::timefmt::now_nanos(),
            )])
            .await;
            if stopping {
                return;
            }
        }
    }

    /// The classifier of what the server said last.
    fn classifier(&self) -> Classifier {
        classifier(&self.own_routes, &self.settings.borrow())
    }

    /// Before an interval is classified: when it has exit traffic with an
    /// address a mesh node could have (private, shared or unique local)
    /// that no known peer holds, it may be a node that registered since
    /// the last report. Asks the reporter for a report now (each such
    /// address at most once per backoff, which doubles from 30 s to 30
    /// min; at most one early report per 4 s) and waits for it (≤ 3 s).
    /// Returns whether a report was made.
    async fn ask_about_unknown(&mut self, counts: &IntervalCounts, classes: &Classifier) -> bool {
        let now = Instant::now();
        if self.next_ask.is_some_and(|t| now < t) {
            return false;
        }
        let mut unknown: Vec<IpAddr> = counts
            .flows
            .iter()
            .map(|f| (f.key.local, f.key.remote.to_canonical()))
            .filter(|(local, remote)| {
                could_be_mesh_node(*remote)
                    && classes.classify(*local, *remote) == TrafficKind::Exit
                    && self.asked.get(remote).is_none_or(|(at, _)| now >= *at)
            })
            .map(|(_, remote)| remote)
            .collect();
        if unknown.is_empty() {
            return false;
        }
        unknown.sort_unstable();
        unknown.dedup();
        if self.asked.len() + unknown.len() > MAX_ASKED {
            self.asked.retain(|_, (at, _)| now < *at);
            if self.asked.len() + unknown.len() > MAX_ASKED {
                self.asked.clear();
            }
        }
        for ip in &unknown {
            let backoff = self
                .asked
                .get(ip)
                .map_or(ASK_BACKOFF_FIRST, |(_, b)| (*b * 2).min(ASK_BACKOFF_MAX));
            self.asked.insert(*ip, (now + backoff, backoff));
        }
        self.next_ask = Some(now + ASK_GAP);
        tracing::debug!(?unknown, "asking the server for new peers");
        let (tx, rx) = oneshot::channel();
        if self.refresh.try_send(tx).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(ASK_WAIT, rx).await, Ok(Ok(())))
    }

    /// Queues the interval's record and logs its events.
    async fn flush(
        &mut self,
        shared: &Arc<Mutex<Shared>>,
        start: u64,
        end: u64,
        node_id: &str,
        closing: bool,
    ) {
        let (counts, events, dropped, capture_start) = {
            let Ok(mut s) = shared.lock() else { return };
            let mut closed = if closing {
                s.table.close_all(end)
            } else {
                s.table.expire(end)
            };
            let counts = s.table.take_interval(start, end);
            let mut events = std::mem::take(&mut s.events);
            let room = MAX_EVENTS_PER_INTERVAL.saturating_sub(events.len());
            let extra = closed.len().saturating_sub(room) as u64;
            closed.truncate(room);
            events.extend(closed);
            let dropped = std::mem::take(&mut s.events_dropped) + extra;
            (counts, events, dropped, s.capture_start)
        };
        let mut classes = self.classifier();
        if !closing && self.ask_about_unknown(&counts, &classes).await {
            classes = self.classifier();
        }
        let mut record = counts.into_record(node_id, &classes);
        record.capture_start = Some(capture_start);
        let mut lines: Vec<Line> = events.iter().map(event_line).collect();
        if dropped > 0 {
            lines.push(agent_line(
                format!("{dropped} more flow events in this interval were not logged"),
                i64::try_from(end).unwrap_or(i64::MAX),
            ));
        }
        self.log(lines).await;
        if record.is_empty() {
            return;
        }
        // Busy intervals become several records, each well under the
        // protocol's 256 KiB entry limit.
        // Serialized straight to bytes and handed over one part at a time,
        // so a full table's interval does not sit in memory as JSON values.
        for part in record.split(MAX_ENTRIES_PER_RECORD) {
            match serde_json::to_vec(&part) {
                Ok(json) => {
                    let req = WriteRequest {
                        items: vec![Item::Record(json)],
                        reply: None,
                    };
                    let _ = self.records.send(req).await;
                }
                Err(e) => tracing::error!("a flow record could not be encoded: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Peer;
    use tally_flow::{Counts, FlowCount, FlowKey};

    fn counts_with(remotes: &[&str]) -> IntervalCounts {
        IntervalCounts {
            start: 0,
            end: 1,
            flows: remotes
                .iter()
                .map(|r| FlowCount {
                    key: FlowKey {
                        proto: 6,
                        local: "10.0.0.1".parse().unwrap(),
                        local_port: 40000,
                        remote: r.parse().unwrap(),
                        remote_port: 22,
                    },
                    counts: Counts::default(),
                })
                .collect(),
            evictions: 0,
            malformed_packets: 0,
            dropped_packets: 0,
        }
    }

    fn runner() -> (
        FlowRunner,
        watch::Sender<NodeSettings>,
        mpsc::Receiver<RefreshRequest>,
    ) {
        let (settings_tx, settings) = watch::channel(NodeSettings {
            node_id: Some("n1".into()),
            flow_logging: true,
            addresses: vec!["10.0.0.1".into()],
            peers: vec![Peer {
                node_id: "n2".into(),
                addresses: vec!["10.0.0.2".into()],
                ..Peer::default()
            }],
            ..NodeSettings::default()
        });
        let (records, _) = mpsc::channel(1);
        let (logs, _) = mpsc::channel(1);
        let (refresh, refresh_rx) = mpsc::channel(4);
        let r = FlowRunner {
            opts: FlowOptions::default(),
            own_routes: Vec::new(),
            settings,
            records,
            logs,
            refresh,
            asked: HashMap::new(),
            next_ask: None,
        };
        (r, settings_tx, refresh_rx)
    }

    /// A peer that registered after the last report: traffic with its
    /// private address makes the runner ask for a report and classify the
    /// interval with the answer; known peers and Internet addresses ask
    /// nothing, and an address asked about is not asked about again soon.
    #[tokio::test]
    async fn unknown_private_address_asks_for_new_peers() {
        let (mut r, settings_tx, mut asks) = runner();
        // Known peer, Internet, link-local multicast: nothing to ask.
        let counts = counts_with(&["10.0.0.2", "1.1.1.1", "ff02::1"]);
        assert!(!r.ask_about_unknown(&counts, &r.classifier()).await);
        assert!(asks.try_recv().is_err());

        // 10.0.0.3 registered since: the reporter answers with it.
        let reporter = tokio::spawn(async move {
            let reply = asks.recv().await.expect("a request");
            settings_tx.send_modify(|s| {
                s.peers.push(Peer {
                    node_id: "n3".into(),
                    addresses: vec!["10.0.0.3".into()],
                    ..Peer::default()
                })
            });
            reply.send(()).unwrap();
            (asks, settings_tx)
        });
        let counts = counts_with(&["10.0.0.3"]);
        assert_eq!(
            r.classifier()
                .classify("10.0.0.1".parse().unwrap(), "10.0.0.3".parse().unwrap()),
            TrafficKind::Exit
        );
        assert!(r.ask_about_unknown(&counts, &r.classifier()).await);
        let record = counts.into_record("n1", &r.classifier());
        assert_eq!(record.virtual_traffic.len(), 1, "{record:?}");
        assert!(record.exit_traffic.is_empty(), "{record:?}");
        let (mut asks, _settings) = reporter.await.unwrap();

        // Not asked again within 4 s, nor about the same address for 30 s.
        let counts = counts_with(&["100.64.0.9"]);
        assert!(!r.ask_about_unknown(&counts, &r.classifier()).await);
        r.next_ask = None;
        r.asked.insert(
            "100.64.0.9".parse().unwrap(),
            (Instant::now() + ASK_BACKOFF_FIRST, ASK_BACKOFF_FIRST),
        );
        assert!(!r.ask_about_unknown(&counts, &r.classifier()).await);
        assert!(asks.try_recv().is_err());
        // Once the backoff has passed it is asked about again (the backoff
        // doubles); a request that gets no answer (here: dropped) leaves the
        // interval classified as it stands.
        r.asked.insert(
            "100.64.0.9".parse().unwrap(),
            (Instant::now(), ASK_BACKOFF_FIRST),
        );
        let classes = r.classifier();
        let asked = r.ask_about_unknown(&counts, &classes);
        let dropped = async { drop(asks.recv().await.expect("a request")) };
        let (asked, ()) = tokio::join!(asked, dropped);
        assert!(!asked, "an unanswered request made no report");
        let ip: IpAddr = "100.64.0.9".parse().unwrap();
        assert_eq!(r.asked[&ip].1, ASK_BACKOFF_FIRST * 2);
    }
}
