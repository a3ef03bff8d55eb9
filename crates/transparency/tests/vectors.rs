//! Published test vectors: RFC 6962 trees from the Certificate Transparency
//! test data (as kept by transparency-dev/merkle), a real proof from Google's
//! Argon 2020 CT log (as kept by golang.org/x/mod/sumdb/tlog), the
//! golang.org/x/mod/sumdb/note keys and signatures, the C2SP spec examples,
//! RFC 8032, and Tally's own pinned batch vector.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tally_transparency::Hash;
use tally_transparency::batch::{
    BatchSigner, ChainState, RawBatchHeaders, SigningKey, Verdict, batch_statement, check_batch,
};
use tally_transparency::checkpoint::Checkpoint;
use tally_transparency::merkle::{
    MemoryTree, ProofError, empty_root, hash_leaf, root_from_inclusion_proof, verify_consistency,
    verify_inclusion,
};
use tally_transparency::note::{
    KeyError, Note, NoteError, Signer, Verifier, ed25519_key_id, sign_note,
};

fn h(hex: &str) -> Hash {
    Hash::from_hex(hex).unwrap()
}

fn b64(s: &str) -> Hash {
    Hash::from_base64(s).unwrap()
}

// ---------------------------------------------------------------------------
// RFC 6962: the 8-leaf tree of the Certificate Transparency test data.

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, proof), 0-based index.
fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (0, 1, vec![]),
        (
            0,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            5,
            8,
            vec![
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            3,
            vec![h(
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            )],
        ),
        (
            1,
            5,
            vec![
                h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
    ]
}

/// (old size, new size, proof).
fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            6,
            8,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            5,
            vec![
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
        (
            6,
            7,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
    ]
}

fn ct_tree() -> (MemoryTree, Vec<Hash>) {
    let mut tree = MemoryTree::new();
    let leaves: Vec<Hash> = LEAVES
        .iter()
        .map(|l| hash_leaf(&hex::decode(l).unwrap()))
        .collect();
    tree.extend(&leaves).unwrap();
    (tree, leaves)
}

#[test]
fn rfc6962_roots() {
    let (tree, leaves) = ct_tree();
    for (i, want) in ROOTS.iter().enumerate() {
        assert_eq!(
            tree.root_at(i as u64 + 1).unwrap(),
            h(want),
            "size {}",
            i + 1
        );
    }
    assert_eq!(tree.root(), h(ROOTS[7]));
    assert_eq!(tree.root_at(0).unwrap(), empty_root());
    // The root of a one-leaf tree is the leaf hash of the empty input.
    assert_eq!(leaves[0], h(ROOTS[0]));
}

fn flip(proof: &[Hash], i: usize, bit: u8) -> Vec<Hash> {
    let mut p = proof.to_vec();
    p[i].0[0] ^= bit;
    p
}

#[test]
fn rfc6962_inclusion_proofs() {
    let (tree, leaves) = ct_tree();
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (index, size, proof) in inclusion_vectors() {
        let root = h(ROOTS[size as usize - 1]);
        let leaf = leaves[index as usize];
        assert_eq!(
            tree.inclusion_proof(index, size).unwrap(),
            proof,
            "generated proof {index}/{size}"
        );
        assert_eq!(
            root_from_inclusion_proof(&leaf, index, size, &proof),
            Ok(root)
        );
        verify_inclusion(&leaf, index, size, &proof, &root).unwrap();

        // The corruptions of the transparency-dev test suite all fail.
        let mut bad: Vec<(u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            (index.wrapping_sub(1), size, leaf, root, proof.clone()),
            (index + 1, size, leaf, root, proof.clone()),
            (index ^ 2, size, leaf, root, proof.clone()),
            (index, size * 2, leaf, root, proof.clone()),
            (index, size / 2, leaf, root, proof.clone()),
            (index, size, hash_leaf(b"WrongLeaf"), root, proof.clone()),
            (index, size, leaf, empty_root(), proof.clone()),
            (index, size, leaf, some, proof.clone()),
            (
                index,
                size,
                leaf,
                root,
                [proof.clone(), vec![Hash::ZERO]].concat(),
            ),
            (
                index,
                size,
                leaf,
                root,
                [proof.clone(), vec![root]].concat(),
            ),
            (
                index,
                size,
                leaf,
                root,
                [vec![Hash::ZERO], proof.clone()].concat(),
            ),
            (
                index,
                size,
                leaf,
                root,
                [vec![root], proof.clone()].concat(),
            ),
        ];
        for i in 0..proof.len() {
            bad.push((index, size, leaf, root, flip(&proof, i, 8)));
        }
        if !proof.is_empty() {
            bad.push((index, size, leaf, root, proof[..proof.len() - 1].to_vec()));
        }
        if proof.len() > 1 {
            bad.push((
                index,
                size,
                leaf,
                root,
                [vec![proof[0], some], proof[1..].to_vec()].concat(),
            ));
        }
        for (n, (i, s, l, r, p)) in bad.iter().enumerate() {
            assert!(
                verify_inclusion(l, *i, *s, p, r).is_err(),
                "probe {n} of {index}/{size} verified"
            );
        }
    }
}

#[test]
fn rfc6962_consistency_proofs() {
    let (tree, _) = ct_tree();
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (old, new, proof) in consistency_vectors() {
        let r1 = h(ROOTS[old as usize - 1]);
        let r2 = h(ROOTS[new as usize - 1]);
        assert_eq!(
            tree.consistency_proof(old, new).unwrap(),
            proof,
            "generated proof {old}->{new}"
        );
        verify_consistency(old, new, &r1, &r2, &proof).unwrap();
        if proof.is_empty() {
            continue;
        }
        let mut bad: Vec<(u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            (old - 1, new, r1, r2, proof.clone()),
            (old + 1, new, r1, r2, proof.clone()),
            (old ^ 2, new, r1, r2, proof.clone()),
            (old, new * 2, r1, r2, proof.clone()),
            (old, new / 2, r1, r2, proof.clone()),
            (old, new, some, r2, proof.clone()),
            (old, new, r1, some, proof.clone()),
            (old, new, r2, r1, proof.clone()),
            (old, new, r1, r2, vec![]),
            (old, new, r1, r2, [proof.clone(), vec![Hash::ZERO]].concat()),
            (old, new, r1, r2, [proof.clone(), vec![r1]].concat()),
            (old, new, r1, r2, [proof.clone(), vec![r2]].concat()),
            (old, new, r1, r2, [vec![Hash::ZERO], proof.clone()].concat()),
            (old, new, r1, r2, [vec![r1], proof.clone()].concat()),
            (old, new, r1, r2, [vec![r2], proof.clone()].concat()),
            (old, new, r1, r2, [vec![proof[0]], proof.clone()].concat()),
            (old, new, r1, r2, proof[..proof.len() - 1].to_vec()),
        ];
        for i in 0..proof.len() {
            bad.push((old, new, r1, r2, flip(&proof, i, 16)));
        }
        for (n, (a, b, x, y, p)) in bad.iter().enumerate() {
            assert!(
                verify_consistency(*a, *b, x, y, p).is_err(),
                "probe {n} of {old}->{new} verified"
            );
        }
    }
}

#[test]
fn consistency_edge_cases() {
    let r1 = Hash::sha256(b"don't care 1");
    let r2 = Hash::sha256(b"don't care 2");
    let e = empty_root();
    assert!(verify_consistency(0, 0, &e, &e, &[]).is_ok());
    assert!(verify_consistency(0, 5, &e, &r2, &[]).is_ok());
    assert_eq!(
        verify_consistency(0, 5, &r1, &r2, &[]),
        Err(ProofError::RootMismatch)
    );
    assert!(verify_consistency(1, 1, &r2, &r2, &[]).is_ok());
    assert!(verify_consistency(1, 1, &r1, &r2, &[]).is_err());
    assert!(verify_consistency(1, 0, &r1, &r2, &[]).is_err());
    assert!(verify_consistency(2, 1, &r1, &r2, &[]).is_err());
    assert!(verify_consistency(1, 2, &r1, &r2, &[]).is_err());
    assert!(verify_consistency(0, 0, &e, &e, &[e]).is_err());
    assert!(verify_consistency(0, 1, &e, &e, &[e]).is_err());
    assert!(verify_consistency(1, 1, &e, &e, &[e]).is_err());
    let leaf = hash_leaf(b"data");
    assert!(verify_inclusion(&leaf, 0, 1, &[], &leaf).is_ok());
    assert!(verify_inclusion(&leaf, 0, 0, &[], &leaf).is_err());
    assert!(verify_inclusion(&leaf, 1, 1, &[], &leaf).is_err());
    assert!(verify_inclusion(&leaf, 0, 1, &[], &e).is_err());
}

// ---------------------------------------------------------------------------
// A real Certificate Transparency proof: Google Argon 2020, entry 10000 in a
// tree of 961,984,013 entries, and consistency from size 3,654,490
// (golang.org/x/mod/sumdb/tlog/testdata/argon2020).

const ARGON_ROOT: &str = "dwlueapdd7LaOEnX2W2Wp9v2XE+KzejHRQGHwEx0oaM=";
const ARGON_SIZE: u64 = 961984013;

const ARGON_LEAF_INPUT: &str = "AAAAAAFelPhqUwAAAAViMIIFXjCCBEagAwIBAgIRAOodHzZdqWIFzYyl/SovhCMwDQYJKoZIhvcNAQELBQAwgZAxCzAJBgNVBAYTAkdCMRswGQYDVQQIExJHcmVhdGVyIE1hbmNoZXN0ZXIxEDAOBgNVBAcTB1NhbGZvcmQxGjAYBgNVBAoTEUNPTU9ETyBDQSBMaW1pdGVkMTYwNAYDVQQDEy1DT01PRE8gUlNBIERvbWFpbiBWYWxpZGF0aW9uIFNlY3VyZSBTZXJ2ZXIgQ0EwHhcNMTcwMjE1MDAwMDAwWhcNMjAwNDE2MjM1OTU5WjBfMSEwHwYDVQQLExhEb21haW4gQ29udHJvbCBWYWxpZGF0ZWQxHTAbBgNVBAsTFFBvc2l0aXZlU1NMIFdpbGRjYXJkMRswGQYDVQQDDBIqLmxhbmRsb3Jkcy5jb20uYXUwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCtPBKKHj4zdrGlCjgTHzb5gx9JCs97DwvBz60f14gDufF2haWbOxyJ0a3opAMsZnOr8HkARVCwxdqG/PTfACcb0QM7FOlzvxGqxataTYiChwvkkif8F9GlJw69HuHgzhusPf1Ytfk3ps1PRC14MkyrS4kwPrk/Le4XdkqRpRw62wG4V6IkbzsNMEOl1H8EgUbfyapdOcVxHjIzvBVy56fBRKG05Fr5wNq3Acak5kYZdNsLhhmlrqAfAjiombW3hb3V5blJdRC0BDdYHv2+zKey6LqJ1FDoXo6IzbzPpC+aifZy47YX+/N1U64Qn5xlDg7mOP8JXfkNJHbU1TJZHif5AgMBAAGjggHhMIIB3TAfBgNVHSMEGDAWgBSQr2o6lFoL2JDqElZz30O0Oija5zAdBgNVHQ4EFgQUNQSLjkoz01I+iuuoC5lgEp0anhcwDgYDVR0PAQH/BAQDAgWgMAwGA1UdEwEB/wQCMAAwHQYDVR0lBBYwFAYIKwYBBQUHAwEGCCsGAQUFBwMCME8GA1UdIARIMEYwOgYLKwYBBAGyMQECAgcwKzApBggrBgEFBQcCARYdaHR0cHM6Ly9zZWN1cmUuY29tb2RvLmNvbS9DUFMwCAYGZ4EMAQIBMFQGA1UdHwRNMEswSaBHoEWGQ2h0dHA6Ly9jcmwuY29tb2RvY2EuY29tL0NPTU9ET1JTQURvbWFpblZhbGlkYXRpb25TZWN1cmVTZXJ2ZXJDQS5jcmwwgYUGCCsGAQUFBwEBBHkwdzBPBggrBgEFBQcwAoZDaHR0cDovL2NydC5jb21vZG9jYS5jb20vQ09NT0RPUlNBRG9tYWluVmFsaWRhdGlvblNlY3VyZVNlcnZlckNBLmNydDAkBggrBgEFBQcwAYYYaHR0cDovL29jc3AuY29tb2RvY2EuY29tMC8GA1UdEQQoMCaCEioubGFuZGxvcmRzLmNvbS5hdYIQbGFuZGxvcmRzLmNvbS5hdTANBgkqhkiG9w0BAQsFAAOCAQEACyHqxUzrexToY7tOv4+kyGPP2D27P1tQpyzeAl1bPObiMhNK2b9vvBLDWAaqm8c0YL1h+DBdLoWzf3xFsIkTCVCjWJTNSNlcYtgRk6or1s7jWsfXzWqsnPjPPmTIOCw7EfH7Yme3oxPs3UUsmShAgPwNohAtL9GqlqMiKM6v1WU3NHt01jEoNP23LRa6KeNK6AH6WHJykzL223IlhgXjHTeuQj6lR+TNrQXJuhwTXYe+20rrpPQxc1Pn7AqnvfWgmicRQ7gdIcr4V6+ecTvLfNOaJ0ZYe5G5giuAAdTm7F57pk04f4gyZNYKrj88mvbkoriN8b6jcWExtrYO6bm2TwAA";

const ARGON_AUDIT_PATH: [&str; 30] = [
    "T46AmJsuOM/gFiGlUp+IJJebp+1Z5qratFNW7U0JyOQ=",
    "9Jj1Feodn42uRYEfffkV4HF/EIPFQ5Zo9IwkxbQ2uhk=",
    "D53/1oCNebF4J59HHgioovKZxrmrKcVuCVhy3Izg8Ck=",
    "wSFDgGSrsXRPA+1c8WHoAFCsWeUv8NDyP/Q/SgsyVyY=",
    "516/RcwsgdwdzHn18v1dJHqBkgFUbNhmCIWOGjsMJaE=",
    "naTFY2ajLFgrgs5XUl+zJYZnnlJksLGsA1VYwpLfqbY=",
    "mKBRJo6qao+0Kdh/rhGkZUbHUAxMhrtrclrTpIbNjIg=",
    "Co4ueOFE7lpifLio94irxxsv1wFMMaK3tPu2ZQkHlro=",
    "yRgy800K6JMYCC05sWfqF2kvCg2riT/pVM+nEa6V5+0=",
    "n2O38XJZC8/Wpbwi9HhgVizlUyeUHVZvYyQB1607MRc=",
    "go3tAjuNfNSCj87y2Rg1xOroDknGN1eaf3cgvzObf7Q=",
    "8D0Mj3/J7ySSnFb0afIHYXv6rlOhECnsebY6XKi1IR8=",
    "6rcez46ZU8M5vPiWVMAUfJfAOV0pPP/mch/lYzZhj/M=",
    "2rtIeXrPvSdUyHc5maIgSAVB2BzaKaupWxSAiVayDE4=",
    "nniW/IMFQPN5xw8UsHFn7CRStYbm1gLu7NNa6kkRqJQ=",
    "mRPPi7sQS22MduIEyvcNzCNFqIt6kLwYPkNKrVtIcu8=",
    "JvTivzESNS9wHI8aph5a7uieVmtS/p9PciMZ5D6GyOo=",
    "UTyQd+Ym0wY4zG+qK806bBORwi1CSVvFQ/KknnqoZj8=",
    "hXODrqN+ff+U6zPqRQ+ZQKs6im1fPcxIerDSfNwflhE=",
    "II6GE+WY/DrpZzfHztLwkR46o37zVkNLCyPYlf68zA0=",
    "d609kWWcNBllbA8Jb/ad4XAVVGnScLRmtP8FYyr+Dck=",
    "rikBsP0G0gioXRpBFED2CzQdSLrGPvRd0bEcbEZw1rI=",
    "GXIElfmnRuWfbA4z7ubV/UwlpSRUbUeec7oL5HDDnh0=",
    "pR0SH/NYP6s9+8azWwaeUXA4Ze/3WCIgMfh5YW6wvcE=",
    "f3GuAKYVrF8RBg3s15jvA/YvV9oAliWtzP/imwPhQVA=",
    "WHn8zDxlVgkV+lSlmzaOdfSBrTHoRr5nT3d76q0KKWE=",
    "f2uV2ZxVgULzLPKuZcowRY3ZY7fRlX59iDBjV1R8kNQ=",
    "NzQVjJsvQwbi7WStMr9oFkh9VbHfK7LB6o7WwAqwNTs=",
    "C0LttBeYHZHgL+032JIcJC3CTBIyza/hsbmJUgJfmDI=",
    "nixU5CWTFVDlF4BGdcU6kA7WSYurEpe9jRWc+F/7sOc=",
];

const ARGON_OLD_SIZE: u64 = 3654490;
const ARGON_OLD_ROOT: &str = "AuIZ5V6sDUj1vn3Y1K85oOaQ7y+FJJKtyRTl1edIKBQ=";

const ARGON_CONSISTENCY: [&str; 30] = [
    "80Sfbj6UQEdVSZCSIgh9NMPj3vCBzcc1A48B2crJSWg=",
    "FZcrgAHUk6nNPviJZq8kEK6jCG1d18pJOFE45ZDc1TQ=",
    "Q67reWXmPBo1UfmwBap4Xi9PMPfFdUSSw3WGlRZdG7k=",
    "eJ7CyhR4PxzBxDIsWgrVYW1eFUb9ndgf46tFmiqVrxA=",
    "QrDwp062Grm5WY8KdrhFsBuuNjGzRox2Jb8PmVL5OYw=",
    "XM4YMjMEdLH/XJam/ZWyaP14k3cmsOtnPsOWQ54lW1s=",
    "SGiBh+jOTGccXU48ZzgQ88lRcBmtB4wz4oSDndv2QTg=",
    "WAS6txqNLYKGL1GdBdpqmV42TTfn6cJsuDsqLXuTCNI=",
    "QFmRS0rirUA7ZN3lxFjDncV+E1OCrn3NUB4RCp+5fzc=",
    "Hdbp7It2XBNZmNDBpCN/KPd7vfVqxgzwOosqVIaEA9E=",
    "mxvHL0ZiblBdD7j7pIa1jlfB0gSqfJ6oX0UGo7L0VsU=",
    "q5hjyvoW6TL/PThgcitpDcSTrnKX2p1+aqscqH2euRA=",
    "jTOWDqt3IHj2NVFeezyBz2ofpru+ztEywqKUAfFclKI=",
    "GIRn0w3HqJdvU9j1WVD//eR6lk2AaTVjyzjsJNP8U88=",
    "x52GJvxG81fnQBrgOTbll1A5tz95/LXK0Ag1NhB0r1I=",
    "6/0OqrcTgc3o5dD5PymmoC96lB9yLPFuTHVvLy8fSGk=",
    "Gf+iKLfcXO5l4JEFmsZvSdG5q1uEeWPfYLrds6pmjz0=",
    "DGuaco+McyM3AfRSF6qX7RwSetwe2ieYJmxw5e9rVx0=",
    "2tQJ9V32hnYp+fdpP6TcjmgJmLeNVOMKM0Ml1kk4cNU=",
    "3PapK+IkyJr8I9yAErAmzuZezzLMzsg+PfeRCgNW8NQ=",
    "s6xiYeejb+wtqHA+URJZ2I/SCPyIW8coP6aB00FJbMY=",
    "z9lSpmdTcr5M5ZzKlc4EPh3SrSypKFdk6JUF/UccaZU=",
    "GXIElfmnRuWfbA4z7ubV/UwlpSRUbUeec7oL5HDDnh0=",
    "pR0SH/NYP6s9+8azWwaeUXA4Ze/3WCIgMfh5YW6wvcE=",
    "f3GuAKYVrF8RBg3s15jvA/YvV9oAliWtzP/imwPhQVA=",
    "WHn8zDxlVgkV+lSlmzaOdfSBrTHoRr5nT3d76q0KKWE=",
    "f2uV2ZxVgULzLPKuZcowRY3ZY7fRlX59iDBjV1R8kNQ=",
    "NzQVjJsvQwbi7WStMr9oFkh9VbHfK7LB6o7WwAqwNTs=",
    "C0LttBeYHZHgL+032JIcJC3CTBIyza/hsbmJUgJfmDI=",
    "nixU5CWTFVDlF4BGdcU6kA7WSYurEpe9jRWc+F/7sOc=",
];

#[test]
fn certificate_transparency_argon2020() {
    let leaf = hash_leaf(&STANDARD.decode(ARGON_LEAF_INPUT).unwrap());
    let root = b64(ARGON_ROOT);
    let path: Vec<Hash> = ARGON_AUDIT_PATH.iter().map(|s| b64(s)).collect();
    verify_inclusion(&leaf, 10000, ARGON_SIZE, &path, &root).unwrap();
    assert!(verify_inclusion(&leaf, 10001, ARGON_SIZE, &path, &root).is_err());
    assert!(verify_inclusion(&leaf, 10000, ARGON_SIZE * 2, &path, &root).is_err());
    assert!(verify_inclusion(&leaf, 10000, ARGON_SIZE, &flip(&path, 29, 1), &root).is_err());

    let proof: Vec<Hash> = ARGON_CONSISTENCY.iter().map(|s| b64(s)).collect();
    let old = b64(ARGON_OLD_ROOT);
    verify_consistency(ARGON_OLD_SIZE, ARGON_SIZE, &old, &root, &proof).unwrap();
    assert!(verify_consistency(ARGON_OLD_SIZE + 1, ARGON_SIZE, &old, &root, &proof).is_err());
    assert!(
        verify_consistency(ARGON_OLD_SIZE, ARGON_SIZE, &old, &root, &flip(&proof, 3, 1)).is_err()
    );
    assert!(verify_consistency(ARGON_OLD_SIZE, ARGON_SIZE, &root, &old, &proof).is_err());

    // And as checkpoints.
    let a = Checkpoint::new("ct.googleapis.com/logs/argon2020", ARGON_OLD_SIZE, old);
    let b = Checkpoint::new("ct.googleapis.com/logs/argon2020", ARGON_SIZE, root);
    a.verify_consistency_to(&b, &proof).unwrap();
    b.verify_inclusion(&leaf, 10000, &path).unwrap();
}

// ---------------------------------------------------------------------------
// golang.org/x/mod/sumdb/tlog: record hash and tree note text.

#[test]
fn go_sumdb_tree_text() {
    let hello = hash_leaf(b"hello world");
    assert_eq!(
        hello.to_base64(),
        "TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0="
    );
    let golden =
        "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n";
    let c = Checkpoint::new("go.sum database tree", 123456789012, hello);
    assert_eq!(c.to_text().unwrap(), golden);
    assert_eq!(Checkpoint::parse(golden).unwrap(), c);
    for bad in [
        "go.sum database tree\n0xabcdef\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n".to_owned(),
        "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n"
            .to_owned(),
        golden.trim_end().to_owned(),
    ] {
        assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
    }
    // Extension lines.
    let ext = Checkpoint::parse(&format!("{golden}JOE\n")).unwrap();
    assert_eq!(ext.extensions, vec!["JOE".to_owned()]);
    assert_eq!(
        Checkpoint::parse(&format!("{golden}{}", "JOE\n".repeat(1000)))
            .unwrap()
            .extensions
            .len(),
        1000
    );
}

// ---------------------------------------------------------------------------
// golang.org/x/mod/sumdb/note: keys, signatures, verification.

const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

#[test]
fn go_note_keys() {
    let peter = Verifier::from_vkey(PETER_VKEY).unwrap();
    assert_eq!(peter.name(), "PeterNeumann");
    assert_eq!(peter.key_id(), 0xc74f20a3);
    assert_eq!(peter.to_vkey(), PETER_VKEY);
    assert_eq!(
        ed25519_key_id("PeterNeumann", peter.public_key().as_bytes()),
        0xc74f20a3
    );
    let signer = Signer::from_skey(PETER_SKEY).unwrap();
    assert_eq!(signer.to_skey(), PETER_SKEY);
    assert_eq!(signer.verifier(), peter);
    let enoch = Verifier::from_vkey(ENOCH_VKEY).unwrap();
    assert_eq!(enoch.key_id(), 0xaf0cfe78);

    // Every proper substring and every single-byte increment is rejected.
    for (key, parse) in [
        (
            PETER_VKEY,
            (|s: &str| Verifier::from_vkey(s).map(|_| ())) as fn(&str) -> Result<(), KeyError>,
        ),
        (PETER_SKEY, |s: &str| Signer::from_skey(s).map(|_| ())),
    ] {
        let b = key.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let sub = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(parse(sub).is_err(), "accepted substring {sub:?}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            if let Ok(s) = std::str::from_utf8(&m) {
                assert!(parse(s).is_err(), "accepted mangled {s:?}");
            }
        }
    }
    // Wrong key length (key ID adjusted to match) and unknown algorithm.
    assert!(
        Verifier::from_vkey(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err()
    );
    assert_eq!(
        Verifier::from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(KeyError::UnsupportedAlgorithm(0x65))
    );
}

#[test]
fn go_note_sign() {
    let signer = Signer::from_skey(PETER_SKEY).unwrap();
    let want = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(sign_note(TEXT, &[&signer]).unwrap(), want);

    // Signing replaces an existing signature by the same key.
    let mut note = Note::parse(want.as_bytes()).unwrap();
    note.signatures[0].signature = vec![0; 64];
    note.sign(&[&signer]).unwrap();
    assert_eq!(note.to_text().unwrap(), want);

    assert!(matches!(
        sign_note("abc", &[&signer]),
        Err(NoteError::Malformed(_))
    ));
    assert!(matches!(
        sign_note("a\u{1}b\n", &[&signer]),
        Err(NoteError::Malformed(_))
    ));
    assert!(matches!(
        Note::new(TEXT).unwrap().to_text(),
        Err(NoteError::Malformed(_))
    ));
}

#[test]
fn go_note_open() {
    let peter = Verifier::from_vkey(PETER_VKEY).unwrap();
    let enoch = Verifier::from_vkey(ENOCH_VKEY).unwrap();
    let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");

    let n = Note::open(both.as_bytes(), std::slice::from_ref(&peter)).unwrap();
    assert_eq!(n.text, TEXT);
    assert_eq!(n.verified.len(), 1);
    assert_eq!(n.verified[0].name, "PeterNeumann");
    assert_eq!(n.verified[0].key_id, 0xc74f20a3);
    assert_eq!(n.unverified.len(), 1);
    assert_eq!(n.unverified[0].key_id, 0xaf0cfe78);

    let n = Note::open(both.as_bytes(), &[peter.clone(), enoch.clone()]).unwrap();
    assert_eq!(n.verified.len(), 2);
    assert!(n.unverified.is_empty());

    match Note::open(both.as_bytes(), &[]) {
        Err(NoteError::UnknownKey { signers }) => {
            assert_eq!(
                signers,
                vec![
                    "PeterNeumann+c74f20a3".to_owned(),
                    "EnochRoot+af0cfe78".to_owned()
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // A verifier with the right name but another key ID (and vice versa) is
    // not the key that signed: the signature is ignored, not failed.
    let other = Signer::generate("PeterNeumann").unwrap().verifier();
    assert!(matches!(
        Note::open(format!("{TEXT}\n{PETER_SIG}").as_bytes(), &[other]),
        Err(NoteError::UnknownKey { .. })
    ));

    // Too many signatures.
    let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
    assert!(matches!(
        Note::open(many.as_bytes(), std::slice::from_ref(&peter)),
        Err(NoteError::Malformed(_))
    ));
    // 16 duplicate signatures are fine and collapse to one.
    let dup = format!("{TEXT}\n{}", PETER_SIG.repeat(16));
    assert_eq!(
        Note::open(dup.as_bytes(), std::slice::from_ref(&peter))
            .unwrap()
            .verified
            .len(),
        1
    );

    // A signature by a known key that does not verify rejects the note.
    let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert_eq!(
        Note::open(bad.as_bytes(), std::slice::from_ref(&peter)),
        Err(NoteError::BadSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );
    // An altered text too.
    let altered = format!("{}\n{PETER_SIG}", TEXT.replace("answer", "Answer"));
    assert!(matches!(
        Note::open(altered.as_bytes(), std::slice::from_ref(&peter)),
        Err(NoteError::BadSignature { .. })
    ));

    // Malformed encodings.
    let bad_msgs = [
        TEXT.to_owned(),
        format!("{TEXT}\n"),
        format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
        format!("\x01{TEXT}\n{PETER_SIG}"),
        format!(
            "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        ),
        format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
    ];
    for msg in &bad_msgs {
        assert!(
            matches!(
                Note::open(msg.as_bytes(), std::slice::from_ref(&peter)),
                Err(NoteError::Malformed(_))
            ),
            "{msg:?}"
        );
    }
    let mut invalid_utf8 = format!("{TEXT}\n{PETER_SIG}").into_bytes();
    invalid_utf8.insert(0, 0xff);
    assert!(matches!(
        Note::open(&invalid_utf8, &[peter]),
        Err(NoteError::Malformed(_))
    ));
}

/// Two different Ed25519 keys with the same name and key ID (a 32-bit
/// collision, found by trying seeds `i` little-endian in the first 8 bytes).
const COLLIDING_NAME: &str = "tally.test/ambiguous";
const COLLIDING_SEEDS: [u64; 2] = [10_333, 90_310];
const COLLIDING_ID: u32 = 0x2ba4_2809;

fn colliding_signer(i: usize) -> Signer {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&COLLIDING_SEEDS[i].to_le_bytes());
    Signer::from_seed(COLLIDING_NAME, &seed).unwrap()
}

#[test]
fn ambiguous_known_keys() {
    let peter = Verifier::from_vkey(PETER_VKEY).unwrap();
    // Same verifier twice is not ambiguous.
    let msg = format!("{TEXT}\n{PETER_SIG}");
    let opened = Note::open(msg.as_bytes(), &[peter.clone(), peter.clone()]).unwrap();
    assert_eq!(opened.text, TEXT);
    assert_eq!(opened.verified.len(), 1);
    assert_eq!(opened.verified[0].name, "PeterNeumann");
    assert_eq!(opened.verified[0].key_id, 0xc74f20a3);
    assert!(opened.unverified.is_empty());

    // Two different known keys with one name and key ID: whichever signed,
    // the note is refused as ambiguous (never checked against one of them).
    let (a, b) = (colliding_signer(0), colliding_signer(1));
    assert_eq!((a.key_id(), b.key_id()), (COLLIDING_ID, COLLIDING_ID));
    assert_ne!(
        a.verifier().public_key(),
        b.verifier().public_key(),
        "the two keys differ"
    );
    let text = "ambiguous\n";
    for signer in [&a, &b] {
        let note = sign_note(text, &[signer]).unwrap();
        for known in [[a.verifier(), b.verifier()], [b.verifier(), a.verifier()]] {
            match Note::open(note.as_bytes(), &known) {
                Err(NoteError::AmbiguousKey { name, key_id }) => {
                    assert_eq!((name.as_str(), key_id), (COLLIDING_NAME, COLLIDING_ID));
                }
                other => panic!("expected AmbiguousKey, got {other:?}"),
            }
        }
        // One of them known (with another key): no ambiguity.
        let opened = Note::open(note.as_bytes(), &[signer.verifier(), peter.clone()]).unwrap();
        assert_eq!(opened.text, text);
    }
    // Known alone, the other key of the same name and ID rejects the
    // signature as invalid.
    let note = sign_note(text, &[&a]).unwrap();
    assert!(matches!(
        Note::open(note.as_bytes(), &[b.verifier()]),
        Err(NoteError::BadSignature {
            key_id: COLLIDING_ID,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// C2SP spec examples (keys not published: parse only).

#[test]
fn c2sp_examples_parse() {
    let note = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n\n— quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
    let n = Note::parse(note.as_bytes()).unwrap();
    assert_eq!(
        n.text,
        "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
    );
    assert_eq!(n.signatures.len(), 1);
    assert_eq!(n.signatures[0].name, "quasimodo.example/salvatore");
    assert_eq!(n.signatures[0].signature.len(), 64);
    assert_eq!(n.to_text().unwrap(), note);

    let cp = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
    let n = Note::parse(cp.as_bytes()).unwrap();
    let c = Checkpoint::parse(&n.text).unwrap();
    assert_eq!(c.origin, "example.com/behind-the-sofa");
    assert_eq!(c.size, 20852163);
    assert_eq!(
        c.root,
        h("0ac5186a91863e8e1d90c808014aa89bf5da8e3ee1d9f07630f0378f68f1ab62")
    );
    assert_eq!(n.signatures[0].name, c.origin);
}

// ---------------------------------------------------------------------------
// RFC 8032 section 7.1, TEST 1 (empty message): the Ed25519 behind notes.

#[test]
fn rfc8032_test_1() {
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
    let s = Signer::from_seed("rfc8032", &seed).unwrap();
    assert_eq!(
        hex::encode(s.verifier().public_key().as_bytes()),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    assert_eq!(
        hex::encode(s.sign(b"")),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
}

// ---------------------------------------------------------------------------
// Tally's own batch vector, pinned: agent and server implementations must
// produce and accept exactly these bytes. Key and signature are checked
// below against an independent Ed25519 (ring's), the statement hash against
// the statement built from the format itself.

#[test]
fn tally_batch_vector() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let instance = "a".repeat(64);
    let body = br#"[{"text":"hello"}]"#;
    let signer = BatchSigner::new(key, &instance, "tailtraffic").unwrap();
    let b1 = signer.sign(&ChainState::GENESIS, body).unwrap();
    let statement = batch_statement(
        &instance,
        "tailtraffic",
        1,
        &Hash::ZERO,
        &Hash::sha256(body),
    );
    let want_statement = format!(
        "tally-batch-v1\n{instance}\ntailtraffic\n1\n{}\n{}\n",
        "0".repeat(64),
        hex::encode(sha2_256(body))
    );
    assert_eq!(
        String::from_utf8(statement.clone()).unwrap(),
        want_statement
    );
    assert_eq!(b1.info.hash, Hash::sha256(&statement));
    let headers = b1.headers();
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "Tally-Batch-Seq",
            "Tally-Batch-Prev",
            "Tally-Batch-Key",
            "Tally-Batch-Signature"
        ]
    );
    assert_eq!(headers[0].1, "1");
    assert_eq!(headers[1].1, "0".repeat(64));
    // Pinned outputs (Ed25519 is deterministic).
    assert_eq!(headers[2].1, PINNED_KEY);
    assert_eq!(b1.info.hash.to_hex(), PINNED_HASH_1);
    assert_eq!(headers[3].1, PINNED_SIG_1);
    // The pins are not merely what this code produced: another Ed25519
    // implementation derives the same key from the seed and the same
    // signature of the statement, and the hash is the statement's SHA-256.
    let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
    use ring::signature::KeyPair as _;
    assert_eq!(STANDARD.encode(other.public_key().as_ref()), PINNED_KEY);
    assert_eq!(
        STANDARD.encode(other.sign(want_statement.as_bytes()).as_ref()),
        PINNED_SIG_1
    );
    assert_eq!(
        hex::encode(sha2_256(want_statement.as_bytes())),
        PINNED_HASH_1
    );

    let b2 = signer.sign(&b1.next_state(), b"[]").unwrap();
    assert_eq!(b2.info.prev, b1.info.hash);
    assert_eq!(b2.info.seq, 2);

    // The server accepts both in order.
    let raw1 = RawBatchHeaders {
        seq: Some(headers[0].1.as_bytes()),
        prev: Some(headers[1].1.as_bytes()),
        key: Some(headers[2].1.as_bytes()),
        signature: Some(headers[3].1.as_bytes()),
        endorsement: None,
    };
    let c1 = check_batch(
        &ChainState::GENESIS,
        None,
        &instance,
        "tailtraffic",
        &raw1,
        body,
    );
    assert_eq!(c1.verdict, Verdict::Ok);
    assert_eq!(c1.state, b1.next_state());
    assert_eq!(c1.key_to_register(), Some(b1.public_key));
}

fn sha2_256(data: &[u8]) -> [u8; 32] {
    Hash::sha256(data).0
}

const PINNED_KEY: &str = "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=";
const PINNED_HASH_1: &str = "7103bce39485a4c5c2493a46021007197b864ddc2d82b1b8653433f741cdcb1e";
const PINNED_SIG_1: &str =
    "UPQChQGYzIOoeEVf2X22sJNPOiOT+xa/unRBzHnPHCATMgj/rwELcGMwmIDeOPf4s/Jq/EY2UVLXsbuFC7LLAw==";
