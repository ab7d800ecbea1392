/// Every push allocates and frees a few dozen small buffers (the body, the decrypted text, the
/// envelope, Redis and Kafka frames) across two worker threads; mimalloc's per-thread free lists
/// spend less of a push's CPU on that than glibc's allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ingest::config::Settings;
use ingest::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ingest: {e}");
            std::process::exit(2);
        }
    };
    telemetry::init(settings.telemetry.log_format);
    let app = Application::build(settings.clone(), prometheus::Registry::new())?;
    tracing::info!(
        port = app.port(),
        topic = %settings.kafka.topic,
        apps = app.apps().all().len(),
        "ingest listening"
    );
    app.run_until_stopped().await
}
