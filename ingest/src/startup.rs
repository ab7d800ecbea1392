//! Building and running the HTTP server: the same code path for `main` and for tests.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use prometheus::Registry;

use crate::apps::AppsWatcher;
use crate::config::{Settings, TlsSettings};
use crate::dedup::DedupStore;
use crate::durable::DurableLog;
use crate::intake::Intake;
use crate::metrics::{register_process_metrics, Metrics};
use crate::publisher::Publisher;
use crate::routes;
use crate::spool::{Drainer, Spool};
use crate::state::{AppState, AppsHandle};

/// Bound on asking each configured Redis node at start whether it runs in cluster mode.
const REDIS_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A bound, not yet running, ingest server.
pub struct Application {
    port: u16,
    server: Server,
    publisher: Arc<Publisher>,
    /// Started with the server, in [`Application::run_until_stopped`], with its own producer.
    drainer: Option<(Drainer, Arc<Publisher>)>,
    /// Started with the server; stopped when it stops.
    watcher: AppsWatcher,
    apps: AppsHandle,
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
        // A node of the wrong kind refuses the start; one that does not answer is only a
        // warning, since pushes fail open without Redis.
        let redis_target = settings.redis.target()?;
        for warning in common::redis::check_nodes(&redis_target, REDIS_CHECK_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?
        {
            tracing::warn!("{warning}; pushes fail open until it does");
        }
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
        let (spool, drainer) = if settings.spool.enabled {
            let (spool, drainer) = Spool::open(&settings.spool, metrics.spool.clone())
                .with_context(|| {
                    format!("opening the spool in {}", settings.spool.dir.display())
                })?;
            let publisher = Publisher::unbounded(&settings.kafka)
                .context("creating the spool drainer's Kafka producer")?;
            (Some(spool), Some((drainer, Arc::new(publisher))))
        } else {
            (None, None)
        };
        let log = Arc::new(DurableLog::new(
            publisher.clone(),
            spool,
            settings.kafka.delivery_timeout,
            settings.spool.write_timeout,
            metrics.clone(),
        ));
        let (apps, loaded) = crate::apps::load(&settings)
            .map_err(|problems| anyhow::anyhow!("invalid app configuration: {problems}"))?;
        crate::apps::warn_plaintext(&apps);
        metrics.apps.set(apps.len() as i64);
        let apps = AppsHandle::new(apps);
        let watcher = AppsWatcher {
            settings: settings.clone(),
            handle: apps.clone(),
            metrics: metrics.clone(),
            seen: loaded,
        };
        let handle_for_tests = apps.clone();
        let worker_settings = settings.clone();
        let server = HttpServer::new(move || {
            let state = web::Data::new(AppState {
                settings: worker_settings.clone(),
                apps: apps.clone(),
                intake: Intake::new(
                    dedup.with_own_connection(),
                    log.clone(),
                    metrics.clone(),
                    worker_settings.redis.pending_poll,
                ),
                metrics: metrics.clone(),
                registry: registry.clone(),
            });
            App::new().app_data(state).configure(routes::configure)
        })
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs().max(1))
        .workers(settings.server.effective_workers());
        let server = match &settings.server.tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls_config(tls)?)?,
            None => server.listen(listener)?,
        }
        .run();
        Ok(Application {
            port,
            server,
            publisher,
            drainer,
            watcher,
            apps: handle_for_tests,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The apps being served (swapped by the app-file watcher while running).
    pub fn apps(&self) -> AppsHandle {
        self.apps.clone()
    }

    /// A handle to stop the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM/SIGINT or the handle): stops accepting, lets in-flight pushes
    /// finish, drains the spool for at most `spool.shutdown_drain`, then flushes the producer so
    /// nothing acknowledged-to-be is left in its queue. What the spool still holds stays on disk
    /// for the next start.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let drainer = self
            .drainer
            .map(|(drainer, publisher)| drainer.spawn(publisher));
        let watching = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn(self.watcher.run(watching.clone()));
        let handle = self.server.handle();
        let mut server = self.server;
        let health = self.publisher.clone();
        let fatal = tokio::select! {
            served = &mut server => {
                served?;
                false
            }
            () = health.health().fatal_error() => {
                // The producer can never produce again: stop taking pushes and exit with an error
                // so that the orchestrator starts a fresh process (the spool is recovered then).
                handle.stop(true).await;
                server.await?;
                true
            }
        };
        watching.cancel();
        let _ = watcher.await;
        if let Some(drainer) = drainer {
            drainer.finish(self.settings.spool.shutdown_drain).await;
        }
        let timeout = self.settings.kafka.delivery_timeout;
        let publisher = self.publisher;
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(timeout)).await?;
        if let Err(e) = flushed {
            // Every push is answered by now, so what the producer still holds was never
            // acknowledged to WeChat: pushes answered 503, or spooled records that stay in the
            // spool until the next start drains them.
            tracing::warn!(error = %e, "records left unacknowledged in the Kafka producer at exit");
        }
        if fatal {
            anyhow::bail!("stopped because the Kafka producer hit a fatal error; start again");
        }
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
