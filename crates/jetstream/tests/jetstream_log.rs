//! The log seam on a real `nats-server` (JetStream on): what the embedded
//! store promises, kept by a replicated log shared by several servers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tally_jetstream::{JetStreamConfig, JetStreamError, JetStreamLog};
use tally_store::{Filter, KeepForever, Log, NewRecord, Order, Owner, RetentionPolicy, Tenant};
use tally_testkit::nats;

fn rec(owner: &str, coll: &str, id: (u32, u64), body: &str) -> NewRecord {
    NewRecord {
        time: 1_000 + id.1 as i64,
        collection: coll.into(),
        owner: Owner::tailnet(owner),
        instance: [id.0 as u8; 32],
        identity: Some(id),
        client_time: None,
        kind: tally_store::kind::LOG,
        body: body.as_bytes().to_vec(),
    }
}

fn config(urls: &str, replicas: usize) -> JetStreamConfig {
    let mut c = JetStreamConfig::from_url(urls).unwrap();
    c.replicas = replicas;
    c
}

async fn open(urls: &str) -> Arc<JetStreamLog> {
    JetStreamLog::open(config(urls, 1), Arc::new(KeepForever))
        .await
        .unwrap()
}

/// Runs a blocking read off the async threads, as the server does.
async fn read(log: &Arc<JetStreamLog>, filter: Filter, order: Order) -> Vec<(u64, String)> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let b = log
                .scan_where(from, order, &filter, 2, 1 << 20, i64::MIN, &|_| true)
                .unwrap();
            out.extend(
                b.records
                    .iter()
                    .map(|r| (r.seq, String::from_utf8(r.rec.body.clone()).unwrap())),
            );
            if !b.truncated {
                return out;
            }
            from = b.next_seq;
        }
    })
    .await
    .unwrap()
}

fn bodies(v: &[(u64, String)]) -> Vec<&str> {
    v.iter().map(|(_, b)| b.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_log_in_order_by_tenant_and_once_by_identity() {
    let Some(cluster) = nats::for_tests("jetstream log", 1) else {
        return;
    };
    let a = open(&cluster.urls()).await;
    let b = open(&cluster.urls()).await;
    let start = a.end_seq();

    // Appends through both; each resolves once JetStream has them.
    let out = a
        .append(vec![
            rec("t1", "logs", (1, 1), "a1"),
            rec("t2", "logs", (1, 2), "other tenant"),
            rec("t1", "flows", (1, 3), "a-flow"),
        ])
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (3, 0));
    let out = b
        .append(vec![
            rec("t1", "logs", (2, 1), "b1"),
            rec("t1", "logs", (2, 2), "b2"),
        ])
        .await
        .unwrap();
    assert_eq!(out.stored, 2);
    let last = out.last_seq.unwrap();
    assert!(last >= start);

    // `a` learns of `b`'s append without a request of its own.
    a.wait_for(last).await.unwrap();
    assert!(a.end_seq() > last);

    // A tenant's read sees its own records of one collection, in order,
    // oldest first and newest first, across pages.
    let t1_logs = Filter {
        owner: Some("t1".into()),
        collections: vec!["logs".into()],
        ..Filter::default()
    };
    let oldest = read(&a, t1_logs.clone(), Order::Oldest).await;
    assert_eq!(bodies(&oldest), ["a1", "b1", "b2"]);
    assert!(oldest.windows(2).all(|w| w[0].0 < w[1].0), "{oldest:?}");
    let newest = read(&b, t1_logs, Order::Newest).await;
    assert_eq!(bodies(&newest), ["b2", "b1", "a1"]);
    let t1_all = Filter {
        owner: Some("t1".into()),
        ..Filter::default()
    };
    assert_eq!(
        bodies(&read(&b, t1_all, Order::Oldest).await),
        ["a1", "a-flow", "b1", "b2"]
    );
    assert_eq!(read(&a, Filter::default(), Order::Oldest).await.len(), 5);

    // A retry of a stored record, through the other server once it has
    // followed the first one's append, is dropped...
    tally_testkit::wait::until("b follows a's append", Duration::from_secs(10), || {
        let b = b.clone();
        async move {
            let n = b.recent_owner_bytes("t1", 1_000 + 3600 * 1_000_000_000);
            if n > 0 {
                Ok(())
            } else {
                Err("no bytes counted for t1".into())
            }
        }
    })
    .await;
    let out = b
        .append(vec![
            rec("t1", "logs", (1, 1), "a1"),
            rec("t1", "logs", (1, 9), "new"),
        ])
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 1));
    // ...and so is one sent to both servers at once (JetStream's window on
    // the message ID catches what the followers have not seen yet).
    let twice = vec![
        rec("t3", "logs", (3, 1), "raced"),
        rec("t3", "logs", (3, 2), "raced2"),
    ];
    let (x, y) = tokio::join!(a.append(twice.clone()), b.append(twice));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.stored + y.stored, 2, "{x:?} {y:?}");
    assert_eq!(x.duplicates + y.duplicates, 2, "{x:?} {y:?}");
    let t3 = Filter {
        owner: Some("t3".into()),
        ..Filter::default()
    };
    assert_eq!(
        bodies(&read(&a, t3, Order::Oldest).await),
        ["raced", "raced2"]
    );

    // Reading from the end waits for the next append.
    let end = a.end_seq();
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait_for(end).await })
    };
    b.append(vec![rec("t1", "logs", (2, 3), "later")])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_for resolves on another server's append")
        .unwrap()
        .unwrap();

    // Closing makes waiters end and appends refuse.
    a.close();
    assert!(a.wait_for(u64::MAX - 1).await.is_err());
    assert!(
        a.append(vec![rec("t1", "logs", (5, 1), "x")])
            .await
            .is_err()
    );
    assert!(a.check().is_err());
    assert!(b.check().is_ok());
}

/// Expires every record of collection `old`.
struct ExpireOld;

impl RetentionPolicy for ExpireOld {
    fn expires_at(&self, _: Tenant<'_>, collection: &str, _: &[u8; 32], time: i64) -> Option<i64> {
        (collection == "old").then_some(time)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_hides_expired_records_at_once_and_purges_them() {
    let Some(cluster) = nats::for_tests("jetstream retention", 1) else {
        return;
    };
    let log = JetStreamLog::open(config(&cluster.urls(), 1), Arc::new(ExpireOld))
        .await
        .unwrap();
    let mut records: Vec<NewRecord> = (0..5).map(|i| rec("t1", "old", (1, i), "gone")).collect();
    records.push(rec("t1", "new", (1, 99), "kept"));
    log.append(records).await.unwrap();
    let now = 1_000_000;
    let l = log.clone();
    let visible = tokio::task::spawn_blocking(move || {
        l.scan(0, &Filter::default(), 100, 1 << 20, now)
            .unwrap()
            .records
            .len()
    })
    .await
    .unwrap();
    assert_eq!(
        visible, 1,
        "expired records are hidden before they are deleted"
    );
    let l = log.clone();
    let report = tokio::task::spawn_blocking(move || l.enforce_retention(now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.records_deleted, 5);
    let l = log.clone();
    let left = tokio::task::spawn_blocking(move || {
        l.scan(0, &Filter::default(), 100, 1 << 20, i64::MIN)
            .unwrap()
            .records
    })
    .await
    .unwrap();
    assert_eq!(left.len(), 1, "purged for everyone, not only hidden");
    assert_eq!(left[0].rec.body, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_appends_are_split_to_the_servers_message_limit() {
    let Some(cluster) = nats::for_tests("jetstream split", 1) else {
        return;
    };
    let log = open(&cluster.urls()).await;
    // 40 records of 100 KiB: 4 MB, past nats-server's 1 MiB default.
    let body = "x".repeat(100 << 10);
    let records: Vec<NewRecord> = (0..40).map(|i| rec("t1", "logs", (1, i), &body)).collect();
    let out = log.append(records).await.unwrap();
    assert_eq!(out.stored, 40);
    let got = read(&log, Filter::default(), Order::Oldest).await;
    assert_eq!(got.len(), 40);
    let distinct: HashSet<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(distinct.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_no_server_and_an_impossible_replica_count() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Err(e) = JetStreamLog::open(
        config(&format!("nats://127.0.0.1:{port}"), 1),
        Arc::new(KeepForever),
    )
    .await
    else {
        panic!("opened a log with no server")
    };
    assert!(matches!(e, JetStreamError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("nats-server -js"), "{e}");
    assert!(JetStreamConfig::from_url("http://x:4222").is_err());
    // A password in the URL is never shown.
    let c = JetStreamConfig::from_url("nats://tally:s3cret@a:4222,b:4222").unwrap();
    assert_eq!(c.servers, ["nats://tally:s3cret@a:4222", "nats://b:4222"]);
    assert_eq!(c.shown(), "nats://tally:***@a:4222,nats://b:4222");
    let e = JetStreamConfig::from_url("http://tally:s3cret@a").unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert_eq!(
        JetStreamConfig::from_url("tls://a:4222").unwrap().servers,
        ["tls://a:4222"]
    );

    let Some(cluster) = nats::for_tests("jetstream replicas", 1) else {
        return;
    };
    let mut c = config(&cluster.urls(), 3);
    c.stream = "THREE".into();
    c.timeout = Duration::from_secs(3);
    let Err(e) = JetStreamLog::open(c, Arc::new(KeepForever)).await else {
        panic!("three replicas on one server")
    };
    assert!(e.to_string().contains("3 replicas need a cluster"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_at_a_time_and_a_crashed_holder_loses_it() {
    let Some(cluster) = nats::for_tests("jetstream lease", 1) else {
        return;
    };
    let a = open(&cluster.urls()).await;
    let b = open(&cluster.urls()).await;
    let ttl = Duration::from_secs(2);

    // Shared files: two processes racing to create one get the same bytes.
    let (fa, fb) = (
        tally_jetstream::SharedFiles::open(&a).await.unwrap(),
        tally_jetstream::SharedFiles::open(&b).await.unwrap(),
    );
    let (ka, kb) = tokio::join!(
        tokio::task::spawn_blocking({
            let fa = fa.clone();
            move || fa.get_or_create("log-key", || b"from a".to_vec()).unwrap()
        }),
        tokio::task::spawn_blocking({
            let fb = fb.clone();
            move || fb.get_or_create("log-key", || b"from b".to_vec()).unwrap()
        })
    );
    assert_eq!(ka.unwrap(), kb.unwrap());
    tokio::task::spawn_blocking(move || {
        fa.put("streams/s1.json", b"{\"position\":7}").unwrap();
        assert_eq!(
            fb.get("streams/s1.json").unwrap().unwrap(),
            b"{\"position\":7}"
        );
        assert_eq!(fb.get("missing").unwrap(), None);
        let mut names = fb.list().unwrap();
        names.sort();
        assert_eq!(names, ["log-key", "streams/s1.json"]);
        assert!(fb.put("../x", b"").is_err());
    })
    .await
    .unwrap();

    // a holds the lease; b stands by.
    let lease_a = tally_jetstream::Lease::acquire(&a, "workers", "a", ttl)
        .await
        .unwrap();
    assert!(lease_a.is_held());
    let mut b_waits = {
        let b = b.clone();
        tokio::spawn(async move { tally_jetstream::Lease::acquire(&b, "workers", "b", ttl).await })
    };
    // Renewals keep it with a for several lease times.
    let kept = tokio::time::timeout(ttl * 3, &mut b_waits).await;
    assert!(kept.is_err(), "b took a lease that a renews");
    assert!(lease_a.is_held());

    // a crashes (its client stops, nothing is released): b takes over
    // once the lease lapses.
    let lost = lease_a.lost();
    std::mem::forget(lease_a);
    drop(a);
    let lease_b = tokio::time::timeout(ttl * 5, b_waits)
        .await
        .expect("b takes the lease within a few lease times")
        .unwrap()
        .unwrap();
    assert!(lease_b.is_held());
    drop(lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_read_back_whole() {
    let Some(cluster) = nats::for_tests("jetstream many", 1) else {
        return;
    };
    let log = open(&cluster.urls()).await;
    let mut n = 0u64;
    for _ in 0..200 {
        let records: Vec<NewRecord> = (0..25)
            .map(|_| {
                n += 1;
                rec("t1", "tailnode", (1, n), &format!("e{n}"))
            })
            .collect();
        log.append(records).await.unwrap();
    }
    let got = read(
        &log,
        Filter {
            owner: Some("t1".into()),
            collections: vec!["tailnode".into()],
            ..Filter::default()
        },
        Order::Oldest,
    )
    .await;
    assert_eq!(got.len(), 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_returns_when_nats_is_gone() {
    let Some(mut cluster) = nats::for_tests("jetstream close", 1) else {
        return;
    };
    let log = open(&cluster.urls()).await;
    log.append(vec![rec("t1", "logs", (1, 1), "x")])
        .await
        .unwrap();
    cluster.servers[0].kill();
    let l = log.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || l.close()),
    )
    .await
    .expect("close returns although NATS is gone")
    .unwrap();
    assert!(log.check().is_err());
    assert!(
        log.append(vec![rec("t1", "logs", (1, 2), "y")])
            .await
            .is_err()
    );
}
