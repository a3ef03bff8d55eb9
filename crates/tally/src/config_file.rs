//! `--config FILE` for `tally server` and `tally agent`: a TOML table whose
//! keys are the command's long flags (`listen = "0.0.0.0:8080"`,
//! `data-dir = "/var/lib/tally"`, `follow = ["/var/log/syslog"]`,
//! `registered-only = true`). A flag given on the command line wins, then
//! its environment variable, then the file, then the default.
//! `--print-config` shows the effective settings and where each came from.
//!
//! The file is applied by adding its settings as flags to the command
//! line (those the command line and environment left unset), so clap
//! checks its values exactly as it checks flags.

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use std::ffi::OsString;
use std::path::PathBuf;

/// The subcommands that take `--config`.
const CONFIGURABLE: [&str; 2] = ["server", "agent"];
/// Flags a file may not set.
const NOT_IN_FILE: [&str; 3] = ["config", "print-config", "help"];

/// What [`apply`] decided.
pub struct Prepared {
    /// The command line to parse: the original, plus the file's settings.
    pub argv: Vec<OsString>,
    /// `--print-config` was given: the report to print instead of running.
    pub report: Option<String>,
    /// The configuration file applied, if any.
    pub file: Option<PathBuf>,
}

/// Reads `--config` (if any) of `tally server|agent` and returns the
/// command line with the file's settings added. A command line clap
/// refuses is returned unchanged (clap then says why).
pub fn apply(cmd: clap::Command, argv: Vec<OsString>) -> anyhow::Result<Prepared> {
    let unchanged = |argv| Prepared {
        argv,
        report: None,
        file: None,
    };
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else {
        return Ok(unchanged(argv));
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(unchanged(argv));
    };
    if !CONFIGURABLE.contains(&name) {
        return Ok(unchanged(argv));
    }
    let sub_cmd = cmd
        .find_subcommand(name)
        .context("the subcommand vanished")?
        .clone();
    let config: Option<PathBuf> = sub.get_one::<PathBuf>("config").cloned();
    let print = sub.get_flag("print_config");
    let mut from_file: Vec<(String, String)> = Vec::new();
    let mut argv = argv;
    if let Some(path) = &config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let mut extra: Vec<OsString> = Vec::new();
        for (key, value) in &table {
            let long = key.replace('_', "-");
            let arg = sub_cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && !NOT_IN_FILE.contains(&long.as_str()))
                .with_context(|| {
                    format!(
                        "{}: unknown setting {key:?}; the settings are `tally {name}`'s long flags (see `tally {name} --help`)",
                        path.display()
                    )
                })?;
            let id = arg.get_id().as_str();
            if matches!(
                sub.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let flag = format!("--{long}");
            let takes_value = arg.get_action().takes_values();
            match value {
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        extra.push(flag.into());
                    }
                }
                // `--flag=value`: a value is never read as another flag.
                toml::Value::Array(items) if takes_value => {
                    for item in items {
                        extra.push(format!("{flag}={}", scalar(path, key, item)?).into());
                    }
                }
                other if takes_value => {
                    extra.push(format!("{flag}={}", scalar(path, key, other)?).into());
                }
                _ => bail!("{}: {key} is a switch: give true or false", path.display()),
            }
            from_file.push((id.to_owned(), path.display().to_string()));
        }
        // Right after the subcommand's name (argv[1]), before any nested
        // subcommand of the agent (`tally agent log ...`).
        let at = 2.min(argv.len());
        argv.splice(at..at, extra);
    }
    let report = if print {
        Some(report(&sub_cmd, &argv, name, &from_file)?)
    } else {
        None
    };
    Ok(Prepared {
        argv,
        report,
        file: config,
    })
}

/// A TOML scalar as a flag value.
fn scalar(path: &std::path::Path, key: &str, v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!(
            "{}: {key} must be a string, number or boolean (or a list of them)",
            path.display()
        ),
    })
}

/// The effective settings of `tally NAME` after the file was applied, one
/// per line with where it came from; values of hidden settings
/// (passwords, URLs with credentials, tokens) are not shown.
fn report(
    sub_cmd: &clap::Command,
    argv: &[OsString],
    name: &str,
    from_file: &[(String, String)],
) -> anyhow::Result<String> {
    let top = clap::Command::new("tally").subcommand(sub_cmd.clone());
    let matches = top
        .try_get_matches_from(argv)
        .context("the configuration file's settings were refused")?;
    let Some((_, sub)) = matches.subcommand() else {
        bail!("no subcommand");
    };
    let mut out = format!("# effective settings of `tally {name}`\n");
    for arg in sub_cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let values: Vec<String> = sub
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match sub.value_source(id) {
            _ if from_file.iter().any(|(i, _)| i == id) => {
                let file = from_file
                    .iter()
                    .find(|(i, _)| i == id)
                    .map_or("", |(_, f)| f.as_str());
                format!("file {file}")
            }
            Some(ValueSource::CommandLine) => "command line".into(),
            Some(ValueSource::EnvVariable) => format!(
                "environment {}",
                arg.get_env()
                    .map(|e| e.to_string_lossy())
                    .unwrap_or_default()
            ),
            Some(ValueSource::DefaultValue) => "default".into(),
            _ => "not set".into(),
        };
        let shown = if !arg.get_action().takes_values() {
            format!("{long} = {}", sub.get_flag(id))
        } else if values.is_empty() {
            "#".to_owned()
        } else if arg.is_hide_env_values_set() {
            format!("{long} = \"(set, hidden)\"")
        } else if values.len() == 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            format!("{long} = {:?}", values[0])
        } else {
            format!("{long} = {values:?}")
        };
        let shown = if shown.starts_with('#') {
            format!("# {long}: not set")
        } else {
            shown
        };
        out.push_str(&format!("{shown:<48} # {source}\n"));
    }
    Ok(out)
}
