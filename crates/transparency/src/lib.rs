//! Tally's tamper evidence: everything cryptographic that the agent, the
//! server and `tally verify` share. Pure library, no network I/O (the only
//! I/O is [`merkle::FileStorage`], the server's on-disk tree).
//!
//! * [`merkle`]: RFC 6962 Merkle trees: hashing, an append-only tree on disk
//!   or in memory giving roots, inclusion and consistency proofs for any
//!   size, and their verification.
//! * [`note`]: C2SP signed notes with Ed25519 keys (verifier and signer key
//!   text forms, sign, parse, verify).
//! * [`checkpoint`]: C2SP tlog checkpoints (signed tree heads).
//! * [`batch`]: the agent's signed, hash-chained upload batches and the
//!   server's verifier state machine.
//!
//! Two protocols are defined here. Implement against this text; the tests
//! in `tests/` pin them byte for byte.
//!
//! # Upload batch signatures
//!
//! Every upload of the logs service (`POST /c/<collection>/<private-id>`)
//! by a Tally agent is one *batch* of a *chain*. A chain is identified by
//! (instance public ID, collection): each collection an instance uploads to
//! has its own chain, sequence numbers and state.
//!
//! ## Node key
//!
//! The node holds an Ed25519 key (a 32-byte RFC 8032 seed, in a 0600 file
//! next to its private ID). The server learns the public key from the
//! `Tally-Batch-Key` header of the first signed batch it accepts for the
//! instance (trust on first use) and audits that registration. To rotate,
//! the node signs with the new key and adds `Tally-Batch-Key-Endorsement`,
//! the old key's signature of the key endorsement statement, until the
//! server has accepted a batch; the server then replaces the key and audits
//! the rotation. A different key without a valid endorsement is not
//! accepted: the batch is flagged [`batch::Verdict::BadSignature`] with
//! [`batch::KeyEvent::Unendorsed`], the registered key stays, and only an
//! operator (audited) can re-register a node that lost its key.
//!
//! ## Signed statement
//!
//! The signature covers exactly these bytes (ASCII, each line ending in a
//! single `\n`, no trailing data):
//!
//! ```text
//! tally-batch-v1\n
//! <instance public ID: 64 lowercase hex digits>\n
//! <collection: [a-zA-Z0-9-_.]+>\n
//! <seq: decimal, 1 to 2^64-2, no sign, no leading zeros>\n
//! <prev: hash of the previous batch of the chain, 64 lowercase hex; 64 "0"s for seq 1>\n
//! <body: SHA-256 of the request body, 64 lowercase hex>\n
//! ```
//!
//! The body hashed is the request body *after* removing any
//! `Content-Encoding` (the JSON the server parses), so compressing or not
//! does not change the signature. The signature is Ed25519 (RFC 8032) over
//! these bytes with the node key; servers verify it strictly
//! (`verify_strict`: canonical `S`, no small-order keys).
//!
//! The **hash of a batch** (its chain hash, the next batch's `prev`) is
//! `SHA-256(statement)`, the signature excluded.
//!
//! Example: instance `aa…aa` (64 `a`), collection `tailtraffic`, seq 1,
//! body `[]` signs
//! `"tally-batch-v1\naaaa…aaaa\ntailtraffic\n1\n0000…0000\n4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945\n"`.
//!
//! ## Key endorsement statement
//!
//! ```text
//! tally-batch-key-v1\n
//! <instance public ID: 64 lowercase hex digits>\n
//! <new public key: standard padded base64 of its 32 bytes>\n
//! ```
//!
//! signed with the *old* key.
//!
//! ## HTTP headers
//!
//! | header | value |
//! |---|---|
//! | `Tally-Batch-Seq` | the seq, decimal as in the statement |
//! | `Tally-Batch-Prev` | the prev hash, 64 lowercase hex |
//! | `Tally-Batch-Key` | the signing public key, standard padded base64 (44 characters) |
//! | `Tally-Batch-Signature` | the 64-byte signature, standard padded base64 (88 characters) |
//! | `Tally-Batch-Key-Endorsement` | only during a rotation: the old key's 64-byte signature of the endorsement statement, base64 (88 characters) |
//!
//! Values carry no surrounding white space. A request with none of the
//! first four headers is an unsigned upload (stock Tailscale clients);
//! with some but not all, or any unparsable value, it is malformed.
//!
//! ## Agent duties
//!
//! * Keep the chain state ([`batch::ChainState`]: next seq, last hash) per
//!   collection in the data directory, starting at seq 1, prev zero.
//! * A signed batch is immutable: persist the batch (body and headers) and
//!   the advanced state *before* the first send, and resend exactly those
//!   bytes until the server answers 200 or 400. Never re-batch signed
//!   entries under a new seq (that shows as a broken chain or a gap).
//!
//! ## Server duties ([`batch::check_batch`])
//!
//! Per instance the server stores the registered key; per chain the
//! [`batch::ChainState`] (initially seq 1, prev zero). For each upload it
//! runs [`batch::check_batch`] and, atomically with the entries: stores the
//! entries of *every* batch (never silently drops), stores the returned
//! state and key, and records a finding for
//! [`batch::Verdict::is_suspicious`] verdicts (bad signature, broken chain,
//! gap with its range, replay, malformed, unsigned upload from an instance
//! that has a key). The verdicts: `Ok`; `Gap{from,to}` (batches missing,
//! chain resumes); `BrokenChain` (prev differs, chain resumes); `BadSignature`
//! (state unchanged); `Replay` (seq behind, state unchanged); `Duplicate`
//! (exact retry of the last batch, not suspicious); `Unsigned`; `Malformed`.
//! Keeping the batch facts ([`batch::BatchInfo`], signature and key) with
//! the entries lets `tally verify` re-check signatures and chains later.
//!
//! # Checkpoints
//!
//! The server keeps one RFC 6962 Merkle tree per stream ([`merkle::FileTree`])
//! and publishes signed checkpoints in the C2SP formats, byte for byte:
//!
//! ```text
//! <origin>\n
//! <tree size, decimal, no leading zeros ("0" for the empty tree)>\n
//! <root hash: standard padded base64 of the 32-byte RFC 6962 root>\n
//! \n
//! — <key name> <base64(4-byte big-endian key ID || 64-byte Ed25519 signature)>\n
//! ```
//!
//! (`—` is U+2014; optional extension lines may follow the root hash line;
//! more signature lines may follow, e.g. witnesses.) The signature is over
//! the first three lines including their newlines. The log key's name is the
//! origin and its key ID is `SHA-256(name || 0x0A || 0x01 || public key)[:4]`;
//! verifiers configure it as the vkey `<origin>+<key ID hex>+<base64(0x01 ||
//! public key)>`. Leaf hashes are `SHA-256(0x00 || leaf data)`, interior
//! nodes `SHA-256(0x01 || left || right)`.

pub mod batch;
pub mod checkpoint;
mod hash;
pub mod merkle;
pub mod note;

pub use hash::{Hash, HashParseError};
