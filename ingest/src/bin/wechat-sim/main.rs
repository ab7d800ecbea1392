//! `wechat-sim`: WeChat, simulated — for tests, demos and benchmarks of this pipeline.
//!
//! - `push`: sends pushes to `ingest` exactly as WeChat does (every mode and format, real
//!   signatures and encryption, a mix of message kinds and users), at a rate or a count, with
//!   WeChat's 5-second attempt timeout and retries; reports what was acknowledged and the ack
//!   latency distribution.
//! - `load`: the ingest benchmark's load generator: the same pushes, sealed before the clock
//!   starts and sent over keep-alive connections, open loop at a fixed rate or closed loop to
//!   saturation; reports its own CPU time and that of the processes it is told to watch.
//! - `api`: the WeChat server API the consumer calls (tokens, customer-service send, typing,
//!   media upload) with configurable latency and injected faults, recording every accepted send
//!   for tests to read back (`GET /sim/sends`). The end-to-end tests and the local demo run it.
//! - `bare`: a bare actix-web handler that answers every push `success`: the baseline the ingest
//!   benchmark is measured against.
//!
//! Run `cargo run --release -p ingest --bin wechat-sim -- <command> --help`.

mod api;
mod bare;
mod load;
mod push;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wechat-sim",
    about = "WeChat, simulated: pushes to ingest, and the API the consumer calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send pushes to ingest as WeChat does, and report what was acknowledged.
    Push(Box<push::Args>),
    /// Load ingest for a benchmark: pre-sealed pushes, keep-alive connections, fixed rate or
    /// saturation.
    Load(Box<load::Args>),
    /// Serve the WeChat API the consumer calls, with latency and faults; record every send.
    Api(Box<api::Args>),
    /// Answer every push `success` at once: the baseline for the ingest benchmark.
    Bare(bare::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Push(args) => push::run(*args),
        Command::Load(args) => load::run(*args),
        Command::Api(args) => api::run(*args),
        Command::Bare(args) => bare::run(args),
    }
}
