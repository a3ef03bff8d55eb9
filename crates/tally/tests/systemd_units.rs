//! The systemd units in `dist/systemd` are valid (`systemd-analyze
//! verify`, with the binary under test as `ExecStart`), hardened as the
//! README says, and their binary answers the command lines they run.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn units_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd")
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        assert_ne!(
            std::env::var("TALLY_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "systemd-analyze is missing (Debian: systemd)"
        );
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in ["tally-server.service", "tally-agent.service"] {
        let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/tally "), "{name}");
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace("/usr/bin/tally", common::bin())).unwrap();
        files.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");
}

#[test]
fn the_units_are_hardened_as_documented() {
    let server = std::fs::read_to_string(units_dir().join("tally-server.service")).unwrap();
    let agent = std::fs::read_to_string(units_dir().join("tally-agent.service")).unwrap();
    for (name, text) in [("server", &server), ("agent", &agent)] {
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "UMask=0077",
        ] {
            assert!(text.lines().any(|l| l == line), "{name}: no {line}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("User=tally")),
            "{name}: no dedicated user"
        );
    }
    // The server has no capability; the agent only CAP_NET_RAW.
    assert!(server.lines().any(|l| l == "CapabilityBoundingSet="));
    assert!(
        agent
            .lines()
            .any(|l| l == "CapabilityBoundingSet=CAP_NET_RAW")
    );
    assert!(
        agent
            .lines()
            .any(|l| l == "AmbientCapabilities=CAP_NET_RAW")
    );
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(common::bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("reset-admin-key"), "{shell}: {script:.200}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("tally-logs-query.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "{page:.200}"
    );
    assert!(page.contains("grep"), "{page:.400}");
}

#[test]
fn the_debian_package_holds_the_binary_units_man_pages_and_defaults() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("TALLY_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "dpkg-deb is missing (Debian: dpkg)"
        );
        eprintln!("skipping: dpkg-deb is not installed");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let script = units_dir().join("../debian/build-deb");
    let out = Command::new(&script)
        .arg("--binary")
        .arg(common::bin())
        .arg("--out")
        .arg(out_dir.path())
        // Fast compression for the test; the documented command uses xz.
        .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
        .env("DPKG_DEB_COMPRESSOR_LEVEL", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let listing = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "./usr/bin/tally",
        "./lib/systemd/system/tally-server.service",
        "./lib/systemd/system/tally-agent.service",
        "./usr/share/man/man1/tally-server.1.gz",
        "./usr/share/bash-completion/completions/tally",
        "./etc/default/tally-agent",
    ] {
        assert!(listing.contains(path), "no {path} in {listing}");
    }
    let info = Command::new("dpkg-deb")
        .args(["--field", &deb, "Package", "Version"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: tally"), "{info}");
    assert!(info.contains(env!("CARGO_PKG_VERSION")), "{info}");
    // The wrong binary path says what to do.
    let out = Command::new(&script)
        .args(["--binary", "/nonexistent/tally"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release"));
}
