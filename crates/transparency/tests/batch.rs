//! The server's batch verifier state machine, scenario by scenario.

use tally_transparency::Hash;
use tally_transparency::batch::{
    BatchError, BatchSigner, ChainState, KeyEvent, RawBatchHeaders, SignedBatch, SigningKey,
    Verdict, VerifyingKey, check_batch,
};

const COLLECTION: &str = "tailtraffic";

fn instance() -> String {
    Hash::sha256(b"private id").to_hex()
}

fn signer(seed: u8) -> BatchSigner {
    BatchSigner::new(SigningKey::from_bytes(&[seed; 32]), &instance(), COLLECTION).unwrap()
}

/// The server's persistent state for one instance and collection.
struct Server {
    state: ChainState,
    key: Option<VerifyingKey>,
}

impl Server {
    fn new() -> Self {
        Server {
            state: ChainState::GENESIS,
            key: None,
        }
    }

    fn receive(&mut self, batch: &SignedBatch, body: &[u8]) -> (Verdict, KeyEvent) {
        let headers = batch.headers();
        self.receive_raw(&headers, body)
    }

    fn receive_raw(
        &mut self,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> (Verdict, KeyEvent) {
        let raw = RawBatchHeaders::from_lookup(|name| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        });
        let check = check_batch(
            &self.state,
            self.key.as_ref(),
            &instance(),
            COLLECTION,
            &raw,
            body,
        );
        self.state = check.state;
        if let Some(k) = check.key_to_register() {
            self.key = Some(k);
        }
        (check.verdict, check.key)
    }
}

/// An agent: signs bodies in sequence.
struct Agent {
    signer: BatchSigner,
    state: ChainState,
}

impl Agent {
    fn new(seed: u8) -> Self {
        Agent {
            signer: signer(seed),
            state: ChainState::GENESIS,
        }
    }

    fn next(&mut self, body: &[u8]) -> SignedBatch {
        let b = self.signer.sign(&self.state, body).unwrap();
        self.state = b.next_state();
        b
    }
}

#[test]
fn in_order_batches_are_ok_and_first_key_is_trusted() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    let b1 = agent.next(b"[1]");
    let (v, k) = server.receive(&b1, b"[1]");
    assert_eq!(v, Verdict::Ok);
    assert_eq!(k, KeyEvent::FirstUse(agent.signer.public_key()));
    for i in 2..10u8 {
        let body = [i];
        let b = agent.next(&body);
        assert_eq!(server.receive(&b, &body), (Verdict::Ok, KeyEvent::None));
    }
    assert_eq!(server.state, agent.state);
    assert!(!Verdict::Ok.is_suspicious());
}

#[test]
fn lost_batches_are_a_gap_and_the_chain_resumes() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    let b1 = agent.next(b"1");
    server.receive(&b1, b"1");
    agent.next(b"2");
    agent.next(b"3");
    let b4 = agent.next(b"4");
    let (v, _) = server.receive(&b4, b"4");
    assert_eq!(v, Verdict::Gap { from: 2, to: 3 });
    assert!(v.is_suspicious());
    let b5 = agent.next(b"5");
    assert_eq!(server.receive(&b5, b"5").0, Verdict::Ok);
}

#[test]
fn first_contact_in_the_middle_of_a_chain_is_a_gap() {
    let mut agent = Agent::new(1);
    for i in 0..5u8 {
        agent.next(&[i]);
    }
    let b6 = agent.next(b"6");
    let mut server = Server::new();
    let (v, k) = server.receive(&b6, b"6");
    assert_eq!(v, Verdict::Gap { from: 1, to: 5 });
    assert!(matches!(k, KeyEvent::FirstUse(_)));
}

#[test]
fn altered_body_or_headers_are_bad_signatures_and_change_nothing() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    let b1 = agent.next(b"1");
    server.receive(&b1, b"1");
    let before = server.state;
    let b2 = agent.next(br#"{"txBytes":100}"#);
    // Edited body.
    assert_eq!(
        server.receive(&b2, br#"{"txBytes":1}"#).0,
        Verdict::BadSignature
    );
    assert_eq!(server.state, before);
    // Edited sequence number.
    let mut h = b2.headers();
    h[0].1 = "3".into();
    assert_eq!(
        server.receive_raw(&h, br#"{"txBytes":100}"#).0,
        Verdict::BadSignature
    );
    // Edited prev.
    let mut h = b2.headers();
    h[1].1 = Hash::sha256(b"other").to_hex();
    assert_eq!(
        server.receive_raw(&h, br#"{"txBytes":100}"#).0,
        Verdict::BadSignature
    );
    assert_eq!(server.state, before);
    // The genuine batch still goes through.
    assert_eq!(server.receive(&b2, br#"{"txBytes":100}"#).0, Verdict::Ok);
}

#[test]
fn forged_batch_with_another_key_is_rejected_and_flagged() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    server.receive(&agent.next(b"1"), b"1");
    let mut forger = Agent::new(2);
    forger.state = agent.state;
    let forged = forger.next(b"forged");
    let (v, k) = server.receive(&forged, b"forged");
    assert_eq!(v, Verdict::BadSignature);
    assert_eq!(
        k,
        KeyEvent::Unendorsed {
            registered: agent.signer.public_key(),
            presented: forger.signer.public_key()
        }
    );
    assert_eq!(server.key, Some(agent.signer.public_key()));
    // A forged signature under the registered key header.
    let b2 = agent.next(b"2");
    let mut h = b2.headers();
    h[3].1 = forged.headers()[3].1.clone();
    assert_eq!(server.receive_raw(&h, b"2").0, Verdict::BadSignature);
}

#[test]
fn bad_signature_on_first_contact_registers_nothing() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    let b1 = agent.next(b"1");
    let (v, k) = server.receive(&b1, b"not the body");
    assert_eq!(v, Verdict::BadSignature);
    assert_eq!(k, KeyEvent::None);
    assert_eq!(server.key, None);
    assert_eq!(server.state, ChainState::GENESIS);
}

#[test]
fn broken_chain() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    server.receive(&agent.next(b"1"), b"1");
    server.receive(&agent.next(b"2"), b"2");
    // The agent's view of history diverges (e.g. state lost, or a batch the
    // server has was substituted): seq 3 chained to something else.
    agent.state.last_hash = Hash::sha256(b"a different batch 2");
    let expected_prev = server.state.last_hash;
    let b3 = agent.next(b"3");
    let (v, _) = server.receive(&b3, b"3");
    assert_eq!(
        v,
        Verdict::BrokenChain {
            expected_prev,
            claimed_prev: Hash::sha256(b"a different batch 2")
        }
    );
    assert!(v.is_suspicious());
    // The chain continues from the batch the node sent.
    assert_eq!(server.receive(&agent.next(b"4"), b"4").0, Verdict::Ok);
}

#[test]
fn retries_and_replays() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    let b1 = agent.next(b"1");
    server.receive(&b1, b"1");
    let b2 = agent.next(b"2");
    server.receive(&b2, b"2");
    let after = server.state;
    // The answer to b2 was lost; the agent resends it byte for byte.
    assert_eq!(server.receive(&b2, b"2").0, Verdict::Duplicate);
    assert!(!Verdict::Duplicate.is_suspicious());
    // An older batch sent again.
    assert_eq!(
        server.receive(&b1, b"1").0,
        Verdict::Replay {
            seq: 1,
            expected: 3
        }
    );
    assert_eq!(server.state, after);
    // A different batch 2, validly signed (the node signed two histories).
    let mut fork = Agent::new(1);
    fork.state = b1.next_state();
    let other2 = fork.next(b"other 2");
    assert_eq!(
        server.receive(&other2, b"other 2").0,
        Verdict::Replay {
            seq: 2,
            expected: 3
        }
    );
    assert_eq!(server.state, after);
}

#[test]
fn endorsed_rotation_and_unendorsed_key_change() {
    let mut agent = Agent::new(1);
    let mut server = Server::new();
    server.receive(&agent.next(b"1"), b"1");
    let old = agent.signer.public_key();

    // Rotate: sign with the new key, endorsed by the old one.
    let new_signer = signer(3);
    let endorsement = agent.signer.endorse(&new_signer.public_key());
    let mut rotated = Agent {
        signer: new_signer,
        state: agent.state,
    };
    let mut b2 = rotated.next(b"2");
    b2.endorsement = Some(endorsement);
    assert_eq!(
        b2.headers().last().map(|(n, _)| *n),
        Some("Tally-Batch-Key-Endorsement")
    );
    let (v, k) = server.receive(&b2, b"2");
    assert_eq!(v, Verdict::Ok);
    assert_eq!(
        k,
        KeyEvent::Rotated {
            old,
            new: rotated.signer.public_key()
        }
    );
    assert_eq!(server.key, Some(rotated.signer.public_key()));
    // The old key no longer works.
    agent.state = rotated.state;
    assert_eq!(
        server.receive(&agent.next(b"3"), b"3").0,
        Verdict::BadSignature
    );

    // An endorsement by a key that is not the registered one is worthless.
    let mut impostor = Agent::new(4);
    impostor.state = rotated.state;
    let mut b = impostor.next(b"x");
    b.endorsement = Some(signer(5).endorse(&impostor.signer.public_key()));
    let (v, k) = server.receive(&b, b"x");
    assert_eq!(v, Verdict::BadSignature);
    assert!(matches!(k, KeyEvent::Unendorsed { .. }));
    // So is an endorsement of another key, or for another instance.
    let mut b = impostor.next(b"y");
    b.endorsement = Some(rotated.signer.endorse(&signer(6).public_key()));
    assert!(matches!(
        server.receive(&b, b"y").1,
        KeyEvent::Unendorsed { .. }
    ));
    let other_instance = BatchSigner::new(
        SigningKey::from_bytes(&[3; 32]),
        &Hash::sha256(b"other").to_hex(),
        COLLECTION,
    )
    .unwrap();
    let mut b = impostor.next(b"z");
    b.endorsement = Some(other_instance.endorse(&impostor.signer.public_key()));
    assert!(matches!(
        server.receive(&b, b"z").1,
        KeyEvent::Unendorsed { .. }
    ));
    // Endorsement header that is garbage: malformed.
    let mut h = impostor.next(b"w").headers();
    h.push(("Tally-Batch-Key-Endorsement", "!!".into()));
    assert_eq!(
        server.receive_raw(&h, b"w").0,
        Verdict::Malformed(BatchError::BadEndorsementEncoding)
    );
}

#[test]
fn batches_are_bound_to_instance_and_collection() {
    let mut agent = Agent::new(1);
    let b1 = agent.next(b"1");
    let raw_headers = b1.headers();
    let raw = RawBatchHeaders::from_lookup(|name| {
        raw_headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    });
    let other = Hash::sha256(b"other instance").to_hex();
    let c = check_batch(&ChainState::GENESIS, None, &other, COLLECTION, &raw, b"1");
    assert_eq!(c.verdict, Verdict::BadSignature);
    let c = check_batch(
        &ChainState::GENESIS,
        None,
        &instance(),
        "other-collection",
        &raw,
        b"1",
    );
    assert_eq!(c.verdict, Verdict::BadSignature);
    let c = check_batch(
        &ChainState::GENESIS,
        None,
        "not-hex",
        COLLECTION,
        &raw,
        b"1",
    );
    assert_eq!(c.verdict, Verdict::Malformed(BatchError::BadInstance));
    let c = check_batch(&ChainState::GENESIS, None, &instance(), "a/b", &raw, b"1");
    assert_eq!(c.verdict, Verdict::Malformed(BatchError::BadCollection));
}

#[test]
fn unsigned_and_malformed_uploads() {
    let mut server = Server::new();
    assert_eq!(
        server.receive_raw(&[], b"[]").0,
        Verdict::Unsigned {
            key_registered: false
        }
    );
    assert!(
        !Verdict::Unsigned {
            key_registered: false
        }
        .is_suspicious()
    );
    let mut agent = Agent::new(1);
    let b1 = agent.next(b"1");
    server.receive(&b1, b"1");
    let v = server.receive_raw(&[], b"[]").0;
    assert_eq!(
        v,
        Verdict::Unsigned {
            key_registered: true
        }
    );
    assert!(v.is_suspicious());

    let b2 = agent.next(b"2");
    let good = b2.headers();
    let (a64, a88) = ("A".repeat(64), "A".repeat(88));
    let cases: Vec<(usize, &str, BatchError)> = vec![
        (0, "0", BatchError::BadSeq),
        (0, "02", BatchError::BadSeq),
        (0, "-2", BatchError::BadSeq),
        (0, " 2", BatchError::BadSeq),
        (0, "18446744073709551615", BatchError::BadSeq),
        (0, "99999999999999999999999", BatchError::BadSeq),
        (1, "zz", BatchError::BadPrev),
        (1, &a64, BatchError::BadPrev),
        (2, "AAAA", BatchError::BadKey),
        (2, "", BatchError::BadKey),
        (3, "AAAA", BatchError::BadSignatureEncoding),
        (3, &a88, BatchError::BadSignatureEncoding),
    ];
    for (i, value, err) in cases {
        let mut h = good.clone();
        h[i].1 = value.to_owned();
        assert_eq!(
            server.receive_raw(&h, b"2").0,
            Verdict::Malformed(err),
            "{i} {value:?}"
        );
    }
    for (i, name) in [
        "Tally-Batch-Seq",
        "Tally-Batch-Prev",
        "Tally-Batch-Key",
        "Tally-Batch-Signature",
    ]
    .iter()
    .enumerate()
    {
        let mut h = good.clone();
        h.remove(i);
        assert_eq!(
            server.receive_raw(&h, b"2").0,
            Verdict::Malformed(BatchError::MissingHeader(name))
        );
    }
    // Nothing above moved the chain.
    assert_eq!(server.receive(&b2, b"2").0, Verdict::Ok);
}

#[test]
fn exhausted_state_cannot_sign() {
    let s = signer(1);
    assert_eq!(
        s.sign(
            &ChainState {
                next_seq: 0,
                last_hash: Hash::ZERO
            },
            b""
        )
        .unwrap_err(),
        BatchError::SeqExhausted
    );
    assert_eq!(
        s.sign(
            &ChainState {
                next_seq: u64::MAX,
                last_hash: Hash::ZERO
            },
            b""
        )
        .unwrap_err(),
        BatchError::SeqExhausted
    );
    let last = s
        .sign(
            &ChainState {
                next_seq: u64::MAX - 1,
                last_hash: Hash::ZERO,
            },
            b"",
        )
        .unwrap();
    assert_eq!(last.next_state().next_seq, u64::MAX);
    assert!(BatchSigner::new(SigningKey::from_bytes(&[1; 32]), "x", COLLECTION).is_err());
    assert!(BatchSigner::new(SigningKey::from_bytes(&[1; 32]), &instance(), "").is_err());
}
