//! The driver over a real embedded store: exactly once across restarts,
//! the failure rule (skip, halt, errors, panics), pause and resume, lag.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tally_pipeline::{
    Consumer, ConsumerError, ConsumerHandle, ConsumerState, FailurePolicy, Handled, Pipeline,
    Rejection,
};
use tally_store::{
    Filter, KeepForever, NewRecord, Position, ReadLimits, ReadSpec, ScanBatch, SharedLog, Store,
    StoreConfig, kind,
};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn rec(body: &str) -> NewRecord {
    NewRecord {
        time: now(),
        collection: "c".into(),
        owner: tally_store::Owner::tailnet("T"),
        instance: [1; 32],
        identity: None,
        client_time: None,
        kind: kind::LOG,
        body: body.as_bytes().to_vec(),
    }
}

fn open_store(dir: &Path) -> Arc<Store> {
    Store::open(StoreConfig::new(dir.join("store")), Arc::new(KeepForever))
        .unwrap()
        .0
}

/// What the test consumer's output file holds: the positions it handled
/// and the position it committed through, written together.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct Output {
    handled: Vec<u64>,
    through: u64,
}

/// A consumer whose output is the list of positions it handled, committed
/// to a file with its position. Bodies `bad` are rejected while `strict`.
struct Recorder {
    path: PathBuf,
    committed: Output,
    pending: Vec<u64>,
    position: Position,
    policy: FailurePolicy,
    strict: Arc<Mutex<bool>>,
    fail_next: Arc<Mutex<u32>>,
    panic_next: Arc<Mutex<bool>>,
    batch: usize,
}

impl Recorder {
    fn open(dir: &Path, policy: FailurePolicy) -> Self {
        let path = dir.join("recorder.json");
        let committed: Output = std::fs::read(&path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or_default();
        Self {
            path,
            position: committed.through,
            committed,
            pending: Vec::new(),
            policy,
            strict: Arc::new(Mutex::new(true)),
            fail_next: Arc::new(Mutex::new(0)),
            panic_next: Arc::new(Mutex::new(false)),
            batch: 7,
        }
    }
}

impl Consumer for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn reads(&self) -> ReadSpec {
        ReadSpec {
            filter: Filter::default(),
            include_expired: false,
        }
    }

    fn policy(&self) -> FailurePolicy {
        self.policy
    }

    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            records: self.batch,
            bytes: 1 << 20,
        }
    }

    fn position(&self) -> Position {
        self.position
    }

    async fn handle(&mut self, batch: Arc<ScanBatch>) -> Result<Handled, ConsumerError> {
        {
            let mut f = self.fail_next.lock();
            if *f > 0 {
                *f -= 1;
                return Err(ConsumerError::new("the disk is away"));
            }
        }
        if std::mem::take(&mut *self.panic_next.lock()) {
            panic!("a bug");
        }
        let mut rejected = Vec::new();
        let strict = *self.strict.lock();
        for r in &batch.records {
            if strict && r.rec.body == b"bad" {
                rejected.push(Rejection {
                    position: r.seq,
                    reason: "not a good record".into(),
                });
                if self.policy == FailurePolicy::Halt {
                    self.position = r.seq - 1;
                    return Ok(Handled {
                        through: self.position,
                        rejected,
                    });
                }
                continue;
            }
            self.pending.push(r.seq);
        }
        self.position = batch.next_seq - 1;
        Ok(Handled {
            through: self.position,
            rejected,
        })
    }

    async fn commit(&mut self) -> Result<(), ConsumerError> {
        let mut out = self.committed.clone();
        out.handled.append(&mut self.pending);
        out.through = self.position;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&out).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        self.committed = out;
        Ok(())
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn caught_up(log: &SharedLog, h: &ConsumerHandle) {
    let end = log.end_seq() - 1;
    tokio::time::timeout(Duration::from_secs(20), h.wait_for(end))
        .await
        .expect("the consumer caught up");
}

fn committed(dir: &Path) -> Output {
    serde_json::from_slice(&std::fs::read(dir.join("recorder.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_once_across_stops_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let log: SharedLog = store.clone();
    let mut appended = 0u64;
    for round in 0..5 {
        let pipeline = Pipeline::new(log.clone(), Some(dir.path().join("consumers")));
        let (h, task) = pipeline
            .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
            .unwrap();
        // Appends while the consumer runs, then stops it mid-stream.
        for i in 0..40 {
            log.append(vec![rec(&format!("r{round}-{i}"))])
                .await
                .unwrap();
            appended += 1;
        }
        if round % 2 == 0 {
            caught_up(&log, &h).await;
        }
        pipeline.stop();
        task.await.unwrap();
        assert_eq!(h.status(log.end_seq()).state, ConsumerState::Stopped);
    }
    let pipeline = Pipeline::new(log.clone(), Some(dir.path().join("consumers")));
    let (h, task) = pipeline
        .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
        .unwrap();
    caught_up(&log, &h).await;
    pipeline.stop();
    task.await.unwrap();
    let out = committed(dir.path());
    let unique: BTreeSet<u64> = out.handled.iter().copied().collect();
    assert_eq!(
        unique.len(),
        out.handled.len(),
        "a record was handled twice"
    );
    assert_eq!(unique, (1..=appended).collect::<BTreeSet<u64>>());
    assert_eq!(out.through, appended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_consumer_records_a_rejection_once_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let log: SharedLog = open_store(dir.path());
    for b in ["a", "bad", "c"] {
        log.append(vec![rec(b)]).await.unwrap();
    }
    for _ in 0..2 {
        // The second run starts from scratch (its output file removed), so
        // it rejects the same record again: recorded once.
        let _ = std::fs::remove_file(dir.path().join("recorder.json"));
        let pipeline = Pipeline::new(log.clone(), Some(dir.path().join("consumers")));
        let (h, task) = pipeline
            .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
            .unwrap();
        caught_up(&log, &h).await;
        let s = h.status(log.end_seq());
        assert_eq!(s.rejected, 1);
        assert_eq!(s.recent_rejections[0].position, 2);
        assert_eq!(s.recent_rejections[0].reason, "not a good record");
        assert_eq!(s.state, ConsumerState::Running);
        assert_eq!(s.lag_records, 0);
        pipeline.stop();
        task.await.unwrap();
        assert_eq!(committed(dir.path()).handled, vec![1, 3]);
    }
    let file =
        std::fs::read_to_string(dir.path().join("consumers/recorder.rejections.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 1, "{file}");
    assert!(file.contains("\"position\":2"), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_consumer_stops_before_the_record_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let log: SharedLog = open_store(dir.path());
    for b in ["a", "b", "bad", "d"] {
        log.append(vec![rec(b)]).await.unwrap();
    }
    let pipeline = Pipeline::new(log.clone(), Some(dir.path().join("consumers")));
    let consumer = Recorder::open(dir.path(), FailurePolicy::Halt);
    let strict = consumer.strict.clone();
    let (h, _task) = pipeline.spawn(consumer).unwrap();
    wait_until("halted", || {
        h.status(log.end_seq()).state == ConsumerState::Halted
    })
    .await;
    let s = h.status(log.end_seq());
    assert_eq!(s.position, 2, "stops before the record");
    assert_eq!(s.halted_at.as_ref().unwrap().position, 3);
    assert_eq!(s.lag_records, 2);
    // What it handled before the record is committed.
    assert_eq!(committed(dir.path()).handled, vec![1, 2]);
    // Records keep arriving; it stays where it is.
    log.append(vec![rec("e")]).await.unwrap();
    assert_eq!(h.status(log.end_seq()).lag_records, 3);
    // Resumed unchanged, it halts at the same record again.
    h.resume();
    wait_until("halted again", || {
        let s = h.status(log.end_seq());
        s.state == ConsumerState::Halted && s.batches >= 2
    })
    .await;
    assert_eq!(h.position(), 2);
    // Fixed (as an upgrade would), resumed: it goes on.
    *strict.lock() = false;
    h.resume();
    caught_up(&log, &h).await;
    let s = h.status(log.end_seq());
    assert_eq!(s.state, ConsumerState::Running);
    assert!(s.halted_at.is_none());
    assert_eq!(s.rejected, 1);
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_retried_and_a_panic_halts() {
    let dir = tempfile::tempdir().unwrap();
    let log: SharedLog = open_store(dir.path());
    log.append(vec![rec("a")]).await.unwrap();
    let pipeline = Pipeline::new(log.clone(), None);
    let consumer = Recorder::open(dir.path(), FailurePolicy::Skip);
    *consumer.fail_next.lock() = 2;
    let panic_next = consumer.panic_next.clone();
    let (h, _task) = pipeline.spawn(consumer).unwrap();
    caught_up(&log, &h).await;
    let s = h.status(log.end_seq());
    assert_eq!(s.errors, 2);
    assert_eq!(s.last_error.as_deref(), Some("the disk is away"));
    *panic_next.lock() = true;
    log.append(vec![rec("b")]).await.unwrap();
    wait_until("halted by the panic", || {
        h.status(log.end_seq()).state == ConsumerState::Halted
    })
    .await;
    let s = h.status(log.end_seq());
    assert_eq!(s.position, 1);
    let why = s.halted_at.unwrap().reason;
    assert!(why.contains("panicked: a bug"), "{why}");
    h.resume();
    caught_up(&log, &h).await;
    assert_eq!(h.status(log.end_seq()).state, ConsumerState::Running);
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_falls_behind_and_catches_up_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let log: SharedLog = open_store(dir.path());
    let pipeline = Pipeline::new(log.clone(), None);
    let (h, _task) = pipeline
        .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
        .unwrap();
    log.append(vec![rec("a")]).await.unwrap();
    caught_up(&log, &h).await;
    h.pause();
    wait_until("paused", || {
        h.status(log.end_seq()).state == ConsumerState::Paused
    })
    .await;
    for i in 0..10 {
        log.append(vec![rec(&format!("p{i}"))]).await.unwrap();
    }
    let s = h.status(log.end_seq());
    assert_eq!((s.position, s.lag_records), (1, 10));
    assert!(s.lag_seconds > 0.0);
    h.resume();
    caught_up(&log, &h).await;
    let s = h.status(log.end_seq());
    assert_eq!((s.lag_records, s.lag_seconds), (0, 0.0));
    assert_eq!(pipeline.statuses().len(), 1);
    assert!(
        pipeline
            .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
            .is_err(),
        "two consumers of one name"
    );
    pipeline.stop();
}

/// A consumer removed while others run stops alone, after committing; a
/// new one may take its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_is_removed_and_commits_while_the_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let log: SharedLog = store.clone();
    let pipeline = Pipeline::new(log.clone(), Some(dir.path().join("consumers")));
    let (h, task) = pipeline
        .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
        .unwrap();
    for i in 0..20 {
        log.append(vec![rec(&format!("r{i}"))]).await.unwrap();
    }
    caught_up(&log, &h).await;
    let removed = pipeline.remove("recorder").expect("it was there");
    task.await.unwrap();
    assert_eq!(removed.status(log.end_seq()).state, ConsumerState::Stopped);
    assert!(pipeline.get("recorder").is_none());
    assert!(pipeline.statuses().is_empty());
    assert_eq!(committed(dir.path()).through, 20, "committed when removed");
    assert!(pipeline.remove("recorder").is_none());
    let (_, task) = pipeline
        .spawn(Recorder::open(dir.path(), FailurePolicy::Skip))
        .expect("the name is free again");
    pipeline.stop();
    task.await.unwrap();
}
