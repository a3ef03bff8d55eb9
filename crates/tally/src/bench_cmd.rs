//! `tally bench ...`: the benchmarks live in their own binary, `tally-bench`
//! (crates/bench), so that the server and agent carry no benchmark code.
//! This entry runs the `tally-bench` next to the running `tally` with the
//! arguments as given (`tally bench --help` is tally-bench's help).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `tally bench`, passed to `tally-bench` unchanged.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct BenchArgs {
    /// The benchmark and its flags: ingest, ingest-memory, audit, flows,
    /// reconcile, pipeline (`tally bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Where `tally-bench` must be: next to the running `tally`.
fn bench_exe() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("tally-bench"))
}

/// Replaces this process with `tally-bench ARGS` (exec), so its output,
/// signals and exit status are tally-bench's own; returns only when that
/// cannot be done, with the reason on stderr.
pub fn run(args: BenchArgs) -> ExitCode {
    let exe = match bench_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: tally bench cannot find the path of this program: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !exe.is_file() {
        eprintln!(
            "error: tally bench needs the tally-bench binary next to tally ({} is missing): build it with `cargo build --release -p tally-bench` (without --release next to a debug build of tally); benchmarks are a separate binary so that the server and agent do not carry benchmark code",
            exe.display()
        );
        return ExitCode::FAILURE;
    }
    use std::os::unix::process::CommandExt;
    // argv[0] "tally bench": tally-bench's usage lines then name the command
    // the user typed.
    let e = std::process::Command::new(&exe)
        .arg0("tally bench")
        .args(&args.args)
        .exec();
    eprintln!("error: tally bench cannot run {}: {e}", exe.display());
    ExitCode::FAILURE
}
