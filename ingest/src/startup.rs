//! Building and running the HTTP server: the same code path for `main` and for tests.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use prometheus::Registry;

use crate::config::{AppSettings, Settings, TlsSettings};
use crate::dedup::DedupStore;
use crate::metrics::{register_process_metrics, Metrics};
use crate::publisher::Publisher;
use crate::routes;

/// One configured mini program, ready for the request path (key decoded once, at start).
#[derive(Debug, Clone)]
pub struct MiniProgram {
    pub name: String,
    pub settings: AppSettings,
    pub aes_key: Option<common::crypto::AesKey>,
}

/// Everything a request handler needs. Each worker has its own: the Redis connection is opened on
/// the worker's thread and driven there, so a dedup round trip never wakes another thread; the
/// producer, the metrics and the configuration are shared.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub apps: Arc<HashMap<String, MiniProgram>>,
    pub dedup: DedupStore,
    pub publisher: Arc<Publisher>,
    pub metrics: Metrics,
    pub registry: Registry,
}

/// A bound, not yet running, ingest server.
pub struct Application {
    port: u16,
    server: Server,
    publisher: Arc<Publisher>,
    settings: Settings,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener (port 0 picks a free port, for tests) and builds the server.
    pub fn build(settings: Settings, registry: Registry) -> anyhow::Result<Application> {
        settings.validate()?;
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let port = listener.local_addr()?.port();
        let publisher =
            Arc::new(Publisher::new(&settings.kafka).context("creating the Kafka producer")?);
        let dedup = Arc::new(DedupStore::new(settings.redis.clone()).context("configuring Redis")?);
        let metrics = Metrics::new(&registry).context("registering metrics")?;
        register_process_metrics(&registry);
        let apps: HashMap<String, MiniProgram> = settings
            .apps
            .iter()
            .map(|(name, app)| {
                let program = MiniProgram {
                    name: name.clone(),
                    aes_key: app.aes_key(),
                    settings: app.clone(),
                };
                (name.clone(), program)
            })
            .collect();
        let apps = Arc::new(apps);
        let worker_settings = settings.clone();
        let worker_publisher = publisher.clone();
        let mut server = HttpServer::new(move || {
            let state = web::Data::new(AppState {
                settings: worker_settings.clone(),
                apps: apps.clone(),
                dedup: dedup.with_own_connection(),
                publisher: worker_publisher.clone(),
                metrics: metrics.clone(),
                registry: registry.clone(),
            });
            App::new().app_data(state).configure(routes::configure)
        })
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs().max(1));
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = match &settings.server.tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls_config(tls)?)?,
            None => server.listen(listener)?,
        }
        .run();
        Ok(Application {
            port,
            server,
            publisher,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM/SIGINT or the handle): stops accepting, lets in-flight pushes
    /// finish, then flushes the producer so nothing acknowledged-to-be is left in its queue.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        let timeout = self.settings.kafka.delivery_timeout;
        let publisher = self.publisher;
        tokio::task::spawn_blocking(move || publisher.flush(timeout))
            .await?
            .context("flushing the Kafka producer")?;
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// The rustls server configuration from the PEM files; errors name the file.
fn tls_config(tls: &TlsSettings) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", tls.cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", tls.cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .with_context(|| format!("reading the private key {}", tls.key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the private key do not form a usable pair")
}
