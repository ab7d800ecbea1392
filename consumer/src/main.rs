/// A record allocates and frees many small buffers (the envelope, Redis commands and replies, the
/// HTTP request and response); mimalloc's per-thread free lists spend less of a record's CPU on
/// that than glibc's allocator (BENCHMARKS.md, `consumer`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use consumer::cli::{Cli, Command};
use consumer::config::Settings;
use consumer::{startup, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("consumer: {e}");
            std::process::exit(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            telemetry::init(settings.telemetry.log_format);
            startup::runtime(settings.processing.threads)?.block_on(run(settings))
        }
        Command::Operator(command) => {
            if command.reports_on_stdout() {
                telemetry::init_for_operator(settings.telemetry.log_format);
            } else {
                telemetry::init(settings.telemetry.log_format);
            }
            // Operator commands read Kafka synchronously in places: a pool, whatever the setting.
            let runtime = startup::runtime(0)?;
            exit(runtime.block_on(command.run(&settings)))
        }
    }
}

/// Ends an operator command: its exit code, or 2 with the error on one line.
fn exit(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("consumer: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app =
        match startup::Application::build(settings, prometheus::Registry::new(), shutdown.clone())
            .await
        {
            Ok(app) => app,
            Err(e) => {
                // Start-up errors (rules file with line numbers, unreachable Redis) as one line.
                eprintln!("consumer: {e:#}");
                std::process::exit(2);
            }
        };
    tracing::info!(port = app.port(), "consumer running");
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
