//! The `aftercart` command: one binary, one subcommand per service, plus the local stack and tools.

mod cli;
mod cmd;
mod samples;
mod serve;

use std::process::ExitCode;

use aftercart_runtime::EX_USAGE;
use aftercart_runtime::{renamed, telemetry};
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

/// mimalloc for the consumer services, the system's allocator for the rest (`--allocator`).
#[global_allocator]
static ALLOCATOR: aftercart_allocator::ByService = aftercart_allocator::ByService;

fn main() -> ExitCode {
    // Old setting names become the new ones before clap reads the environment.
    let mut deprecations = renamed::apply_to_process_env();
    let command = Cli::command();
    let parsed = command
        .clone()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, allocator_wanted) = match parsed {
        Ok((cli, matches)) => {
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            deprecations.flags = renamed::old_flags(&command, &matches, &args);
            let wanted = aftercart_allocator::expected(&cli.allocator, matches.subcommand_name());
            (cli, wanted)
        }
        Err(error) => {
            // --help and --version are not errors; everything else is a usage problem (64).
            let code = if error.use_stderr() { EX_USAGE } else { 0 };
            let _ = error.print();
            return exit_code(code);
        }
    };
    let format = match cli.log_format.parse() {
        Ok(format) => format,
        Err(problem) => {
            eprintln!("invalid configuration (1 problem(s)):\n  - AFTERCART_LOG_FORMAT: {problem}");
            return exit_code(EX_USAGE);
        }
    };
    // The services read the switch through aftercart_runtime::outbound; clap has resolved the
    // flag over the variable, and that value is what holds (`--allow-insecure-http=false` wins
    // over the variable set to true).
    match aftercart_runtime::config::parse_switch(&cli.allow_insecure_http) {
        Ok(allowed) => aftercart_runtime::outbound::decide_insecure_http(allowed),
        Err(problem) => {
            eprintln!(
                "invalid configuration (1 problem(s)):\n  - AFTERCART_ALLOW_INSECURE_HTTP: {problem}"
            );
            return exit_code(EX_USAGE);
        }
    }
    telemetry::init(format, &cli.log);
    // The allocator was chosen from the raw command line before it was parsed: where the parsed
    // one asks for another (a flag's value taken for the subcommand, a command line over 32 KiB,
    // no /proc), say so; the process cannot switch allocators any more.
    match aftercart_allocator::in_use() {
        Some(running) if running != allocator_wanted => tracing::warn!(
            allocator = running.name(),
            wanted = allocator_wanted.name(),
            "This process runs on another memory allocator than its command line asks for: it \
             was chosen before the command line was parsed. Set AFTERCART_ALLOCATOR to choose it \
             explicitly."
        ),
        Some(running) => tracing::debug!(allocator = running.name(), "memory allocator"),
        None => {}
    }
    if let Some(warning) = deprecations.warning() {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return exit_code(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Ingress(args) => cmd::ingress::run(*args).await,
            Command::Abandonment(args) => cmd::abandonment::run(*args).await,
            Command::Referrals(args) => cmd::referrals::run(*args).await,
            Command::Journey(args) => cmd::journey::run(*args).await,
            Command::Audiences(args) => cmd::audiences::run(*args).await,
            Command::Nudges(args) => cmd::nudges::run(*args).await,
            Command::Dev(args) => cmd::dev::run(*args).await,
            Command::Send(args) => cmd::send::run(args).await,
            Command::Loadgen(args) => cmd::loadgen::run_loadgen(*args).await,
            Command::Topics(topics) => cmd::topics::run(topics).await,
            Command::Kafka(kafka) => cmd::kafka::run(kafka).await,
            Command::Spool(spool) => cmd::spool::run(spool).await,
            Command::Docs(args) => cmd::docs::run(args),
        }
    });
    // Don't wait for stray blocking tasks (e.g. a metadata call against a dead broker).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    exit_code(code)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
