//! One whole pipeline per test: the simulator's API, `ingest`, N `consumer` processes, and the
//! simulator's push side, with this test's own topics, consumer group, Redis key prefixes, ports
//! and rules file. Everything is configured the way operators do it: `INGEST__…` and
//! `CONSUMER__…` environment variables over the project's default configuration files.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use tokio::process::Child;

use super::procs::{self, Proc};
use super::rules::RULES;

/// The app as configured in ingest and consumer, with the published test secrets of the WeChat
/// documentation (vector V1) — the simulator's push side defaults to the same.
pub const APP: &str = "demo";
pub const APPID: &str = "wxba5fad812f8e6fb9";
const ORIGINAL_ID: &str = "gh_97417a04a28d";
const TOKEN: &str = "AAAAA";
const AES_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const SECRET: &str = "e2e-app-secret";
pub const INBOUND_PARTITIONS: i32 = 6;

pub fn kafka_brokers() -> String {
    std::env::var("WXKF_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The Redis a pipeline's services use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redis {
    /// The single Redis of `WXKF_TEST_REDIS`.
    Single,
    /// A Redis Cluster: its node URLs, comma-separated (`redis.cluster_nodes`).
    Cluster(String),
}

impl Redis {
    /// The settings of `service` (`INGEST` or `CONSUMER`) that point it at this Redis.
    fn env(&self, service: &str) -> Vec<(String, String)> {
        match self {
            Redis::Single => vec![(format!("{service}__REDIS__URL"), redis_url())],
            Redis::Cluster(nodes) => vec![
                // The defaults file sets `url`; a cluster deployment clears it.
                (format!("{service}__REDIS__URL"), String::new()),
                (format!("{service}__REDIS__CLUSTER_NODES"), nodes.clone()),
            ],
        }
    }

    /// The node URLs to clean up after a test.
    fn urls(&self) -> Vec<String> {
        match self {
            Redis::Single => vec![redis_url()],
            Redis::Cluster(nodes) => nodes.split(',').map(str::to_owned).collect(),
        }
    }
}

/// A running pipeline. Dropping it kills every process (SIGKILL).
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub id: String,
    /// Logs, the rules file and the push records of this test.
    pub dir: PathBuf,
    pub inbound_topic: String,
    /// The topic ingest publishes to and the one the consumers read, with its partition count:
    /// `inbound_topic` unless a scenario moved them ([`Pipeline::create_inbound_topic`]).
    pub ingest_topic: String,
    pub consumer_topic: (String, i32),
    /// Topics created besides the three of `consumer setup`, deleted with them.
    more_topics: Vec<String>,
    pub redis: Redis,
    pub dead_letter_topic: String,
    pub group: String,
    pub sim_url: String,
    pub ingest_port: u16,
    pub ingest: Option<Proc>,
    pub consumers: Vec<(Proc, u16)>,
    pub http: reqwest::Client,
    _sim: Child,
    /// Settings of this scenario's consumers over the defaults below (`CONSUMER__…` variables).
    consumer_overrides: Vec<(String, String)>,
    consumer_seq: usize,
    ingest_starts: usize,
    /// The consumers have an `ask` backend `assistant`: the simulator's chat model.
    ask_backend: bool,
}

impl Pipeline {
    /// Starts the simulator API, creates the topics (`consumer setup`), starts ingest and
    /// `consumers` consumer processes, and waits until each answers.
    pub async fn start(name: &str, consumers: usize, sim_args: &[&str]) -> Pipeline {
        Pipeline::launch(Redis::Single, name, consumers, sim_args, &[], RULES, false).await
    }

    /// As [`Pipeline::start`], with consumer settings of the scenario's own over the defaults
    /// (`CONSUMER__…` environment variables).
    pub async fn start_tuned(
        name: &str,
        consumers: usize,
        sim_args: &[&str],
        consumer_overrides: &[(&str, &str)],
    ) -> Pipeline {
        Pipeline::launch(
            Redis::Single,
            name,
            consumers,
            sim_args,
            consumer_overrides,
            RULES,
            false,
        )
        .await
    }

    /// As [`Pipeline::start`], with ingest and the consumers on `redis`.
    pub async fn start_on(
        redis: Redis,
        name: &str,
        consumers: usize,
        sim_args: &[&str],
    ) -> Pipeline {
        Pipeline::launch(redis, name, consumers, sim_args, &[], RULES, false).await
    }

    /// As [`Pipeline::start`], with other rules, and (`ask_backend`) the simulator's chat model
    /// as the consumers' `ask` backend `assistant`.
    pub async fn start_with(
        name: &str,
        consumers: usize,
        sim_args: &[&str],
        rules: &str,
        ask_backend: bool,
    ) -> Pipeline {
        Pipeline::launch(
            Redis::Single,
            name,
            consumers,
            sim_args,
            &[],
            rules,
            ask_backend,
        )
        .await
    }

    async fn launch(
        redis: Redis,
        name: &str,
        consumers: usize,
        sim_args: &[&str],
        consumer_overrides: &[(&str, &str)],
        rules: &str,
        ask_backend: bool,
    ) -> Pipeline {
        let id = format!(
            "e2e-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let dir = procs::ingest_bin()
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("e2e")
            .join(&id);
        std::fs::create_dir_all(&dir).expect("log directory");
        std::fs::write(dir.join("rules.toml"), rules).expect("rules file");
        std::fs::create_dir_all(dir.join("apps")).expect("app files directory");
        let mut args = vec!["--app".to_owned(), format!("{APPID}={SECRET}")];
        args.extend(sim_args.iter().map(|a| (*a).to_owned()));
        let (sim, sim_url) = procs::start_sim_api(&dir, &args).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut pipeline = Pipeline {
            name: name.to_owned(),
            inbound_topic: format!("{id}.inbound"),
            ingest_topic: format!("{id}.inbound"),
            consumer_topic: (format!("{id}.inbound"), INBOUND_PARTITIONS),
            more_topics: Vec::new(),
            redis,
            dead_letter_topic: format!("{id}.dead-letter"),
            group: format!("{id}-group"),
            sim_url,
            ingest_port: procs::free_port(),
            ingest: None,
            consumers: Vec::new(),
            http,
            _sim: sim,
            consumer_overrides: consumer_overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            consumer_seq: 0,
            ingest_starts: 0,
            ask_backend,
            id,
            dir,
        };
        let setup = procs::run(
            "consumer setup",
            &procs::consumer_bin(),
            &["setup"],
            &pipeline.consumer_env(0),
        )
        .await;
        assert!(
            setup.contains(&pipeline.inbound_topic),
            "consumer setup: {setup}"
        );
        pipeline.start_ingest().await;
        for _ in 0..consumers {
            pipeline.start_consumer().await;
        }
        pipeline.wait_group_stable().await;
        pipeline
    }

    /// Waits until every running consumer is a member of the group with partitions of its own,
    /// so the first rebalances happen before the pushes, not in the middle of a scenario.
    pub async fn wait_group_stable(&self) {
        let admin: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .expect("Kafka client");
        let wanted = self.consumers.len();
        let wait = super::Deadline::new(
            Duration::from_secs(60),
            format!("{wanted} consumers sharing the inbound partitions"),
        );
        loop {
            let shares = tokio::task::block_in_place(|| {
                let list = admin.fetch_group_list(Some(&self.group), Duration::from_secs(3));
                let Ok(list) = list else { return Vec::new() };
                list.groups()
                    .iter()
                    .filter(|g| g.state() == "Stable")
                    .flat_map(|g| g.members().iter())
                    .map(|m| m.assignment().map_or(0, assigned_partitions))
                    .collect::<Vec<usize>>()
            });
            let total: usize = shares.iter().sum();
            if shares.len() == wanted
                && shares.iter().all(|n| *n > 0)
                && total == self.consumer_topic.1 as usize
            {
                return;
            }
            wait.tick().await;
        }
    }

    fn consumer_env(&self, port: u16) -> Vec<(String, String)> {
        let id = &self.id;
        let root = procs::repo_root();
        [
            ("APP_ENVIRONMENT", "e2e".to_owned()),
            (
                "CONSUMER_CONFIG_DIR",
                root.join("config").display().to_string(),
            ),
            ("CONSUMER__SERVER__PORT", port.to_string()),
            ("CONSUMER__SERVER__SHUTDOWN_TIMEOUT", "5s".into()),
            ("CONSUMER__KAFKA__BROKERS", kafka_brokers()),
            ("CONSUMER__KAFKA__GROUP_ID", self.group.clone()),
            (
                "CONSUMER__KAFKA__INBOUND_TOPIC",
                self.consumer_topic.0.clone(),
            ),
            (
                "CONSUMER__KAFKA__DEAD_LETTER_TOPIC",
                self.dead_letter_topic.clone(),
            ),
            ("CONSUMER__KAFKA__HANDOFF_TOPIC", format!("{id}.handoff")),
            // The run's own hold topics; an app whose daily quota is spent (45009) pauses for
            // seconds, not until midnight.
            ("CONSUMER__KAFKA__HOLD_TOPIC_PREFIX", format!("{id}.hold.")),
            ("CONSUMER__QUOTA__PAUSE_FOR", "2s".into()),
            ("CONSUMER__QUOTA__CHECK_INTERVAL", "200ms".into()),
            // The broker's minimum; a killed member's partitions move after this long.
            ("CONSUMER__KAFKA__SESSION_TIMEOUT", "6s".into()),
            ("CONSUMER__KAFKA__COMMIT_INTERVAL", "500ms".into()),
            (
                "CONSUMER__KAFKA__TOPICS__INBOUND_PARTITIONS",
                self.consumer_topic.1.to_string(),
            ),
            (
                "CONSUMER__KAFKA__TOPICS__DEAD_LETTER_PARTITIONS",
                "1".into(),
            ),
            ("CONSUMER__KAFKA__TOPICS__HANDOFF_PARTITIONS", "1".into()),
            (
                "CONSUMER__PROCESSING__RETRY_INITIAL_BACKOFF",
                "100ms".into(),
            ),
            ("CONSUMER__PROCESSING__RETRY_MAX_BACKOFF", "2s".into()),
            ("CONSUMER__REDIS__KEY_PREFIX", format!("{id}:")),
            ("CONSUMER__WECHAT__BASE_URL", self.sim_url.clone()),
            // Short bounds so the slow answers of a fault storm and a killed sender's lease
            // resolve within the test; their relations are what the consumer checks at start.
            ("CONSUMER__WECHAT__TIMEOUT", "2s".into()),
            ("CONSUMER__WECHAT__TOKEN_LOCK_LEASE", "3s".into()),
            ("CONSUMER__WECHAT__TOKEN_WAIT", "3s".into()),
            ("CONSUMER__WECHAT__MINUTE_QUOTA_BACKOFF", "1s".into()),
            ("CONSUMER__WECHAT__RETRY_INITIAL_BACKOFF", "100ms".into()),
            ("CONSUMER__WECHAT__RETRY_MAX_BACKOFF", "1s".into()),
            ("CONSUMER__LEDGER__SENDING_LEASE", "6s".into()),
            (
                "CONSUMER__RULES__PATH",
                self.dir.join("rules.toml").display().to_string(),
            ),
            // Empty unless a scenario writes app files (`app_files.rs`).
            (
                "CONSUMER__APP_FILES__DIR",
                self.apps_dir().display().to_string(),
            ),
            ("CONSUMER__APP_FILES__RELOAD_INTERVAL", "200ms".into()),
            ("CONSUMER__APPS__DEMO__APPID", APPID.into()),
            ("CONSUMER__APPS__DEMO__SECRET", SECRET.into()),
            // On the three-broker cluster (`cluster.rs`) the topics are replicated as in
            // production; the brokers' default min.insync.replicas is 2.
            (
                "CONSUMER__KAFKA__TOPICS__REPLICATION_FACTOR",
                if kafka_brokers().contains(',') {
                    "3"
                } else {
                    "1"
                }
                .into(),
            ),
        ]
        .into_iter()
        .chain(
            [
                (
                    "CONSUMER__ASK__BACKENDS__ASSISTANT__KIND",
                    "chat".to_owned(),
                ),
                (
                    "CONSUMER__ASK__BACKENDS__ASSISTANT__BASE_URL",
                    format!("{}/v1", self.sim_url),
                ),
                (
                    "CONSUMER__ASK__BACKENDS__ASSISTANT__MODEL",
                    "sim-echo".into(),
                ),
            ]
            .into_iter()
            .filter(|_| self.ask_backend),
        )
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.redis.env("CONSUMER"))
        .filter(|(k, _)| !self.consumer_overrides.iter().any(|(o, _)| o == k))
        .chain(self.consumer_overrides.iter().cloned())
        .collect()
    }

    /// The directory of app files both services watch; empty at start.
    pub fn apps_dir(&self) -> PathBuf {
        self.dir.join("apps")
    }

    fn ingest_env(&self) -> Vec<(String, String)> {
        let root = procs::repo_root();
        [
            ("APP_ENVIRONMENT", "e2e".to_owned()),
            (
                "INGEST_CONFIG_DIR",
                root.join("config").display().to_string(),
            ),
            ("INGEST__SERVER__PORT", self.ingest_port.to_string()),
            ("INGEST__SERVER__WORKERS", "2".into()),
            ("INGEST__KAFKA__BROKERS", kafka_brokers()),
            ("INGEST__KAFKA__TOPIC", self.ingest_topic.clone()),
            ("INGEST__REDIS__KEY_PREFIX", format!("{}:dedup:", self.id)),
            // The same spool across restarts of this pipeline's ingest: a restart drains it.
            (
                "INGEST__SPOOL__DIR",
                self.dir.join("spool").display().to_string(),
            ),
            (
                "INGEST__APP_FILES__DIR",
                self.apps_dir().display().to_string(),
            ),
            ("INGEST__APP_FILES__RELOAD_INTERVAL", "200ms".into()),
            ("INGEST__APPS__DEMO__APPID", APPID.into()),
            ("INGEST__APPS__DEMO__ORIGINAL_ID", ORIGINAL_ID.into()),
            ("INGEST__APPS__DEMO__TOKEN", TOKEN.into()),
            ("INGEST__APPS__DEMO__ENCODING_AES_KEY", AES_KEY.into()),
            ("INGEST__APPS__DEMO__ANSWER", "success".into()),
            // The simulator pushes in every mode, plaintext included.
            ("INGEST__APPS__DEMO__ALLOW_PLAINTEXT", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.redis.env("INGEST"))
        .collect()
    }

    /// Creates another inbound topic with `partitions` partitions through `consumer setup`, as an
    /// operator does (the dead-letter and hand-off topics exist already and are left as they are).
    pub async fn create_inbound_topic(&mut self, topic: &str, partitions: i32) {
        let mut env = self.consumer_env(0);
        for (key, value) in &mut env {
            match key.as_str() {
                "CONSUMER__KAFKA__INBOUND_TOPIC" => *value = topic.to_owned(),
                "CONSUMER__KAFKA__TOPICS__INBOUND_PARTITIONS" => *value = partitions.to_string(),
                _ => {}
            }
        }
        let setup = procs::run("consumer setup", &procs::consumer_bin(), &["setup"], &env).await;
        assert!(setup.contains(topic), "consumer setup: {setup}");
        self.more_topics.push(topic.to_owned());
    }

    /// Stops ingest as an orchestrator does (SIGTERM: it finishes the pushes in hand, drains
    /// what it can and exits) and waits until it is gone.
    pub async fn stop_ingest(&mut self) {
        if let Some(mut ingest) = self.ingest.take() {
            ingest.terminate(Duration::from_secs(30)).await;
        }
    }

    /// Stops every consumer with SIGTERM (each commits what it finished and leaves the group).
    pub async fn stop_consumers(&mut self) {
        for (mut consumer, _) in std::mem::take(&mut self.consumers) {
            consumer.terminate(Duration::from_secs(30)).await;
        }
    }

    /// Starts ingest on its port (the same port after a restart) and waits for `/healthz`.
    pub async fn start_ingest(&mut self) {
        self.ingest_starts += 1;
        let name = format!("ingest-{}", self.ingest_starts);
        let proc = Proc::start(
            &name,
            &self.dir,
            &procs::ingest_bin(),
            &[],
            &self.ingest_env(),
        );
        let url = format!("http://127.0.0.1:{}/healthz", self.ingest_port);
        procs::wait_http(&self.http, &url, Duration::from_secs(30), &name).await;
        self.ingest = Some(proc);
    }

    /// Starts one more consumer and waits until it consumes (`/readyz`); returns its index.
    pub async fn start_consumer(&mut self) -> usize {
        self.consumer_seq += 1;
        let port = procs::free_port();
        let name = format!("consumer-{}", self.consumer_seq);
        let mut proc = Proc::start(
            &name,
            &self.dir,
            &procs::consumer_bin(),
            &["run".to_owned()],
            &self.consumer_env(port),
        );
        let url = format!("http://127.0.0.1:{port}/readyz");
        let ready = tokio::time::timeout(
            Duration::from_secs(30),
            procs::wait_http(&self.http, &url, Duration::from_secs(30), &name),
        )
        .await;
        proc.assert_running();
        ready
            .unwrap_or_else(|_| panic!("{name} not ready within 30 s; log {}", proc.log.display()));
        self.consumers.push((proc, port));
        self.consumers.len() - 1
    }

    /// Fails (with the log's tail) if ingest or a consumer exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(ingest) = &mut self.ingest {
            ingest.assert_running();
        }
        for (consumer, _) in &mut self.consumers {
            consumer.assert_running();
        }
    }

    /// `kill -9` of consumer `index`; it leaves the list.
    pub async fn kill_consumer(&mut self, index: usize) {
        let (mut proc, _) = self.consumers.remove(index);
        proc.kill9().await;
    }

    /// Stops consumer `index` with SIGTERM, as a rolling restart does, and waits for its clean
    /// exit; it leaves the list.
    pub async fn terminate_consumer(&mut self, index: usize) {
        let (mut proc, _) = self.consumers.remove(index);
        proc.terminate(Duration::from_secs(30)).await;
    }

    /// `kill -9` of ingest.
    pub async fn kill_ingest(&mut self) {
        if let Some(mut ingest) = self.ingest.take() {
            ingest.kill9().await;
        }
    }

    /// The sum of `consumer_records_total` of consumer `index` (0 when it does not answer).
    pub async fn consumer_records(&self, index: usize) -> f64 {
        self.consumer_metric(index, "consumer_records_total", "")
            .await
    }

    /// The sum over the series of metric `name` whose labels contain `labels` (e.g.
    /// `result="duplicate"`), read from consumer `index`'s `/metrics`; 0 when it does not answer.
    pub async fn consumer_metric(&self, index: usize, name: &str, labels: &str) -> f64 {
        self.scrape(self.consumers[index].1, name, labels).await
    }

    /// As [`Pipeline::consumer_metric`], from ingest's `/metrics`.
    pub async fn ingest_metric(&self, name: &str, labels: &str) -> f64 {
        self.scrape(self.ingest_port, name, labels).await
    }

    async fn scrape(&self, port: u16, name: &str, labels: &str) -> f64 {
        let Ok(response) = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(labels))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Changes the simulator's faults (`POST /sim/faults`).
    pub async fn sim_faults(&self, update: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/sim/faults", self.sim_url))
            .json(&update)
            .send()
            .await
            .expect("wechat-sim api answers");
        assert!(response.status().is_success(), "POST /sim/faults {update}");
    }

    /// `GET /sim/stats`.
    pub async fn sim_stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/sim/stats", self.sim_url))
            .send()
            .await
            .expect("wechat-sim api answers")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for Pipeline {
    /// After a passing scenario: kills the processes first (fields drop after this), then removes
    /// the scenario's topics, Redis keys and logs. After a failure (or with `WXKF_E2E_KEEP=1`)
    /// everything stays for a look.
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("WXKF_E2E_KEEP").is_some() {
            eprintln!(
                "logs and audit data of {}: {}",
                self.name,
                self.dir.display()
            );
            return;
        }
        if let Some(ingest) = &mut self.ingest {
            ingest.kill_now();
        }
        for (consumer, _) in &mut self.consumers {
            consumer.kill_now();
        }
        let mut topics = vec![
            self.inbound_topic.clone(),
            self.dead_letter_topic.clone(),
            format!("{}.handoff", self.id),
        ];
        topics.extend(self.more_topics.iter().cloned());
        let admin: Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, _> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .create();
        if let Ok(admin) = admin {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options =
                rdkafka::admin::AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
            let _ = futures::executor::block_on(admin.delete_topics(&names, &options));
        }
        // On a cluster, each node holds its own keys (replicas refuse the DEL, harmlessly), and
        // one DEL may not span slots.
        let per_key = matches!(self.redis, Redis::Cluster(_));
        for url in self.redis.urls() {
            let Ok(mut conn) = redis::Client::open(url)
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            else {
                continue;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.id))
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(if per_key { 1 } else { 500 }) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The number of partitions in a consumer-protocol assignment (Kafka's `ConsumerProtocol
/// Assignment`: version, then per topic its name and partition ids).
fn assigned_partitions(bytes: &[u8]) -> usize {
    let int = |at: usize, len: usize| -> Option<i64> {
        let b = bytes.get(at..at + len)?;
        Some(b.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x)))
    };
    let mut at = 2;
    let Some(topics) = int(at, 4) else { return 0 };
    at += 4;
    let mut total = 0;
    for _ in 0..topics {
        let Some(name_len) = int(at, 2) else { return 0 };
        at += 2 + name_len as usize;
        let Some(partitions) = int(at, 4) else {
            return 0;
        };
        at += 4 + 4 * partitions as usize;
        total += partitions as usize;
    }
    total
}
