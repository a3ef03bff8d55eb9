//! The console in a real browser (issue 15): headless Chromium driven by
//! chromedriver (a child of the test, on a free port) through WebDriver,
//! against the real `tally server`. Signing in with a password set through
//! the CLI (and a wrong one refused with the server's message), a node's
//! log line in the live tail within two seconds of `tally agent log`, the
//! audit log filtered by actor and action to exactly the matching events,
//! flow logging turned on from the settings page and its audit event, what
//! an auditor and a member see, the flows graph from the API, and the
//! graph renderer with 1,000 nodes.
//!
//! Nothing sleeps to synchronise: every wait polls the page (or the
//! server) for a condition, with a deadline. Each test saves screenshots
//! under `target/console-screenshots/`; with `TALLY_SCREENSHOTS=DIR` (a
//! path relative to the repository) the README's screenshots are written
//! there too. A missing chromedriver fails the tests, saying what to
//! install.

mod common;

use common::readme::{free_port, tally};
use common::{KEY, TestAgent, TestServer, bin, http, register_node};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";
/// The screenshots the README shows (`docs/console/<name>.png`).
const README_SCREENSHOTS: [&str; 3] = ["flows-graph", "audit", "logs-live-tail"];
/// Longest wait for anything the page does.
const PATIENCE: Duration = Duration::from_secs(20);

/// One browser test at a time: they measure latency on a shared machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A program named by `var`, else the first of `names` on the `PATH`.
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// chromedriver and the browsers it starts, in a process group of their
/// own that is killed when the test ends (passed or not).
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let bin = program("TALLY_CHROMEDRIVER", &["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed: the console's browser tests need Chromium and \
                 chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs \
                 them when missing), or TALLY_CHROMEDRIVER=/path/to/chromedriver"
            )
        });
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless browser session.
    async fn browser(&self) -> Client {
        let mut opts = json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
            "--disable-dev-shm-usage", "--no-first-run", "--password-store=basic",
        ]});
        if let Some(b) = std::env::var_os("TALLY_CHROMIUM") {
            opts["binary"] = json!(b.to_string_lossy());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), opts);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start a headless Chromium through chromedriver: {e}")
            })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group: chromedriver and the browsers it started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A test's server, browser and screenshots.
struct Console {
    server: TestServer,
    c: Client,
    test: &'static str,
    _driver: ChromeDriver,
    _dir: tempfile::TempDir,
}

impl Console {
    async fn start(test: &'static str) -> Self {
        Self::start_with(test, &[]).await
    }

    /// Starts with extra `tally server` arguments.
    async fn start_with(test: &'static str, server_args: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let server = TestServer::start(&dir.path().join("server"), server_args);
        let driver = ChromeDriver::start();
        let c = driver.browser().await;
        Self {
            server,
            c,
            test,
            _driver: driver,
            _dir: dir,
        }
    }

    fn url(&self, hash: &str) -> String {
        format!("{}/{hash}", self.server.url)
    }

    async fn goto(&self, hash: &str) {
        self.c.goto(&self.url(hash)).await.expect("goto");
    }

    /// Saves a PNG of the page as `<test>-<name>.png` under
    /// `target/console-screenshots/` (and, for the README's, as
    /// `<name>.png` in `$TALLY_SCREENSHOTS` when set).
    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("console-screenshots");
        std::fs::create_dir_all(&target).expect("screenshot dir");
        std::fs::write(target.join(format!("{}-{name}.png", self.test)), &png).expect("write");
        if let Some(dir) = std::env::var_os("TALLY_SCREENSHOTS")
            && README_SCREENSHOTS.contains(&name)
        {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            std::fs::write(dir.join(format!("{name}.png")), &png).expect("write");
        }
    }

    /// The element at `css`, once it exists.
    async fn find(&self, css: &str) -> Element {
        match self
            .c
            .wait()
            .at_most(PATIENCE)
            .every(Duration::from_millis(25))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!(
                "no {css} on the page ({e}); page: {}",
                self.page_text().await
            ),
        }
    }

    /// The page's visible text (for failure messages).
    async fn page_text(&self) -> String {
        match self.c.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// Polls the text of `css` until `ok` holds; answers it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await
                && let Ok(t) = el.text().await
            {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {css} never did; its text: {last:?}; the page: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The texts of every element matching `css`.
    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self.c.find_all(Locator::Css(css)).await.expect("find_all") {
            out.push(el.text().await.unwrap_or_default());
        }
        out
    }

    async fn attr_all(&self, css: &str, attr: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self.c.find_all(Locator::Css(css)).await.expect("find_all") {
            out.push(el.attr(attr).await.ok().flatten().unwrap_or_default());
        }
        out
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Signs in on the sign-in page with a login and password; waits for
    /// the signed-in bar.
    async fn sign_in(&self, login: &str, password: &str) {
        self.goto("#/signin").await;
        self.type_into("#login", login).await;
        self.type_into("#password", password).await;
        self.click("#signin-submit").await;
        self.wait_text("#who-login", "signed in", |t| t == login)
            .await;
    }

    /// Signs in by pasting an API key.
    async fn sign_in_with_key(&self, key: &str) {
        self.goto("#/signin").await;
        self.type_into("#api-key", key).await;
        self.click("#key-submit").await;
        self.find("#who-login").await;
    }

    async fn finish(self) {
        let _ = self.c.close().await;
    }
}

/// `tally users create` and `tally users set-password --password-stdin`,
/// as the README says.
fn user_with_password(url: &str, login: &str, role: &str) {
    tally(url, &["users", "create", login, "--role", role]);
    let mut child = Command::new(bin())
        .args(["users", "set-password", login, "--password-stdin"])
        .env("TALLY_SERVER", url)
        .env("TALLY_API_KEY", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tally");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("tally");
    assert!(
        out.status.success(),
        "set-password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` with the admin key, as JSON.
async fn api(url: &str, path: &str) -> Value {
    common::get_json(&format!("{url}{path}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_a_password_set_by_the_cli_and_a_wrong_one_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("signin").await;
    let url = t.server.url.clone();
    user_with_password(&url, "alice@example.com", "admin");

    // The page itself: not signed in, so the sign-in form.
    t.goto("").await;
    t.find("#signin-form").await;
    // A wrong password: refused with the server's own message.
    let resp = http()
        .post(format!("{url}/api/v2/session"))
        .json(&json!({ "loginName": "alice@example.com", "password": "wrong" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    let expected: Value = resp.json().await.expect("json");
    let expected = expected["error"].as_str().expect("error").to_owned();
    t.type_into("#login", "alice@example.com").await;
    t.type_into("#password", "not the password").await;
    t.click("#signin-submit").await;
    let shown = t
        .wait_text("#signin-message .notice-error", "a refusal", |s| {
            !s.is_empty()
        })
        .await;
    assert_eq!(shown, expected, "the server's message, verbatim");
    assert!(
        shown.to_lowercase().contains("password"),
        "a clear message: {shown}"
    );
    t.screenshot("signin-refused").await;

    // The right one: signed in, the role shown, the overview.
    t.type_into("#password", PASSWORD).await;
    t.click("#signin-submit").await;
    t.wait_text("#who-login", "signed in", |s| s == "alice@example.com")
        .await;
    assert_eq!(
        t.find("#who-role").await.text().await.expect("role"),
        "admin"
    );
    t.wait_text("#flow-logging-state", "the overview", |s| s == "off")
        .await;
    t.wait_text("#nodes-online", "the nodes card", |s| s.ends_with("online"))
        .await;
    // The session cookie is HttpOnly: the page's scripts never see it.
    let cookies =
        t.c.execute("return document.cookie", vec![])
            .await
            .expect("script");
    assert!(
        !cookies
            .as_str()
            .unwrap_or_default()
            .contains("tally_session"),
        "{cookies}"
    );
    t.screenshot("overview").await;
    // The sign-in is in the audit log as the console's.
    let events = api(
        &url,
        "/api/v2/tailnet/-/logging/configuration?action=LOGIN&actor=alice@example.com",
    )
    .await;
    let logs = events["logs"].as_array().expect("logs");
    assert!(
        logs.iter()
            .any(|e| e["origin"] == "CONSOLE" && e.get("error").is_none()),
        "{events}"
    );
    // Signing out ends the session: the sign-in page again, and the
    // session answers 401.
    t.click("#signout").await;
    t.find("#signin-form").await;
    let status =
        t.c.execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v2/session', {credentials: 'same-origin'}).then(r => done(r.status));",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(status, json!(401));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_shows_a_node_log_line_within_two_seconds_and_keeps_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("tail").await;
    let url = t.server.url.clone();
    let agent_dir = t._dir.path().join("agent");
    let agent = TestAgent::start(&url, &agent_dir, &[]);
    t.sign_in_with_key(KEY).await;
    t.goto("#/logs?tail=1").await;
    t.find("#tail-state[data-live]").await;
    let node = {
        let devices = api(&url, "/api/v2/tailnet/-/devices").await;
        devices["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["instance"] == agent.public_id.as_str())
            .map(|d| d["name"].as_str().expect("name").to_owned())
            .expect("the agent's device")
    };

    // A few lines as scripts on a node log them, then the one timed.
    for line in [
        "sshd[812]: Accepted publickey for deploy from 100.64.0.7 port 52144",
        "[v1] nightly backup started: /srv/data -> s3://backups/web",
        "nightly backup finished: 41,212 files, 1.3 GB in 2m 41s",
        "systemd[1]: Started certbot.service - Certbot renewal.",
    ] {
        let out = Command::new(bin())
            .args(["agent", "--data-dir"])
            .arg(&agent_dir)
            .args(["log", line])
            .output()
            .expect("tally agent log");
        assert!(out.status.success());
    }
    t.wait_text("#log-rows .log-row:first-child", "the lines", |s| {
        s.contains("certbot")
    })
    .await;
    let marker = format!("console-tail-{}", hex::encode(rand::random::<[u8; 6]>()));
    let sent = Instant::now();
    let out = Command::new(bin())
        .args(["agent", "--data-dir"])
        .arg(&agent_dir)
        .args(["log", &marker])
        .output()
        .expect("tally agent log");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Polled as fast as WebDriver answers; the deadline is the claim.
    let row = loop {
        let rows = t.texts("#log-rows .log-row").await;
        if let Some(r) = rows.into_iter().find(|r| r.contains(&marker)) {
            break r;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the line was not in the live tail within 2 s of `tally agent log`"
        );
    };
    let took = sent.elapsed();
    eprintln!("live tail: the line appeared {took:?} after `tally agent log` started");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(row.contains(&node), "the row names the node {node}: {row}");
    t.screenshot("logs-live-tail").await;

    // A burst of 20,000 lines: the page keeps answering, shows the count,
    // holds at most 2,000 rows, and the newest line is on top.
    // (Another instance than the agent's: its uploads are signed batches.)
    let private = common::adopted_id(&url, "tailnode").await.to_hex();
    t.c.execute(
        "window.__loaf = null; new PerformanceObserver((l) => { for (const e of l.getEntries()) if (!window.__loaf || e.duration > window.__loaf.duration) window.__loaf = { duration: e.duration, blocking: e.blockingDuration, render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0, layout: e.styleAndLayoutStart ? e.startTime + e.duration - e.styleAndLayoutStart : 0, scripts: e.scripts.map(s => [s.sourceFunctionName, s.invoker, Math.round(s.duration), s.forcedStyleAndLayoutDuration]) }; }).observe({ type: 'long-animation-frame', buffered: true });
         window.__long = 0; new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long = Math.max(window.__long, e.duration); }).observe({ type: 'longtask' });
         window.__gap = 0; let last = performance.now();
         const tick = (now) => { window.__gap = Math.max(window.__gap, now - last); last = now; requestAnimationFrame(tick); };
         requestAnimationFrame(tick);",
        vec![],
    )
    .await
    .expect("script");
    let client = http();
    let burst = 20_000;
    for batch in 0..20 {
        let entries: Vec<Value> = (0..burst / 20)
            .map(|i| json!({ "text": format!("burst {batch}-{i}") }))
            .collect();
        let resp = client
            .post(format!("{url}/c/tailnode/{private}"))
            .json(&entries)
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 200);
    }
    let last = format!(
        "console-tail-last-{}",
        hex::encode(rand::random::<[u8; 4]>())
    );
    let resp = client
        .post(format!("{url}/c/tailnode/{private}"))
        .json(&json!({ "text": last }))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    t.wait_text(
        "#log-rows .log-row:first-child",
        "the newest line on top",
        |s| s.contains(&last),
    )
    .await;
    let counts = t.find("#tail-counts").await.text().await.expect("counts");
    let n: usize = counts
        .split(" lines")
        .next()
        .unwrap_or_default()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("a count of lines: {counts}"));
    assert!(n > burst, "{counts}");
    let rows =
        t.c.find_all(Locator::Css("#log-rows .log-row"))
            .await
            .expect("rows")
            .len();
    assert!(rows <= 2000, "{rows} rows kept");
    let gap =
        t.c.execute("return window.__gap", vec![])
            .await
            .expect("gap");
    let loaf =
        t.c.execute("return window.__loaf", vec![])
            .await
            .expect("loaf");
    eprintln!("live tail: the worst animation frame (ms, script attribution): {loaf}");
    let long =
        t.c.execute("return window.__long", vec![])
            .await
            .expect("long task");
    eprintln!(
        "live tail: {counts}; {rows} rows; longest frame gap {gap} ms, longest task {long} ms"
    );
    // Generous: the machine runs the server, the browser and the test.
    assert!(
        gap.as_f64().unwrap_or(f64::MAX) < 1000.0 && long.as_f64().unwrap_or(f64::MAX) < 1000.0,
        "the page froze: {gap} ms between frames, a task of {long} ms"
    );
    agent.stop();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_filtered_by_actor_and_action_shows_exactly_the_matching_events() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("audit").await;
    let url = t.server.url.clone();
    user_with_password(&url, "carol@example.com", "auditor");
    // bob (an admin with a key of his own) makes two keys and a setting
    // change; the admin key makes a key too.
    tally(
        &url,
        &["users", "create", "bob@example.com", "--role", "admin"],
    );
    let users = api(&url, "/api/v2/tailnet/-/users").await;
    let bob = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["loginName"] == "bob@example.com")
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .expect("bob");
    let key: Value = http()
        .post(format!("{url}/api/v2/tailnet/-/keys"))
        .bearer_auth(KEY)
        .json(&json!({ "keyType": "api", "userId": bob, "description": "bob's" }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let bob_key = key["key"].as_str().expect("secret").to_owned();
    for args in [
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--description",
            "bob 1",
            "--expiry",
            "30d",
        ][..],
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--description",
            "bob 2",
            "--expiry",
            "30d",
        ][..],
        &["settings", "set", "--logs-retention-days", "31"][..],
    ] {
        let out = Command::new(bin())
            .args(args)
            .env("TALLY_SERVER", &url)
            .env("TALLY_API_KEY", &bob_key)
            .output()
            .expect("tally");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tally(
        &url,
        &[
            "keys",
            "create",
            "--type",
            "api",
            "--description",
            "admin's",
            "--expiry",
            "30d",
        ],
    );
    let expected = api(
        &url,
        "/api/v2/tailnet/-/logging/configuration?actor=bob@example.com&action=CREATE",
    )
    .await;
    let expected = expected["logs"].as_array().expect("logs").clone();
    assert_eq!(expected.len(), 2, "{expected:?}");

    // carol, an auditor, filters the audit log in the page.
    t.sign_in("carol@example.com", PASSWORD).await;
    t.goto("#/audit").await;
    t.wait_text("#audit-count", "the unfiltered log", |s| {
        s.contains("events")
    })
    .await;
    t.type_into("#f-actor", "bob@example.com").await;
    t.type_into("#f-action", "CREATE").await;
    t.click("form.filters button[type=submit]").await;
    t.wait_text("#audit-count", "the filtered log", |s| {
        s.starts_with("2 events")
    })
    .await;
    let check = |actors: Vec<String>, actions: Vec<String>| {
        assert_eq!(actors, vec!["bob@example.com"; 2], "exactly bob's events");
        assert_eq!(actions, vec!["CREATE"; 2], "exactly CREATE events");
    };
    check(
        t.attr_all("tr.audit-event", "data-actor").await,
        t.attr_all("tr.audit-event", "data-action").await,
    );
    // The same events as the API's, newest first.
    let times: Vec<String> = t.attr_all("tr.audit-event td.time span", "title").await;
    let ms = |t: &str| tally_proto::timefmt::parse_rfc3339(t).map(|n| n / 1_000_000);
    let api_times: Vec<Option<i64>> = expected
        .iter()
        .map(|e| ms(e["eventTime"].as_str().expect("time")))
        .collect();
    let shown_times: Vec<Option<i64>> = times.iter().map(|t| ms(t)).collect();
    assert_eq!(shown_times, api_times, "the API's events in its order");
    // The filters are in the URL: opening it again shows the same view.
    let link = t.c.current_url().await.expect("url").to_string();
    assert!(
        link.contains("actor=bob%40example.com") && link.contains("action=CREATE"),
        "{link}"
    );
    t.c.goto(&t.server.url).await.expect("away");
    t.find("#card-nodes").await;
    t.c.goto(&link).await.expect("back");
    t.wait_text("#audit-count", "the shared view", |s| {
        s.starts_with("2 events")
    })
    .await;
    check(
        t.attr_all("tr.audit-event", "data-actor").await,
        t.attr_all("tr.audit-event", "data-action").await,
    );
    // The chain's verdict with its head, as `tally audit verify` sees it,
    // when asked for.
    let verdict = api(&url, "/api/v2/tailnet/-/logging/configuration/verify").await;
    t.click("#audit-verify").await;
    t.wait_text("#audit-verdict", "the verdict", |s| {
        s.contains("Hash chain intact")
    })
    .await;
    let head = t
        .find("#audit-head")
        .await
        .attr("title")
        .await
        .expect("attr");
    assert_eq!(head.as_deref(), verdict["head"].as_str());
    // An event's old and new values as a diff.
    t.click("tr.audit-event button").await;
    t.find("tr.expanded:not(.hidden) .diff-line.add").await;
    t.screenshot("audit").await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_logging_turned_on_in_settings_and_its_audit_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("settings").await;
    let url = t.server.url.clone();
    user_with_password(&url, "alice@example.com", "admin");
    t.sign_in("alice@example.com", PASSWORD).await;
    t.goto("#/settings").await;
    let select = t.find("#s-networkFlowLoggingOn").await;
    select.select_by_value("true").await.expect("select");
    // A value the API refuses: its message, verbatim, and nothing saved.
    t.type_into("#s-auditRetentionDays", "30").await;
    t.click("#settings-save").await;
    let refused = t
        .wait_text("#settings-message .notice-error", "a refusal", |s| {
            !s.is_empty()
        })
        .await;
    let resp = http()
        .patch(format!("{url}/api/v2/tailnet/-/settings"))
        .bearer_auth(KEY)
        .json(&json!({ "networkFlowLoggingOn": true, "auditRetentionDays": 30 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);
    let msg: Value = resp.json().await.expect("json");
    assert_eq!(
        refused,
        msg["error"].as_str().expect("error"),
        "the API's message"
    );
    let settings = api(&url, "/api/v2/tailnet/-/settings").await;
    assert_eq!(settings["networkFlowLoggingOn"], false);
    // Corrected: saved.
    t.type_into("#s-auditRetentionDays", "90").await;
    t.click("#settings-save").await;
    t.wait_text("#settings-message", "saved", |s| s.starts_with("Saved"))
        .await;
    let settings = api(&url, "/api/v2/tailnet/-/settings").await;
    assert_eq!(settings["networkFlowLoggingOn"], true);
    t.screenshot("settings").await;
    // Its audit event: ENABLE by alice from the console, old and new.
    t.click("#settings-audit-link").await;
    t.wait_text("#audit-count", "the event", |s| s.starts_with("1 event"))
        .await;
    let row = t.find("tr.audit-event").await.text().await.expect("row");
    assert!(
        row.contains("alice@example.com") && row.contains("CONSOLE") && row.contains("ENABLE"),
        "{row}"
    );
    assert!(row.contains("networkFlowLoggingOn"), "{row}");
    t.click("tr.audit-event button").await;
    let diff = t.texts("tr.expanded:not(.hidden) .diff-line").await;
    assert_eq!(
        diff,
        vec!["- (value): false", "+ (value): true"],
        "{diff:?}"
    );
    t.screenshot("audit-flow-logging").await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_sees_the_audit_log_but_no_settings_form_and_a_member_only_devices() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("roles").await;
    let url = t.server.url.clone();
    user_with_password(&url, "carol@example.com", "auditor");
    user_with_password(&url, "dave@example.com", "member");

    t.sign_in("carol@example.com", PASSWORD).await;
    let nav = t.texts("#nav a").await;
    assert!(nav.contains(&"Audit log".to_owned()), "{nav:?}");
    t.goto("#/settings").await;
    t.wait_text("#v-networkFlowLoggingOn", "the settings", |s| s == "off")
        .await;
    t.find("#settings-readonly").await;
    assert!(
        t.c.find(Locator::Css("#settings-form")).await.is_err(),
        "an auditor sees the settings form"
    );
    assert!(t.texts("#main button").await.iter().all(|b| b != "Save"));
    t.screenshot("auditor-settings").await;
    // No change buttons on users, keys or devices either.
    for page in ["#/users", "#/keys", "#/devices"] {
        t.goto(page).await;
        t.find("#main table").await;
        assert!(
            t.c.find(Locator::Css("#main details")).await.is_err(),
            "{page}: a create form for an auditor"
        );
    }
    // The server decides anyway: a change the page would not offer is
    // refused, and the page shows the server's message as it is.
    let shown =
        t.c.execute_async(
            "const done = arguments[arguments.length - 1];
             import('/console/js/api.js').then(m =>
               m.api('PATCH', '/api/v2/tailnet/-/settings', {body: {networkFlowLoggingOn: true}})
                .then(() => done('changed'), e => done(e.status + ' ' + e.message)));",
            vec![],
        )
        .await
        .expect("script");
    let shown = shown.as_str().expect("text");
    assert!(
        shown.starts_with("403 permission denied: your role (auditor)"),
        "{shown}"
    );
    t.click("#signout").await;
    t.find("#signin-form").await;

    // A member: devices only.
    t.sign_in("dave@example.com", PASSWORD).await;
    t.find("#devices table").await;
    assert_eq!(t.texts("#nav a").await, vec!["Devices"]);
    assert!(
        t.c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("#/devices")
    );
    t.goto("#/audit").await;
    t.wait_text("#main .notice", "a refusal", |s| {
        s.contains("member") && s.contains("audit:read")
    })
    .await;
    t.finish().await;
}

/// A Tailscale-shaped flow record of `node` starting `secs` ago.
fn record(node: &str, secs: i64, virt: Value) -> Value {
    let start = tally_proto::timefmt::now_nanos() - secs * 1_000_000_000;
    json!({
        "nodeId": node,
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(start + 5_000_000_000),
        "virtualTraffic": virt,
    })
}

/// Six nodes registered as agents register, flow logging on, and 20
/// minutes of TCP between them as both ends report it: web → api → db and
/// cache, a bastion touching two. Answers the number of node pairs.
async fn seed_flows(url: &str) -> usize {
    tally(url, &["settings", "set", "--flow-logging", "on"]);
    let auth = common::reusable_auth_key(url).await;
    let names = ["web-1", "web-2", "api-1", "db-1", "cache-1", "bastion"];
    let mut nodes = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let addr = format!("100.64.0.{}", i + 1);
        let (private, _) = register_node(url, &auth, n, &addr).await;
        nodes.push((private.to_hex(), addr));
    }
    // web → api → db and cache; bastion → everyone a little; both ends
    // report each connection, over the last 20 minutes.
    let talks = [
        (0, 2, 80_000),
        (1, 2, 60_000),
        (2, 3, 400_000),
        (2, 4, 90_000),
        (5, 0, 2_000),
        (5, 3, 1_500),
    ];
    let client = http();
    for minute in 0..20 {
        for (a, b, bytes) in talks {
            let (pa, aa) = &nodes[a];
            let (pb, ab) = &nodes[b];
            let secs = minute * 60 + 30;
            let sent = bytes * (1 + minute % 3);
            for (private, me, peer, tx, rx) in
                [(pa, aa, ab, sent, sent / 10), (pb, ab, aa, sent / 10, sent)]
            {
                let r = record(
                    "x",
                    secs,
                    json!([{ "proto": 6, "src": format!("{me}:4000"), "dst": format!("{peer}:443"), "txPkts": 10, "txBytes": tx, "rxPkts": 10, "rxBytes": rx }]),
                );
                let resp = client
                    .post(format!("{url}/c/tailtraffic/{private}"))
                    .json(&[r])
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(resp.status(), 200);
            }
        }
    }
    talks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_graph_and_table_from_the_api() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("flows").await;
    let url = t.server.url.clone();
    let pairs_seeded = seed_flows(&url).await;
    t.sign_in_with_key(KEY).await;
    t.goto("#/flows?since=30m").await;
    t.wait_text("#graph-status", "the graph", |s| {
        s.starts_with("6 nodes with traffic")
    })
    .await;
    let pairs = t.texts("#graph-pairs li").await;
    assert_eq!(pairs.len(), pairs_seeded, "{pairs:?}");
    assert!(
        pairs[0].contains("api-1") && pairs[0].contains("db-1"),
        "the busiest pair first: {pairs:?}"
    );
    // Something is drawn on the canvas.
    let painted =
        t.c.execute(
            "const c = document.getElementById('flow-graph');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;",
            vec![],
        )
        .await
        .expect("script");
    assert!(painted.as_u64().unwrap_or(0) > 500, "{painted}");
    // The slider: one bucket, then a node and its peers.
    let slider = t.find("#graph-slider").await;
    slider.send_keys("\u{E012}").await.expect("arrow left");
    t.wait_text("#graph-window", "one bucket", |s| {
        !s.starts_with("whole range")
    })
    .await;
    slider.send_keys("\u{E014}").await.expect("arrow right");
    t.wait_text("#graph-window", "the whole range", |s| {
        s.starts_with("whole range")
    })
    .await;
    t.click("#graph-pairs li button").await;
    let peers = t.texts("#graph-peers li").await;
    assert!(!peers.is_empty(), "the selected node's peers");
    t.screenshot("flows-graph").await;
    // The table of that pair's flows, through the side panel's link.
    t.click("#graph-peers li a").await;
    t.wait_text("#flows-count", "the table", |s| {
        s.contains("traffic entries") && !s.starts_with("0 ")
    })
    .await;
    assert!(
        t.c.current_url()
            .await
            .expect("url")
            .as_str()
            .contains("view=table")
    );
    let rows = t.texts("#flow-rows tr.flow-row").await;
    assert!(!rows.is_empty());
    t.screenshot("flows-table").await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_renderer_stays_responsive_with_1000_nodes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("graph1000").await;
    t.goto("").await;
    t.find("#signin-form").await;
    // The console's own renderer, loaded as the page loads it, fed 1,000
    // nodes and 4,000 edges; the frames are timed while it lays them out.
    let v = t
        .c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
            const baseline = (ms) => new Promise((resolve) => {
              let n = 0; const s = performance.now();
              const f = (now) => { n++; if (now - s < ms) requestAnimationFrame(f); else resolve(n * 1000 / (now - s)); };
              requestAnimationFrame(f);
            });
            baseline(1000).then((idleFps) => import('/console/js/graph.js').then(({ GraphView }) => {
              const box = document.createElement('div');
              box.className = 'graph-box';
              box.style.cssText = 'position: fixed; inset: 0; height: auto; z-index: 50';
              document.body.appendChild(box);
              const canvas = document.createElement('canvas');
              box.appendChild(canvas);
              let seed = 7;
              const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
              const nodes = [], links = [];
              for (let i = 0; i < 1000; i++) nodes.push({ id: 'n' + i, label: 'node-' + i, weight: Math.floor(rnd() * 1e9) });
              for (let i = 0; i < 4000; i++) {
                const a = Math.floor(rnd() * 1000), b = Math.floor(Math.pow(rnd(), 3) * 1000);
                if (a !== b) links.push({ a: 'n' + a, b: 'n' + b, weight: Math.floor(rnd() * 1e8) });
              }
              const t0 = performance.now();
              const view = new GraphView(canvas, {});
              view.setGraph(nodes, links);
              view.setEdges(links);
              const setupMs = performance.now() - t0;
              let last = performance.now(), gap = 0, frames = 0;
              const start = last;
              const tick = (now) => {
                gap = Math.max(gap, now - last); last = now; frames++;
                if (now - start < 4000) requestAnimationFrame(tick);
                else {
                  const d0 = performance.now(); view.draw(); view.ctx.getImageData(0, 0, 1, 1); const drawMs = performance.now() - d0;
                  view.alpha = 1; const m0 = performance.now(); view.draw(); view.ctx.getImageData(0, 0, 1, 1); const movingMs = performance.now() - m0; view.alpha = 0;
                  view.canvas.focus();
                  view.canvas.dispatchEvent(new KeyboardEvent('keydown', { key: 'n' }));
                  done({ settled: view.settled, movingMs, idleFps, fps: frames * 1000 / (performance.now() - start), setupMs, gap, drawMs, steps: view.stepsTaken, selected: view.selected, edges: view.edges.length });
                }
              };
              requestAnimationFrame(tick);
            })).catch(e => done({ error: String(e) }));"#,
            vec![],
        )
        .await
        .expect("script");
    eprintln!("graph with 1,000 nodes: {v}");
    assert!(v.get("error").is_none(), "{v}");
    let num = |k: &str| v[k].as_f64().unwrap_or(f64::MAX);
    assert!(
        num("setupMs") < 300.0,
        "setting the graph took {} ms",
        num("setupMs")
    );
    // Times include the canvas's rasterisation (software: --disable-gpu).
    assert!(
        num("drawMs") < 100.0,
        "a settled frame took {} ms to draw",
        num("drawMs")
    );
    assert!(
        num("movingMs") < 100.0,
        "a frame of the layout took {} ms to draw",
        num("movingMs")
    );
    assert!(
        num("fps") > 15.0,
        "{} frames a second while laying out",
        num("fps")
    );
    assert_eq!(
        v["settled"], true,
        "the layout did not settle within 4 s: {v}"
    );
    assert!(num("gap") < 250.0, "the page froze for {} ms", num("gap"));
    assert!(
        num("steps") >= 100.0,
        "the layout advanced only {} steps",
        num("steps")
    );
    assert!(v["edges"].as_u64().unwrap_or(0) > 3900, "{v}");
    assert!(v["selected"].as_str().is_some(), "n selects a node: {v}");
    t.screenshot("graph-1000").await;
    t.finish().await;
}

impl Console {
    /// Waits until the page has loaded what it shows (no "Loading…" left
    /// in it) and asserts that it shows no error and hit no script error.
    async fn settled(&self, page: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let loading = self
                .c
                .execute(
                    "return [...document.querySelectorAll('#main *')].some(e => e.childElementCount === 0 && /^(Loading|Reading)…/.test(e.textContent))",
                    vec![],
                )
                .await
                .expect("script");
            if loading == json!(false) {
                break;
            }
            assert!(Instant::now() < deadline, "{page} never finished loading");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let errors = self
            .c
            .execute("return window.tallyConsoleErrors", vec![])
            .await
            .expect("script");
        assert_eq!(errors, json!([]), "{page}: script errors");
        let shown = self
            .texts("#main .notice-error, #toast .notice-error")
            .await;
        assert!(shown.is_empty(), "{page} shows errors: {shown:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_its_data_and_the_forms_work() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Console::start("pages").await;
    let url = t.server.url.clone();
    seed_flows(&url).await;
    // Node log lines of an adopted instance, two of them about alpha.
    let private = common::adopted_id(&url, "tailnode").await.to_hex();
    let lines: Vec<Value> = ["alpha one", "beta", "Alpha two", "gamma", "delta"]
        .iter()
        .map(|t| json!({ "text": t }))
        .collect();
    let resp = http()
        .post(format!("{url}/c/tailnode/{private}"))
        .json(&lines)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    t.sign_in_with_key(KEY).await;
    for (page, shows) in [
        ("#/", "#card-alerts .big"),
        ("#/logs?since=1h", "#logs-status"),
        ("#/flows?view=table&since=30m", "#flow-rows tr.flow-row"),
        ("#/reconciliation?since=1h", "#finding-rows"),
        ("#/alerts?since=1h", "#alerts table"),
        ("#/recordings", "#recordings table"),
        ("#/audit", "tr.audit-event"),
        ("#/devices", "#devices table"),
        ("#/users", "#users table"),
        ("#/keys", "#keys table"),
        ("#/settings", "#settings-form"),
        ("#/rules", "#rules table"),
        ("#/streams", "#streams-network table"),
    ] {
        t.goto(page).await;
        t.find(shows).await;
        t.settled(page).await;
        let name = page
            .trim_start_matches("#/")
            .split('?')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("overview")
            .to_owned();
        t.screenshot(&format!("page-{name}")).await;
    }

    // A query of the node log by text: exactly the matching lines, newest first.
    t.goto("#/logs?since=1h&q=alpha").await;
    t.wait_text("#logs-status", "the query", |s| {
        s.starts_with("2 matching entries")
    })
    .await;
    let rows = t.texts("#log-rows .log-row .text").await;
    assert_eq!(rows, vec!["Alpha two", "alpha one"]);

    // Keyboard: "/" focuses the filter, "g" then a letter opens a page.
    t.goto("#/audit").await;
    t.settled("audit").await;
    t.find("body").await.send_keys("/").await.expect("key");
    let focused =
        t.c.execute("return document.activeElement.id", vec![])
            .await
            .expect("script");
    assert_eq!(focused, json!("f-actor"));
    t.c.execute("document.activeElement.blur()", vec![])
        .await
        .expect("script");
    t.find("body").await.send_keys("gl").await.expect("keys");
    t.find("#logs-out").await;
    assert!(
        t.c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("#/logs")
    );

    // Keys: a new key's secret is shown once, then it can be revoked.
    t.goto("#/keys").await;
    t.settled("keys").await;
    t.click("#main details summary").await;
    t.find("#key-type")
        .await
        .select_by_value("api")
        .await
        .expect("type");
    t.type_into("#key-description", "made in the console").await;
    t.type_into("#key-expiry", "7d").await;
    t.click("#main details form button[type=submit]").await;
    let secret = t
        .wait_text("#new-key-secret", "the secret", |s| s.starts_with("tally-"))
        .await;
    let keys = api(&url, "/api/v2/tailnet/-/keys").await;
    let made = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["description"] == "made in the console")
        .expect("the key")
        .clone();
    assert_eq!(made["keyType"], "api");
    let resp = http()
        .get(format!("{url}/api/v2/tailnet/-/devices"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200, "the shown secret is the key");

    // Devices: renamed through the form.
    t.goto("#/devices?q=web-1").await;
    t.settled("devices").await;
    let name = t.find("#devices table tbody input").await;
    name.clear().await.expect("clear");
    name.send_keys("web-one").await.expect("type");
    t.click("#devices table tbody button[type=submit]").await;
    t.wait_text("#devices table tbody", "the new name", |s| {
        s.contains("web-one (web-1)")
    })
    .await;
    t.goto("#/devices?q=web-one").await;
    t.wait_text("#devices table tbody", "found by its new name", |s| {
        s.contains("web-one")
    })
    .await;

    // Streaming: a webhook nobody listens to; its test event's failure is
    // the destination's, shown as such.
    t.goto("#/streams?type=alerts").await;
    t.settled("streams").await;
    t.click("#streams-alerts details summary").await;
    t.find("#streams-alerts details select")
        .await
        .select_by_value("webhook")
        .await
        .expect("type");
    let inputs =
        t.c.find_all(Locator::Css("#streams-alerts details input"))
            .await
            .expect("inputs");
    inputs[0]
        .send_keys("http://127.0.0.1:9/hook")
        .await
        .expect("url");
    inputs[2]
        .send_keys("a signing key of some length")
        .await
        .expect("token");
    t.click("#streams-alerts details form button[type=submit]")
        .await;
    t.wait_text("#streams-alerts table tbody", "the destination", |s| {
        s.contains("webhook")
    })
    .await;
    let page = t.page_text().await;
    assert!(
        !page.contains("a signing key of some length"),
        "the token is shown"
    );
    // Edited: pointed at a receiver here, the token left empty (kept).
    let (hook, seen) = webhook_receiver().await;
    t.click("#streams-alerts table button.dest-edit-open").await;
    let url_input = t
        .find("#streams-alerts details.dest-edit input[id^=dest-url-]")
        .await;
    assert_eq!(
        url_input.prop("value").await.expect("value").as_deref(),
        Some("http://127.0.0.1:9/hook"),
        "the form starts from the stored configuration"
    );
    url_input.clear().await.expect("clear");
    url_input.send_keys(&hook).await.expect("url");
    t.click("#streams-alerts details.dest-edit button[type=submit]")
        .await;
    t.wait_text(
        "#streams-alerts table tbody",
        "the edited destination",
        |s| s.contains(&hook),
    )
    .await;
    let streams = api(&url, "/api/v2/tailnet/-/logging/alerts/streams").await;
    assert_eq!(streams["streams"][0]["url"], hook.as_str(), "{streams}");
    // Its test event is signed with the token stored before the edit.
    t.click("#streams-alerts table tbody tr button.dest-test")
        .await;
    t.wait_text("#streams-alerts table tbody", "the test delivered", |s| {
        s.contains("Delivered")
    })
    .await;
    let (ts, sig, body) = seen.lock().first().cloned().expect("a request");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"a signing key of some length");
    let mac = ring::hmac::sign(
        &key,
        format!("{ts}.")
            .into_bytes()
            .into_iter()
            .chain(body)
            .collect::<Vec<u8>>()
            .as_slice(),
    );
    assert_eq!(sig, format!("v1={}", hex::encode(mac.as_ref())));

    // A setup link made in the users page is one the server accepts.
    tally(
        &url,
        &["users", "create", "frank@example.com", "--role", "member"],
    );
    t.goto("#/users?q=frank").await;
    t.settled("users").await;
    t.click("#users table tbody button.invite").await;
    let made = t
        .wait_text("#users .setup-link", "a setup link", |s| {
            s.contains("#/setup?token=")
        })
        .await;
    assert!(made.starts_with(&url), "{made}");

    // A one-time setup link from `tally users invite` sets a password and signs in.
    tally(
        &url,
        &["users", "create", "erin@example.com", "--role", "auditor"],
    );
    let out = tally(&url, &["users", "invite", "erin@example.com"]);
    let link = out
        .lines()
        .next()
        .filter(|l| l.contains("#/setup?token="))
        .unwrap_or_else(|| panic!("no setup link in {out}"))
        .to_owned();
    t.click("#signout").await;
    t.find("#signin-form").await;
    t.c.goto(&link).await.expect("goto");
    t.type_into("#new-password", PASSWORD).await;
    t.type_into("#new-password-again", PASSWORD).await;
    t.screenshot("setup").await;
    t.click("#setup-submit").await;
    t.wait_text("#who-login", "signed in by the link", |s| {
        s == "erin@example.com"
    })
    .await;
    assert!(
        !t.c.current_url()
            .await
            .expect("url")
            .as_str()
            .contains("token=")
    );
    t.settled("after setup").await;
    t.finish().await;
}

/// A recorded SSH session, as tailscaled uploads it (asciicast v2).
const CAST: &str = concat!(
    r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"srcNode":"web-1.tail1234.ts.net","srcNodeID":"nWeb1","srcNodeUser":"ada@example.com","sshUser":"deploy","localUser":"deploy","connectionID":"c42"}"#,
    "\n",
    r#"[0.25,"o","$ uptime\r\n"]"#,
    "\n",
    r#"[0.75,"o","up 42 days, load average: 0.01\r\n"]"#,
    "\n",
    r#"[1.5,"o","$ systemctl is-failed nginx\r\n\u001b[1;31mfailed\u001b[0m\r\n$ "]"#,
    "\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_listed_replayed_and_reading_it_is_audited() {
    let _one = ONE_AT_A_TIME.lock().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let t = Console::start_with(
        "recordings",
        &[
            "--recorder-listen",
            &listen,
            "--recorder-allow",
            "127.0.0.0/8",
        ],
    )
    .await;
    let url = t.server.url.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = h2c
        .post(format!("http://{listen}/v2/record"))
        .body(CAST)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("acks");
    // Listed as complete once the index has it (polled: no signal crosses).
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let v = api(&url, "/api/v2/tailnet/-/recordings").await;
        if let Some(r) = v["recordings"].as_array().and_then(|a| a.first())
            && r["state"] == "complete"
        {
            break r["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "never listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    t.sign_in_with_key(KEY).await;
    t.goto("#/recordings?user=deploy").await;
    let row = t.find("tr.recording-row").await.text().await.expect("row");
    assert!(
        row.contains("web-1.tail1234.ts.net") && row.contains("deploy") && row.contains("complete"),
        "{row}"
    );
    t.click("tr.recording-row a.replay-link").await;
    let screen = t
        .wait_text("#term", "the session's screen", |s| s.contains("failed"))
        .await;
    assert_eq!(
        screen
            .trim_end()
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>(),
        vec![
            "$ uptime",
            "up 42 days, load average: 0.01",
            "$ systemctl is-failed nginx",
            "failed",
            "$"
        ]
    );
    let red = t
        .find("#term span.t-f1.t-bold")
        .await
        .text()
        .await
        .expect("span");
    assert_eq!(red, "failed", "colour and bold kept");
    assert!(
        t.c.current_url()
            .await
            .expect("url")
            .as_str()
            .contains(&format!("play={id}"))
    );
    // Played from the start: the first line first.
    t.click("#replay-play").await;
    t.wait_text("#replay-time", "the end of the replay", |s| {
        s.split(" / ").next() == s.split(" / ").nth(1)
    })
    .await;
    t.screenshot("recordings").await;
    // Opening it was audited, as the console's.
    let events = api(
        &url,
        "/api/v2/tailnet/-/logging/configuration?action=READ&targetType=RECORDING",
    )
    .await;
    let logs = events["logs"].as_array().expect("logs");
    assert!(
        logs.iter()
            .any(|e| e["origin"] == "CONSOLE" && e["target"]["id"] == id.as_str()),
        "{events}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_in_progress_is_followed_live_until_it_ends() {
    let _one = ONE_AT_A_TIME.lock().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let t = Console::start_with(
        "recording-live",
        &[
            "--recorder-listen",
            &listen,
            "--recorder-allow",
            "127.0.0.0/8",
        ],
    )
    .await;
    let url = t.server.url.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The recorder's upload, its body sent a piece at a time.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }));
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let upload = tokio::spawn({
        let listen = listen.clone();
        async move {
            let resp = h2c
                .post(format!("http://{listen}/v2/record"))
                .body(body)
                .send()
                .await
                .expect("upload");
            assert_eq!(resp.status(), 200);
            resp.text().await.expect("acks")
        }
    });
    let send = |s: &str| {
        let tx = tx.clone();
        let b = bytes::Bytes::from(s.to_owned());
        async move { tx.send(Ok(b)).await.expect("upload open") }
    };
    send(concat!(
        r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"srcNode":"web-2.tail1234.ts.net","srcNodeID":"nWeb2","sshUser":"ops","localUser":"ops","connectionID":"c43"}"#,
        "\n",
        r#"[0.1,"o","$ tail -f /var/log/app.log\r\n"]"#,
        "\n"
    ))
    .await;
    // Listed as being recorded once the index has it (polled: no signal crosses).
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let v = api(&url, "/api/v2/tailnet/-/recordings").await;
        if let Some(r) = v["recordings"].as_array().and_then(|a| a.first())
            && r["state"] == "recording"
        {
            break r["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "never listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    t.sign_in_with_key(KEY).await;
    t.goto(&format!("#/recordings?play={id}")).await;
    t.click("#replay-follow").await;
    t.wait_text("#term", "the first line, live", |s| {
        s.contains("$ tail -f /var/log/app.log")
    })
    .await;
    t.wait_text("#replay-live", "the live state", |s| s.starts_with("live"))
        .await;
    // A line recorded now appears on the followed screen.
    send(concat!(r#"[2.5,"o","request served in 12 ms\r\n"]"#, "\n")).await;
    let screen = t
        .wait_text("#term", "the new line, live", |s| {
            s.contains("request served in 12 ms")
        })
        .await;
    assert!(screen.contains("$ tail -f /var/log/app.log"), "{screen}");
    t.screenshot("recording-live").await;
    // The session ends: the follow ends with it.
    drop(tx);
    upload.await.expect("upload task");
    t.wait_text("#replay-live", "the end of the recording", |s| {
        s.starts_with("the recording ended")
    })
    .await;
    t.finish().await;
}

/// A webhook receiver on 127.0.0.1: its URL and what it received
/// (`Tally-Timestamp`, `Tally-Signature`, body), answering 200.
async fn webhook_receiver() -> (
    String,
    std::sync::Arc<parking_lot::Mutex<Vec<(String, String, Vec<u8>)>>>,
) {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let keep = keep.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                keep.lock()
                    .push((h("tally-timestamp"), h("tally-signature"), body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}
