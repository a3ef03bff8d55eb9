//! Property tests: random trees (every proof verifies, tampering fails,
//! proofs equal the RFC 6962 definitions, on-disk equals in-memory), and
//! garbage for every parser.

use proptest::prelude::*;
use tally_transparency::Hash;
use tally_transparency::batch::{
    BatchHeaders, BatchSigner, ChainState, RawBatchHeaders, SigningKey, Verdict, check_batch,
};
use tally_transparency::checkpoint::{Checkpoint, SignedCheckpoint};
use tally_transparency::merkle::{
    FileTree, MemoryTree, hash_children, hash_leaf, root_from_leaves, verify_consistency,
    verify_inclusion,
};
use tally_transparency::note::{Note, Signer, Verifier, sign_note};

// ---------------------------------------------------------------------------
// Reference implementations straight from RFC 6962 section 2.1.

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => Hash::sha256(b""),
        1 => d[0],
        n => {
            let k = split(n);
            hash_children(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n == 1 {
        return vec![];
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn leaves(seed: u64, n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| hash_leaf(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails(seed: u64, n in 1usize..200, bit in 0usize..256) {
        let d = leaves(seed, n);
        let mut tree = MemoryTree::new();
        tree.extend(&d).unwrap();
        let size = n as u64;
        let root = tree.root();
        prop_assert_eq!(root, mth(&d));
        prop_assert_eq!(root_from_leaves(&d), root);
        for i in 0..n {
            let proof = tree.inclusion_proof(i as u64, size).unwrap();
            prop_assert_eq!(&proof, &path(i, &d));
            prop_assert!(verify_inclusion(&d[i], i as u64, size, &proof, &root).is_ok());
            // Tampered leaf.
            let mut leaf = d[i];
            leaf.0[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(&leaf, i as u64, size, &proof, &root).is_err());
            // Another leaf at this index.
            if n > 1 {
                let other = d[(i + 1) % n];
                prop_assert!(verify_inclusion(&other, i as u64, size, &proof, &root).is_err());
            }
            // Tampered proof.
            if !proof.is_empty() {
                let mut p = proof.clone();
                let j = bit % p.len();
                p[j].0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(verify_inclusion(&d[i], i as u64, size, &p, &root).is_err());
                prop_assert!(verify_inclusion(&d[i], i as u64, size, &proof[1..], &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(&d[i], i as u64, size, &longer, &root).is_err());
            // Wrong index.
            let wrong = (i as u64 + 1 + bit as u64) % size;
            if wrong != i as u64 {
                prop_assert!(verify_inclusion(&d[i], wrong, size, &proof, &root).is_err());
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails(seed: u64, n in 1usize..70, bit in 0usize..256) {
        let d = leaves(seed, n);
        let mut tree = MemoryTree::new();
        tree.extend(&d).unwrap();
        let roots: Vec<Hash> = (0..=n).map(|s| mth(&d[..s])).collect();
        for new in 1..=n {
            prop_assert_eq!(tree.root_at(new as u64).unwrap(), roots[new]);
            for old in 1..=new {
                let proof = tree.consistency_proof(old as u64, new as u64).unwrap();
                prop_assert_eq!(&proof, &subproof(old, &d[..new], true));
                let (a, b) = (old as u64, new as u64);
                prop_assert!(verify_consistency(a, b, &roots[old], &roots[new], &proof).is_ok());
                if old == new {
                    continue;
                }
                // Another old root (a tree that was rewritten) fails.
                let mut forged_old = roots[old];
                forged_old.0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(a, b, &forged_old, &roots[new], &proof).is_err());
                let mut forged_new = roots[new];
                forged_new.0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(a, b, &roots[old], &forged_new, &proof).is_err());
                let mut p = proof.clone();
                let j = bit % p.len();
                p[j].0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(a, b, &roots[old], &roots[new], &p).is_err());
                prop_assert!(verify_consistency(a, b, &roots[old], &roots[new], &proof[1..]).is_err());
                let mut longer = proof.clone();
                longer.push(roots[new]);
                prop_assert!(verify_consistency(a, b, &roots[old], &roots[new], &longer).is_err());
            }
        }
    }

    #[test]
    fn edited_history_is_not_consistent(seed: u64, n in 2usize..100, at in 0usize..100, old in 1usize..100) {
        // The server rewrites leaf `at` after publishing a checkpoint of `old`
        // leaves: no consistency proof from the honest old root exists.
        let d = leaves(seed, n);
        let old = old % n + 1;
        let at = at % old;
        let mut edited = d.clone();
        edited[at] = hash_leaf(b"edited");
        let mut tree = MemoryTree::new();
        tree.extend(&edited).unwrap();
        let honest_old_root = mth(&d[..old]);
        let proof = tree.consistency_proof(old as u64, n as u64).unwrap();
        prop_assert!(verify_consistency(old as u64, n as u64, &honest_old_root, &tree.root(), &proof).is_err());
    }

    #[test]
    fn file_tree_matches_memory_tree(seed: u64, chunks in proptest::collection::vec(1usize..300, 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemoryTree::new();
        let total: usize = chunks.iter().sum();
        let d = leaves(seed, total);
        let mut done = 0;
        for (i, c) in chunks.iter().enumerate() {
            let mut file = FileTree::open_dir(dir.path()).unwrap();
            prop_assert_eq!(file.size(), done as u64);
            file.extend(&d[done..done + c]).unwrap();
            mem.extend(&d[done..done + c]).unwrap();
            done += c;
            if i % 2 == 0 {
                file.sync().unwrap();
            }
            prop_assert_eq!(file.root(), mem.root());
            let size = done as u64;
            for probe in [0, size / 2, size - 1] {
                prop_assert_eq!(file.inclusion_proof(probe, size).unwrap(), mem.inclusion_proof(probe, size).unwrap());
                prop_assert_eq!(file.root_at(probe + 1).unwrap(), mem.root_at(probe + 1).unwrap());
                prop_assert_eq!(
                    file.consistency_proof(probe + 1, size).unwrap(),
                    mem.consistency_proof(probe + 1, size).unwrap()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Garbage for every parser: never panics, never accepts what it should not.

fn note_fixture() -> (Signer, String) {
    let s = Signer::from_seed("tally.test/log", &[9; 32]).unwrap();
    let cp = Checkpoint::new("tally.test/log", 42, Hash::sha256(b"root"));
    let note = cp.sign(&[&s]).unwrap();
    (s, note)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn note_parsers_survive_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (s, _) = note_fixture();
        let _ = Note::parse(&bytes);
        prop_assert!(Note::open(&bytes, &[s.verifier()]).is_err());
        let _ = SignedCheckpoint::open(&bytes, "tally.test/log", &[s.verifier()]);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = Checkpoint::parse(text);
            let _ = Verifier::from_vkey(text);
            let _ = Signer::from_skey(text);
            let _ = Hash::from_hex(text);
            let _ = Hash::from_base64(text);
            let _ = ChainState::from_text(text);
            let _ = sign_note(text, &[&s]);
        }
    }

    #[test]
    fn text_parsers_survive_garbage_strings(text in "\\PC*") {
        // Whatever parses formats back to the same text.
        if let Ok(c) = Checkpoint::parse(&text) {
            prop_assert_eq!(c.to_text().unwrap(), text.clone());
        }
        if let Ok(v) = Verifier::from_vkey(&text) {
            prop_assert_eq!(v.to_vkey(), text.clone());
        }
        if let Ok(s) = Signer::from_skey(&text) {
            prop_assert_eq!(s.to_skey(), text.clone());
        }
        let _ = ChainState::from_text(&text);
        let _ = Note::parse(text.as_bytes());
    }

    #[test]
    fn structured_garbage(origin in "[a-z./+ —\n]{0,12}", size in "[0-9a-f+-]{0,22}", root in "[A-Za-z0-9+/=]{0,46}", ext in "[a-z\n]{0,6}") {
        let text = format!("{origin}\n{size}\n{root}\n{ext}");
        if let Ok(c) = Checkpoint::parse(&text) {
            // Whatever parses formats back to the same text.
            prop_assert_eq!(c.to_text().unwrap(), text);
        }
        let vkey = format!("{origin}+{size}+{root}");
        let _ = Verifier::from_vkey(&vkey);
        let _ = Signer::from_skey(&format!("PRIVATE+KEY+{vkey}"));
    }

    #[test]
    fn mutated_signed_checkpoints_fail(pos in 0usize..400, byte: u8) {
        let (s, note) = note_fixture();
        let mut m = note.clone().into_bytes();
        let pos = pos % m.len();
        if m[pos] == byte {
            return Ok(());
        }
        m[pos] = byte;
        // Any change of the signed bytes or the signature is rejected; the
        // only harmless edits would be outside both, and there are none.
        prop_assert!(SignedCheckpoint::open(&m, "tally.test/log", &[s.verifier()]).is_err());
    }

    #[test]
    fn batch_checker_survives_garbage(
        seq in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
        prev in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..70)),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
        sig in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..90)),
        end in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..90)),
        body in proptest::collection::vec(any::<u8>(), 0..40),
        next_seq: u64,
    ) {
        let raw = RawBatchHeaders {
            seq: seq.as_deref(),
            prev: prev.as_deref(),
            key: key.as_deref(),
            signature: sig.as_deref(),
            endorsement: end.as_deref(),
        };
        let _ = BatchHeaders::parse(&raw);
        let state = ChainState { next_seq, last_hash: Hash::sha256(&body) };
        let instance = Hash::sha256(b"i").to_hex();
        let registered = SigningKey::from_bytes(&[1; 32]).verifying_key();
        for reg in [None, Some(&registered)] {
            let c = check_batch(&state, reg, &instance, "c", &raw, &body);
            let accepted = matches!(
                c.verdict,
                Verdict::Ok | Verdict::Gap { .. } | Verdict::BrokenChain { .. } | Verdict::Duplicate | Verdict::Replay { .. }
            );
            prop_assert!(!accepted, "{:?}", c.verdict);
            prop_assert_eq!(c.state, state);
            prop_assert_eq!(c.key_to_register(), None);
        }
    }

    #[test]
    fn mutated_batch_headers_never_pass(field in 0usize..4, pos: usize, byte: u8, body_flip in proptest::option::of(0usize..16)) {
        let instance = Hash::sha256(b"i").to_hex();
        let signer = BatchSigner::new(SigningKey::from_bytes(&[1; 32]), &instance, "c").unwrap();
        let state = ChainState { next_seq: 5, last_hash: Hash::sha256(b"prev") };
        let mut body = b"[{\"a\":1},{\"b\":2}]".to_vec();
        let b = signer.sign(&state, &body).unwrap();
        let mut headers: Vec<Vec<u8>> = b.headers().into_iter().map(|(_, v)| v.into_bytes()).collect();
        let h = &mut headers[field];
        let p = pos % h.len();
        let changed_header = h[p] != byte;
        h[p] = byte;
        if let Some(i) = body_flip {
            body[i] ^= 0x20;
        }
        if !changed_header && body_flip.is_none() {
            return Ok(());
        }
        let raw = RawBatchHeaders {
            seq: Some(&headers[0]),
            prev: Some(&headers[1]),
            key: Some(&headers[2]),
            signature: Some(&headers[3]),
            endorsement: None,
        };
        let key = signer.public_key();
        let c = check_batch(&state, Some(&key), &instance, "c", &raw, &body);
        // Base64 has a few spellings per value only through padding bits,
        // which the strict decoder rejects, so every change is caught.
        let rejected = matches!(c.verdict, Verdict::BadSignature | Verdict::Malformed(_));
        prop_assert!(rejected, "{:?}", c.verdict);
        prop_assert_eq!(c.state, state);
    }
}
