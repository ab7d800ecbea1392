//! Wiring: builds every part from the settings, and runs them until shutdown.
//!
//! [`Services`] holds the parts a record needs (used by `run`, by tests that call
//! `process()` directly, and nowhere else); [`Application`] adds the Kafka loop, the hold topics'
//! releaser ([`crate::quota`]), the rules watcher and the HTTP listener, all stopped by one cancellation token from `main`.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::actions::calls::RetryPolicy;
use crate::actions::media::MediaCache;
use crate::actions::sinks::Sinks;
use crate::actions::Actions;
use crate::apps::{AppsHandle, AppsWatcher};
use crate::ask::store::AskStore;
use crate::ask::Asker;
use crate::config::Settings;
use crate::dead_letter::DeadLetterWriter;
use crate::ledger::Ledger;
use crate::metrics::{register_process_metrics, Metrics};
use crate::outbound::Outbound;
use crate::pipeline::Pipeline;
use crate::processor::Processor;
use crate::quota::release::Releaser;
use crate::quota::Quota;
use crate::rules::{RulesContext, RulesWatcher};
use crate::store::Store;
use crate::token_broker::TokenBroker;
use crate::wechat_api::WechatApi;
use crate::window::ReplyWindows;

/// What the rules file may refer to under `settings`. With app files the set of apps changes
/// while running, so the rules' app names are not checked against it.
pub fn rules_context(settings: &Settings) -> RulesContext {
    let fixed_apps = settings.app_files.dir().is_none();
    RulesContext {
        apps: fixed_apps.then(|| settings.apps.keys().cloned().collect::<BTreeSet<_>>()),
        handoff_available: settings.handoff.publish || settings.handoff.webhook.is_some(),
        ask_backends: Some(settings.ask.backends.keys().cloned().collect()),
    }
}

/// The parts that process records.
#[derive(Debug)]
pub struct Services {
    pub store: Store,
    pub api: WechatApi,
    pub tokens: Arc<TokenBroker>,
    pub outbound: Outbound,
    pub processor: Processor,
    pub dead_letters: DeadLetterWriter,
    pub watcher: RulesWatcher,
    /// The rules file contents the watcher started from.
    pub rules_source: String,
    /// The apps served, and the watcher of their files.
    pub apps: AppsHandle,
    pub apps_watcher: AppsWatcher,
}

impl Services {
    /// Connects to Redis (failing when it is unreachable), loads the rules (failing with a
    /// line-numbered message), and builds the rest.
    pub async fn build(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Services> {
        let (watcher, rules_source) = RulesWatcher::initial(
            settings.rules.path.clone(),
            settings.rules.reload_interval,
            rules_context(settings),
            metrics.clone(),
        )?;
        let (apps, apps_seen) = crate::apps::load(settings)
            .map_err(|problems| anyhow::anyhow!("invalid app configuration: {problems}"))?;
        metrics.apps.set(apps.len() as i64);
        let apps = AppsHandle::new(apps);
        let r = &settings.redis;
        let store = Store::connect(r).await?;
        let w = &settings.wechat;
        let api = WechatApi::new(w.base_url.base(), w.timeout, metrics.clone())?;
        let tokens = Arc::new(TokenBroker::new(
            settings,
            apps.clone(),
            store.clone(),
            api.clone(),
            metrics.clone(),
        ));
        let outbound = Outbound::new(&settings.kafka)?;
        let h = &settings.handoff;
        let sinks = Sinks::new(
            outbound.clone(),
            settings.forward.timeout,
            h.publish.then(|| settings.kafka.handoff_topic.clone()),
            h.webhook.as_ref().map(|url| url.as_str().to_owned()),
        )?;
        let ask = Asker::new(
            &settings.ask,
            AskStore::new(
                store.clone(),
                settings.ask.answer_ttl,
                settings.ledger.entry_ttl,
                settings.ask.memory.turns,
                settings.ask.memory.ttl,
            ),
            metrics.clone(),
        )?;
        let actions = Actions {
            api: api.clone(),
            tokens: Arc::clone(&tokens),
            ledger: Ledger::new(store.clone(), &settings.ledger),
            windows: ReplyWindows::new(store.clone(), settings.window.enabled),
            media: MediaCache::new(store.clone(), api.clone(), w.media_ttl),
            sinks,
            policy: RetryPolicy::from_settings(w),
            metrics: metrics.clone(),
            show_typing: true,
            shutdown: CancellationToken::new(),
            ask,
        };
        let processor = Processor {
            rules: watcher.handle.clone(),
            actions,
            apps: apps.clone(),
            metrics: metrics.clone(),
            quota: Quota::new(settings, store.clone(), outbound.clone(), metrics.clone()),
        };
        let dead_letters = DeadLetterWriter {
            outbound: outbound.clone(),
            topic: settings.kafka.dead_letter_topic.clone(),
            group: settings.kafka.group_id.clone(),
        };
        let apps_watcher = AppsWatcher {
            settings: settings.clone(),
            handle: apps.clone(),
            tokens: Arc::clone(&tokens),
            metrics: metrics.clone(),
            seen: apps_seen,
        };
        Ok(Services {
            apps,
            apps_watcher,
            store,
            api,
            tokens,
            outbound,
            processor,
            dead_letters,
            watcher,
            rules_source,
        })
    }
}

/// The running service.
pub struct Application {
    port: u16,
    server: Server,
    pipeline: Pipeline,
    releaser: Releaser,
    watcher: RulesWatcher,
    rules_source: String,
    apps_watcher: AppsWatcher,
    outbound: Outbound,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Builds everything; `shutdown` stops it.
    pub async fn build(
        settings: Settings,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Application> {
        register_process_metrics(&registry);
        let metrics = Metrics::new(&registry)?;
        let mut services = Services::build(&settings, &metrics).await?;
        services.processor.actions.shutdown = shutdown.clone();
        // `consumer setup` runs without the apps in a deployment (no AppSecret there): the hold
        // topics of this process's apps are made here. Not fatal: without them only a paused
        // app's records wait (retried), and the warning says what to run.
        let apps = services.apps.all();
        let app_names: Vec<&str> = apps.keys().map(String::as_str).collect();
        match crate::operator::setup::create_hold_topics(&settings.kafka, &app_names).await {
            Ok(report) if report.differs() => {
                tracing::warn!(report = %report.render(), "a hold topic differs from the configuration")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot create the apps' hold topics; run `consumer setup` with the apps configured"
            ),
        }
        let releaser = Releaser::new(
            &settings,
            services.processor.clone(),
            services.dead_letters.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?;
        let pipeline = Pipeline::new(
            &settings,
            services.processor,
            services.dead_letters,
            metrics,
            shutdown.clone(),
        )?;
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let readiness = crate::http::Readiness {
            consuming: Arc::clone(&pipeline.running),
            joined: Arc::clone(&pipeline.joined),
            store: services.store.clone(),
        };
        let server = crate::http::server(listener, registry, readiness)?;
        Ok(Application {
            port,
            server,
            pipeline,
            releaser,
            watcher: services.watcher,
            rules_source: services.rules_source,
            apps_watcher: services.apps_watcher,
            outbound: services.outbound,
            shutdown,
        })
    }

    /// The port of `/healthz`, `/readyz`, `/metrics`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until the shutdown token fires: then finishes records in progress, commits, leaves
    /// the group, flushes the producer and stops the HTTP listener.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let server = self.server.handle();
        tokio::spawn(self.server);
        let watcher = tokio::spawn(self.watcher.run(self.rules_source, self.shutdown.clone()));
        let releaser = tokio::spawn(self.releaser.run());
        let apps_watcher = tokio::spawn(self.apps_watcher.run(self.shutdown.clone()));
        let result = self.pipeline.run().await;
        match releaser.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the hold topics' consumer failed"),
            Err(e) => tracing::warn!(error = %e, "the hold topics' consumer stopped abnormally"),
        }
        self.outbound.flush(Duration::from_secs(5));
        let _ = watcher.await;
        let _ = apps_watcher.await;
        server.stop(true).await;
        tracing::info!("consumer stopped");
        result
    }
}

/// The runtime `consumer run` processes records on, for `processing.threads`.
///
/// A record spends its time waiting on Redis, Kafka and WeChat's API, and what it costs is its
/// wake-ups: on one thread a wake-up is a queue push and the next poll, while a work-stealing
/// runtime also hands tasks between threads (notifying and parking its workers, with a futex each
/// time). One thread took about two thirds of the CPU per record of two for the same replies per
/// second (BENCHMARKS.md, `consumer`); a process that needs more than a core is better joined by
/// another process of the group than given more threads.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder
    };
    builder.enable_all().build()
}
