//! Throwaway PostgreSQL clusters for tests and benchmarks: `initdb` and
//! `pg_ctl` from Debian's `postgresql` package, in a temporary directory,
//! on a free port, with no system service and no shared state. As root the
//! server runs as the `postgres` OS user (PostgreSQL refuses root).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Set to `1` to make a missing PostgreSQL a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "TALLY_REQUIRE_POSTGRES";

/// Errors starting or using a cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH: install them (Debian: apt-get install postgresql) or pass their directory"
    )]
    NotInstalled,
    /// A command failed.
    #[error("{0}")]
    Command(String),
    /// An I/O error.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Directory holding `initdb` and `pg_ctl` (found when `None`).
    pub bin: Option<PathBuf>,
    /// Where to make the temporary directory (system temp when `None`).
    pub base_dir: Option<PathBuf>,
    /// Extra `name=value` server settings.
    pub conf: Vec<String>,
}

/// A running throwaway cluster; stopped and removed on drop.
pub struct PgCluster {
    bin: PathBuf,
    tmp: Option<tempfile::TempDir>,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    run_as: Option<String>,
    version: String,
}

/// Finds the directory of `initdb`: the newest `/usr/lib/postgresql/N/bin`,
/// else `PATH`.
pub fn find_bin(explicit: Option<&Path>) -> Result<PathBuf, PgError> {
    if let Some(b) = explicit {
        return if b.join("initdb").exists() {
            Ok(b.to_path_buf())
        } else {
            Err(PgError::Command(format!("no initdb in {}", b.display())))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, b)) = found.pop() {
        return Ok(b);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .ok_or(PgError::NotInstalled)
}

/// uid and gid of an OS user, from /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// A cluster for a test: `None` (after a one-line notice on stderr) when
/// PostgreSQL is not installed, unless `TALLY_REQUIRE_POSTGRES=1`, which
/// makes that a panic. Any other failure to start is a panic.
pub fn for_tests(test: &str) -> Option<PgCluster> {
    match PgCluster::start(&PgOptions::default()) {
        Ok(c) => Some(c),
        Err(PgError::NotInstalled) if std::env::var(REQUIRE_ENV).as_deref() != Ok("1") => {
            eprintln!(
                "skipping {test} on PostgreSQL: initdb/pg_ctl not installed (apt-get install postgresql; set {REQUIRE_ENV}=1 to make this a failure)"
            );
            None
        }
        Err(e) => panic!("{test}: cannot start a throwaway PostgreSQL cluster: {e}"),
    }
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, PgError> {
        let out = self
            .command(program)
            .args(args)
            .current_dir(&self.sock)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgError::Io(format!("cannot run {program}"), e))?;
        if !out.status.success() {
            return Err(PgError::Command(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates and starts a cluster listening on 127.0.0.1 and a socket in
    /// its directory; user `postgres`, trust authentication.
    pub fn start(opts: &PgOptions) -> Result<Self, PgError> {
        let bin = find_bin(opts.bin.as_deref())?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("tally-pg-");
        let tmp = match &opts.base_dir {
            Some(d) => builder.tempdir_in(d),
            None => builder.tempdir(),
        }
        .map_err(|e| PgError::Io("cannot create a temporary directory".into(), e))?;
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = passwd_ids("postgres").ok_or_else(|| {
                PgError::Command(
                    "running as root and there is no `postgres` OS user to run PostgreSQL as"
                        .into(),
                )
            })?;
            std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))
                .map_err(|e| PgError::Io(format!("cannot chown {}", tmp.path().display()), e))?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| PgError::Io("cannot find a free port".into(), e))?
            .port();
        let sock = tmp.path().to_path_buf();
        let data = sock.join("data");
        let mut c = Self {
            bin,
            data,
            sock,
            port,
            run_as,
            tmp: Some(tmp),
            version: String::new(),
        };
        let data_s = c.data.display().to_string();
        c.run(
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut o = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            c.port,
            c.sock.display()
        );
        for kv in &opts.conf {
            if !kv.contains('=') || kv.contains(char::is_whitespace) {
                return Err(PgError::Command(format!(
                    "server settings are name=value without spaces, got {kv:?}"
                )));
            }
            let _ = write!(o, " -c {kv}");
        }
        let log = c.sock.join("postgres.log").display().to_string();
        c.run(
            "pg_ctl",
            &["-D", &data_s, "-l", &log, "-w", "-o", &o, "start"],
        )
        .map_err(|e| PgError::Command(format!("PostgreSQL did not start ({e}); see {log}")))?;
        c.version = c
            .sql("SHOW server_version")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(c)
    }

    /// A connection URL for database `db` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The server version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory of the server binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A `psql` command connected as `postgres` to database `postgres`.
    pub fn psql(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres"]);
        c
    }

    /// Runs one SQL command with `psql` and returns its unaligned output.
    pub fn sql(&self, sql: &str) -> Result<String, PgError> {
        let out = self
            .psql()
            .args(["-A", "-t", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgError::Io("cannot run psql".into(), e))?;
        if !out.status.success() {
            return Err(PgError::Command(format!(
                "psql -c {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, PgError> {
        self.sql(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))?;
        Ok(self.url(name))
    }

    /// PID of the postmaster.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server; with `keep`, leaves the directory and returns it.
    pub fn stop(&mut self, keep: bool) -> Result<Option<PathBuf>, PgError> {
        let data_s = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data_s, "-m", "fast", "-w", "stop"])?;
        Ok(match (keep, self.tmp.take()) {
            (true, Some(tmp)) => Some(tmp.keep()),
            _ => None,
        })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Still running (a test failed, or nobody called stop): stop it
        // before the directory goes.
        if self.tmp.is_some() && self.data.join("postmaster.pid").exists() {
            let data_s = self.data.display().to_string();
            let _ = self
                .command("pg_ctl")
                .args(["-D", &data_s, "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
