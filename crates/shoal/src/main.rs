//! `shoal`: the one binary. Glue only: parse the command line, set up tracing, run the command,
//! exit with a deliberate code (0 success, 1 failure with a one-line reason, 2 usage error).

/// `println!` that ends the process quietly when stdout is closed (`shoal kv get … | head`).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod bench;
mod bench_kv;
mod cli;
mod cluster;
mod demo;
mod dev;
mod kv;
mod mr_cmd;
mod server;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BenchCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(BenchCommand::Fsync {
            dir,
            count,
            write_bytes,
        }) => {
            bench::fsync(&cli.global, &dir, count, write_bytes)?;
        }
        Command::Bench(BenchCommand::RaftCore {
            entries,
            payload_bytes,
        }) => {
            bench::raft_core(&cli.global, entries, payload_bytes)?;
        }
        Command::Server(args) => server::run(args)?,
        Command::Demo(args) => demo::run(args)?,
        Command::Bench(BenchCommand::Failover { trials, data_dir }) => {
            bench::failover(&cli.global, trials, data_dir.as_deref())?;
        }
        Command::Bench(BenchCommand::Raft {
            proposers,
            duration,
            payload_bytes,
        }) => {
            bench::raft_cluster(&cli.global, &proposers, duration, payload_bytes)?;
        }
        Command::Cluster(command) => cluster::run(&cli.global, command)?,
        Command::Kv(command) => return kv::run(&cli.global, command),
        Command::Lease(command) => return kv::run_lease(&cli.global, command),
        Command::Dev(args) => dev::run(args)?,
        Command::Bench(BenchCommand::Kv(args)) => bench_kv::run(&cli.global, args)?,
        Command::Mr(raw) => return mr_cmd::run_mr(&cli.global, &raw.args),
        Command::Gen(raw) => return mr_cmd::run_gen(&raw.args),
    }
    Ok(ExitCode::SUCCESS)
}
