//! The control-plane verbs (`tally tailnets|settings|keys|users|nodes|audit`)
//! against a real server: changes go through, land in the audit log with
//! their actor and `CLI` origin, the chain verifies, and refusals print the
//! server's message and exit non-zero.

mod common;

use common::{KEY, TestServer, bin};
use serde_json::Value;
use std::process::{Command, Output};

fn tally(server: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("TALLY_SERVER", server)
        .env("TALLY_LOG", "warn")
        .env_remove("TALLY_API_KEY");
    if let Some(k) = key {
        cmd.env("TALLY_API_KEY", k);
    }
    cmd.output().expect("run tally")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ok_json(out: &Output) -> Value {
    let s = ok(out);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "exit status {}", out.status);
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn events(v: &Value) -> Vec<Value> {
    v["logs"].as_array().expect("logs").clone()
}

#[test]
fn users_keys_roles_and_the_audit_log_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.as_str();
    let t = |args: &[&str]| tally(url, Some(KEY), args);

    // A user.
    let alice = ok_json(&t(&[
        "users",
        "create",
        "alice@example.com",
        "--display-name",
        "Alice Example",
        "--role",
        "member",
        "--json",
    ]));
    assert_eq!(alice["loginName"], "alice@example.com", "{alice}");
    let alice_id = alice["id"].as_str().expect("user id").to_owned();
    let out = ok(&t(&["users", "create", "bob@example.com"]));
    assert!(
        out.starts_with("created user bob@example.com (id "),
        "{out}"
    );
    let list = ok(&t(&["users", "list"]));
    let line = list
        .lines()
        .find(|l| l.contains("alice@example.com"))
        .unwrap_or_else(|| panic!("alice missing: {list}"));
    assert!(
        line.contains(&alice_id) && line.contains("Alice Example") && line.contains("member"),
        "{list}"
    );
    assert!(list.starts_with("ID "), "{list}");

    // Keys: the secret is printed once; the list shows them.
    let out = ok(&t(&[
        "keys",
        "create",
        "--type",
        "api",
        "--description",
        "ci deploys",
        "--expiry",
        "30d",
    ]));
    assert!(out.contains("shown only once"), "{out}");
    let api_secret = out
        .lines()
        .skip_while(|l| !l.contains("shown only once"))
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no secret: {out}"))
        .to_owned();
    let auth = ok_json(&t(&[
        "keys",
        "create",
        "--reusable",
        "--tag",
        "tag:ci",
        "--description",
        "runners",
        "--json",
    ]));
    let auth_id = auth["id"].as_str().expect("key id").to_owned();
    assert!(
        auth["key"].as_str().is_some_and(|k| !k.is_empty()),
        "{auth}"
    );
    assert_eq!(auth["keyType"], "auth", "{auth}");
    let keys = ok(&t(&["keys", "list"]));
    assert!(keys.starts_with("ID "), "{keys}");
    let auth_line = keys
        .lines()
        .find(|l| l.contains(&auth_id))
        .unwrap_or_else(|| panic!("auth key missing: {keys}"));
    assert!(
        auth_line.contains("auth")
            && auth_line.contains("reusable")
            && auth_line.contains("tag:ci")
            && auth_line.contains("active"),
        "{keys}"
    );
    assert!(keys.contains("ci deploys"), "{keys}");
    let shown = ok(&t(&["keys", "show", &auth_id]));
    assert!(
        shown.contains(&auth_id) && shown.contains("runners"),
        "{shown}"
    );
    assert!(
        !shown.contains(auth["key"].as_str().unwrap()),
        "secret shown again: {shown}"
    );
    // The new API key acts for its creator.
    ok(&tally(url, Some(&api_secret), &["users", "list"]));

    // A role change, and a refused one.
    let out = ok(&t(&["users", "role", &alice_id, "auditor"]));
    assert!(out.contains("auditor"), "{out}");
    let users = ok_json(&t(&["users", "list", "--json"]));
    let a = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == alice_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(a["role"], "auditor", "{users}");
    let e = err(&t(&["users", "role", &alice_id, "superuser"]));
    assert!(
        e.starts_with("error: server answered 4") && e.contains("role"),
        "{e}"
    );
    let e = err(&t(&["keys", "show", "no-such-key"]));
    assert!(e.contains("404"), "{e}");
    let e = err(&t(&["keys", "revoke", "no-such-key"]));
    assert!(e.contains("404"), "{e}");

    // Revoking the API key stops it at once.
    let api_id = ok_json(&t(&["keys", "list", "--json"]))["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["description"] == "ci deploys")
        .and_then(|k| k["id"].as_str())
        .expect("api key in the list")
        .to_owned();
    let out = ok(&t(&["keys", "revoke", &api_id]));
    assert!(out.contains(&api_id), "{out}");
    let e = err(&tally(url, Some(&api_secret), &["users", "list"]));
    assert!(e.contains("401"), "{e}");
    // The list keeps a revoked key, marked so.
    let keys = ok(&t(&["keys", "list"]));
    let revoked = keys
        .lines()
        .find(|l| l.contains(&api_id))
        .unwrap_or_else(|| panic!("revoked key missing: {keys}"));
    assert!(
        revoked.contains("revoked") && !revoked.contains("active"),
        "{keys}"
    );

    // The audit log: every change with its actor, action and origin.
    let all = ok_json(&t(&["audit", "list", "--json", "--limit", "1000"]));
    assert!(all["tailnetId"].as_str().is_some(), "{all}");
    let evs = events(&all);
    let role_change = evs
        .iter()
        .find(|e| {
            e["target"]["id"] == alice_id.as_str()
                && e["error"].is_null()
                && e["new"].to_string().contains("auditor")
        })
        .unwrap_or_else(|| panic!("no role change for {alice_id}: {all:#}"));
    assert_eq!(role_change["origin"], "CLI", "{role_change}");
    assert_eq!(role_change["action"], "UPDATE", "{role_change}");
    assert_eq!(role_change["target"]["property"], "role", "{role_change}");
    // The actor is the user the admin key acts for: the tailnet's owner.
    let owners: Vec<Value> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "owner")
        .cloned()
        .collect();
    assert_eq!(owners.len(), 1, "{users}");
    let actor = &role_change["actor"];
    assert_eq!(actor["type"], "USER", "{role_change}");
    assert_eq!(actor["id"], owners[0]["id"], "{role_change}");
    assert_eq!(actor["loginName"], owners[0]["loginName"], "{role_change}");
    assert!(
        evs.iter().any(|e| e["target"]["id"] == alice_id.as_str()
            && e["old"].is_null()
            && e["new"].to_string().contains("alice@example.com")),
        "no creation event for alice: {all:#}"
    );
    assert!(
        evs.iter()
            .any(|e| e["target"]["id"] == alice_id.as_str() && !e["error"].is_null()),
        "no refusal event for the bad role: {all:#}"
    );
    assert!(
        evs.iter()
            .any(|e| e["target"]["id"] == auth_id.as_str() && e["error"].is_null()),
        "no event for the auth key: {all:#}"
    );
    let times: Vec<&str> = evs.iter().filter_map(|e| e["eventTime"].as_str()).collect();
    assert_eq!(times.len(), evs.len(), "{all:#}");
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );

    // Paging gives the same events as one page.
    let paged = ok_json(&t(&[
        "audit",
        "list",
        "--json",
        "--limit",
        "5",
        "--page-size",
        "2",
    ]));
    let paged = events(&paged);
    assert_eq!(paged.len(), 5.min(evs.len()));
    assert_eq!(paged[..], evs[..paged.len()]);

    // Filters reach the server.
    let action = role_change["action"].as_str().unwrap();
    let filtered = events(&ok_json(&t(&[
        "audit",
        "list",
        "--json",
        "--since",
        "1h",
        "--action",
        action,
        "--target-id",
        &alice_id,
    ])));
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|e| e["action"] == action && e["target"]["id"] == alice_id.as_str()),
        "{filtered:#?}"
    );
    let none = events(&ok_json(&t(&[
        "audit",
        "list",
        "--json",
        "--until",
        "2000-01-01T00:00:00Z",
    ])));
    assert!(none.is_empty(), "{none:#?}");

    // The table.
    let table = ok(&t(&["audit", "list", "--target-id", &alice_id]));
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in [
        "TIME", "ORIGIN", "ACTOR", "ACTION", "TARGET", "PROPERTY", "CHANGE", "ERROR",
    ] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        lines.any(|l| l.contains("CLI") && l.contains(action) && l.contains("auditor")),
        "{table}"
    );

    // The chain is intact.
    let out = ok(&t(&["audit", "verify"]));
    assert!(out.contains("intact"), "{out}");
    let v = ok_json(&t(&["audit", "verify", "--json"]));
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["events"].as_u64().unwrap() >= evs.len() as u64, "{v}");

    // Deleting a user.
    let out = ok(&t(&["users", "delete", &alice_id]));
    assert!(out.contains(&alice_id), "{out}");
    // A deleted user is no longer listed.
    let list = ok(&t(&["users", "list"]));
    assert!(!list.contains(&alice_id), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
}

#[test]
fn tailnets_and_settings_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.as_str();

    let list = ok(&tally(url, Some(KEY), &["tailnets", "list"]));
    assert!(
        list.starts_with("ID ") && list.lines().count() >= 2,
        "{list}"
    );

    // A new tailnet prints its owner's key once, ready to export.
    let out = ok(&tally(
        url,
        Some(KEY),
        &["tailnets", "create", "acme.example"],
    ));
    assert!(out.contains("created tailnet acme.example"), "{out}");
    assert!(out.contains("shown only once"), "{out}");
    let owner = out
        .lines()
        .find_map(|l| l.split("export TALLY_API_KEY=").nth(1))
        .unwrap_or_else(|| panic!("no key: {out}"))
        .trim()
        .to_owned();
    let o = |args: &[&str]| tally(url, Some(&owner), args);
    let mine = ok(&o(&["tailnets", "list"]));
    assert!(mine.contains("acme.example"), "{mine}");

    // Settings: only the fields given change.
    let before = ok_json(&o(&["settings", "get", "--json"]));
    let audit_days = before["auditRetentionDays"].clone();
    assert!(audit_days.as_u64().is_some_and(|d| d >= 90), "{before}");
    let out = ok(&o(&[
        "settings",
        "set",
        "--flow-logging",
        "on",
        "--logs-retention-days",
        "14",
    ]));
    assert!(out.contains("logsRetentionDays=14"), "{out}");
    let after = ok_json(&o(&[
        "settings",
        "get",
        "--tailnet",
        "acme.example",
        "--json",
    ]));
    assert_eq!(after["networkFlowLoggingOn"], true, "{after}");
    assert_eq!(after["logsRetentionDays"], 14, "{after}");
    assert_eq!(after["auditRetentionDays"], audit_days, "{after}");
    let table = ok(&o(&["settings", "get"]));
    assert!(
        table.starts_with("SETTING") && table.contains("logsRetentionDays"),
        "{table}"
    );
    let e = err(&o(&["settings", "set", "--audit-retention-days", "30"]));
    assert!(e.contains("server answered 4") && e.contains("90"), "{e}");
    let e = err(&o(&["settings", "set"]));
    assert!(e.contains("nothing to change"), "{e}");

    // A key acts in its own tailnet only.
    let e = err(&tally(
        url,
        Some(KEY),
        &["settings", "get", "--tailnet", "acme.example"],
    ));
    assert!(e.contains("403"), "{e}");

    // The audit log of the new tailnet has its settings change from the CLI.
    let evs = events(&ok_json(&o(&["audit", "list", "--json"])));
    assert!(
        evs.iter().any(|e| e["origin"] == "CLI"
            && e["error"].is_null()
            && e.to_string().contains("logsRetentionDays")),
        "{evs:#?}"
    );
    assert!(ok(&o(&["audit", "verify"])).contains("intact"));

    // Rename and delete.
    ok(&o(&["tailnets", "rename", "acme.example", "acme2.example"]));
    assert!(ok(&o(&["tailnets", "list"])).contains("acme2.example"));
    let out = ok(&o(&["tailnets", "delete", "acme2.example"]));
    assert!(out.contains("deleted tailnet acme2.example"), "{out}");
    err(&o(&["users", "list"]));
    // The first tailnet is untouched.
    ok(&tally(url, Some(KEY), &["users", "list"]));
}

#[test]
fn nodes_and_client_side_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.as_str();
    let t = |args: &[&str]| tally(url, Some(KEY), args);

    // No node yet (listing nodes is tested with one in
    // nodes_list_rename_tag_and_delete): the header alone, an empty list.
    let list = ok(&t(&["nodes", "list"]));
    assert!(
        list.starts_with("ID ") && list.contains("LAST SEEN"),
        "{list}"
    );
    assert_eq!(list.lines().count(), 1, "{list}");
    let v = ok_json(&t(&["nodes", "list", "--json"]));
    assert_eq!(v["devices"], serde_json::json!([]), "{v}");
    for args in [
        &["nodes", "show", "no-such-node"][..],
        &["nodes", "rename", "no-such-node", "web"],
        &["nodes", "tag", "no-such-node", "tag:web"],
        &["nodes", "delete", "no-such-node"],
        &["users", "role", "no-such-user", "admin"],
    ] {
        let e = err(&t(args));
        assert!(e.contains("404"), "{args:?}: {e}");
    }

    // Mistakes caught before any request.
    let e = err(&t(&["audit", "list", "--since", "last tuesday"]));
    assert!(e.contains("duration") && e.contains("RFC 3339"), "{e}");
    let e = err(&t(&["audit", "list", "--since", "1d", "--until", "7d"]));
    assert!(e.contains("swap"), "{e}");
    let e = err(&t(&["keys", "create", "--expiry", "soon"]));
    assert!(e.contains("--expiry"), "{e}");
    let e = err(&t(&["keys", "create", "--type", "api", "--reusable"]));
    assert!(e.contains("auth keys only"), "{e}");
    let e = err(&tally(url, None, &["users", "list"]));
    assert!(e.contains("TALLY_API_KEY"), "{e}");
}

#[test]
fn audit_verify_exits_1_when_the_chain_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let original = "Mallory Original";
    let forged = "Mallory Modified";
    ok(&tally(
        &server.url,
        Some(KEY),
        &[
            "users",
            "create",
            "mallory@example.com",
            "--display-name",
            original,
        ],
    ));
    assert!(ok(&tally(&server.url, Some(KEY), &["audit", "verify"])).contains("intact"));
    // A clean stop checkpoints the SQLite WAL into control.db; then edit the
    // stored event in place (same length), as someone with disk access could.
    server.stop();
    let db = dir.path().join("control.db");
    assert!(
        std::fs::metadata(dir.path().join("control.db-wal")).map_or(true, |m| m.len() == 0),
        "the server left a WAL behind; cannot edit control.db in place"
    );
    let bytes = std::fs::read(&db).unwrap();
    let (from, to) = (original.as_bytes(), forged.as_bytes());
    let mut edited = bytes.clone();
    let mut hits = 0;
    for i in 0..bytes.len().saturating_sub(from.len()) {
        if &bytes[i..i + from.len()] == from {
            edited[i..i + to.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0, "the event text is not in control.db");
    std::fs::write(&db, edited).unwrap();

    let server = TestServer::start(dir.path(), &[]);
    let e = err(&tally(&server.url, Some(KEY), &["audit", "verify"]));
    assert!(e.starts_with("error: ") && e.contains("broken"), "{e}");
    let out = tally(&server.url, Some(KEY), &["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], false, "{v}");
    assert!(v["brokenAt"]["seq"].as_u64().is_some(), "{v}");
}

#[tokio::test]
async fn nodes_list_rename_tag_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let url = server.url.clone();
    let t = |args: &[&str]| tally(&url, Some(KEY), args);

    // A node registers with an auth key, as `tally agent` does.
    let auth = ok_json(&t(&["keys", "create", "--preauthorized", "--json"]));
    let secret = auth["key"].as_str().expect("secret").to_owned();
    let private = tally_proto::PrivateId::generate();
    let r = common::http()
        .post(format!("{url}/api/v2/agent/{}", private.to_hex()))
        .bearer_auth(&secret)
        .json(&serde_json::json!({
            "hostname": "web-01", "os": "linux", "addresses": ["100.64.0.7"],
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let list = ok(&t(&["nodes", "list"]));
    let line = list
        .lines()
        .find(|l| l.contains("web-01"))
        .unwrap_or_else(|| panic!("node missing: {list}"));
    assert!(
        line.contains("100.64.0.7") && line.contains("linux"),
        "{list}"
    );
    let id = line.split_whitespace().next().unwrap().to_owned();
    let shown = ok(&t(&["nodes", "show", &id]));
    assert!(
        shown.contains(&id) && shown.contains("hostname:"),
        "{shown}"
    );

    let out = ok(&t(&["nodes", "rename", &id, "web-1"]));
    assert!(out.contains("web-1"), "{out}");
    let out = ok(&t(&["nodes", "tag", &id, "tag:web", "tag:prod"]));
    assert!(out.contains("tag:web tag:prod"), "{out}");
    let v = ok_json(&t(&["nodes", "show", &id, "--json"]));
    assert_eq!(v["name"], "web-1", "{v}");
    let mut tags: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["tag:prod", "tag:web"], "{v}");
    ok(&t(&["nodes", "tag", &id, "--clear"]));
    let v = ok_json(&t(&["nodes", "show", &id, "--json"]));
    assert_eq!(v["tags"], serde_json::json!([]), "{v}");
    let e = err(&t(&["nodes", "rename", &id, "not a name"]));
    assert!(e.contains("server answered 4"), "{e}");

    let table = ok(&t(&["audit", "list", "--target-type", "NODE"]));
    assert!(
        table.contains("NODE:web-1") && table.contains("CLI"),
        "{table}"
    );

    let out = ok(&t(&["nodes", "delete", &id]));
    assert!(out.contains(&id), "{out}");
    assert!(!ok(&t(&["nodes", "list"])).contains(&id));
    assert!(ok(&t(&["audit", "verify"])).contains("intact"));
}
