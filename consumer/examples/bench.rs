//! Throughput benchmark of one consumer process (see BENCHMARKS.md, section `consumer`).
//!
//! Starts a fake WeChat API that answers every send after a fixed latency (default 50 ms),
//! publishes one text message from each of N distinct users (default 10,000) to a fresh inbound
//! topic on the real Kafka, runs the real `consumer` binary (the release build next to this
//! example) against the real Redis, and reads the consumer's own `/metrics` until every record is
//! replied: replies per second, CPU seconds per record and resident memory.
//!
//! With `BENCH_ASK_MS` set, the rule is an `ask` instead of a text: the fake API also serves a
//! chat-completions endpoint that answers after that many milliseconds, and every reply is the
//! model's answer (the ask's limits at their defaults unless `BENCH_ASK_CONCURRENCY` is set).
//!
//! ```text
//! scripts/services.sh up
//! cargo build --release -p consumer --bin consumer --example bench
//! target/release/examples/bench            # BENCH_USERS, BENCH_LATENCY_MS, BENCH_KEYS to vary
//! BENCH_ASK_MS=500 target/release/examples/bench
//! ```
//!
//! On a Redis Cluster instead of the single Redis: `BENCH_REDIS_CLUSTER` with its node URLs
//! (`scripts/services.sh cluster-env`), and `BENCH_SENT_REPLICAS` for `ledger.sent_replicas`
//! (unset: the default, which waits for one replica on a cluster; 0: no wait).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use common::codec::Format;
use common::dedup::DedupKey;
use common::envelope::{record_key, DedupStatus, Envelope, EnvelopeV1};
use common::ids::{AppId, MsgId, OpenId};
use common::message::{Message, MessageBody};
use common::push::Mode;
use consumer::config::Settings;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake API: tokens at once, every send and typing after `latency`; the chat model's
/// answers after `thinking`.
fn fake_wechat(
    latency: Duration,
    thinking: Duration,
    sends: Arc<AtomicU64>,
) -> anyhow::Result<(u16, actix_web::dev::Server)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        let sends = Arc::clone(&sends);
        App::new()
            .route(
                "/cgi-bin/stable_token",
                web::post().to(|| async {
                    HttpResponse::Ok()
                        .json(serde_json::json!({"access_token": "BENCH", "expires_in": 7200}))
                }),
            )
            .route(
                "/cgi-bin/message/custom/typing",
                web::post().to(move || async move {
                    tokio::time::sleep(latency).await;
                    HttpResponse::Ok().json(serde_json::json!({"errcode": 0, "errmsg": "ok"}))
                }),
            )
            .route(
                "/v1/chat/completions",
                web::post().to(move || async move {
                    tokio::time::sleep(thinking).await;
                    HttpResponse::Ok().json(serde_json::json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi from the bench model"}}]
                    }))
                }),
            )
            .route(
                "/cgi-bin/message/custom/send",
                web::post().to(move || {
                    let sends = Arc::clone(&sends);
                    async move {
                        tokio::time::sleep(latency).await;
                        sends.fetch_add(1, Ordering::Relaxed);
                        HttpResponse::Ok().json(serde_json::json!({"errcode": 0, "errmsg": "ok"}))
                    }
                }),
            )
    })
    .workers(2)
    .backlog(4096)
    .max_connections(100_000)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((port, server))
}

fn envelope(user: usize, now: i64) -> EnvelopeV1 {
    let message = Message {
        to_user_name: "gh_bench".into(),
        from_user_name: OpenId::new(format!("o-bench-{user:05}")),
        create_time: now,
        body: MessageBody::Text {
            msg_id: MsgId::new(format!("{}", 10_000_000 + user)),
            content: "hello".into(),
        },
    };
    EnvelopeV1 {
        app: "demo".into(),
        appid: AppId::new("wxbench"),
        dedup_key: DedupKey::for_message("demo", &message),
        dedup: DedupStatus::Checked,
        received_at_ms: now * 1000,
        format: Format::Json,
        mode: Mode::Safe,
        payload: "{}".into(),
        message,
    }
}

/// A sample value from Prometheus text: the first line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = env_or("BENCH_USERS", 10_000);
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 50));
    let keys: usize = env_or("BENCH_KEYS", 256);
    let ask_ms: Option<u64> = std::env::var("BENCH_ASK_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let ask_concurrency: Option<usize> = std::env::var("BENCH_ASK_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok());
    let brokers = std::env::var("WXKF_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let redis =
        std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let cluster = std::env::var("BENCH_REDIS_CLUSTER").ok();
    let sent_replicas = std::env::var("BENCH_SENT_REPLICAS").ok();
    let mut more_vars: Vec<(&str, String)> = match &cluster {
        Some(nodes) => vec![
            ("REDIS__URL", String::new()),
            ("REDIS__CLUSTER_NODES", nodes.clone()),
        ],
        None => vec![("REDIS__URL", redis)],
    };
    if let Some(n) = &sent_replicas {
        more_vars.push(("LEDGER__SENT_REPLICAS", n.clone()));
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = uuid::Uuid::new_v4().simple().to_string();

    let sends = Arc::new(AtomicU64::new(0));
    let thinking = Duration::from_millis(ask_ms.unwrap_or(0));
    let (api_port, server) = fake_wechat(latency, thinking, Arc::clone(&sends))?;
    tokio::spawn(server);

    let mut settings = Settings::load_from(&repo.join("config"), "bench")?;
    settings.kafka.brokers = brokers.clone();
    settings.kafka.inbound_topic = format!("bench-inbound-{run}");
    settings.kafka.dead_letter_topic = format!("bench-dlq-{run}");
    settings.kafka.handoff_topic = format!("bench-handoff-{run}");
    consumer::operator::setup::create_topics(&settings.kafka).await?;

    let dir = std::env::temp_dir().join(format!("consumer-bench-{run}"));
    std::fs::create_dir_all(&dir)?;
    let rules = dir.join("rules.toml");
    let action = if ask_ms.is_some() {
        "type = \"ask\"\nbackend = \"bench\"\n"
    } else {
        "type = \"text\"\ncontent = \"Hi {openid}\"\n"
    };
    std::fs::write(
        &rules,
        format!("[[rule]]\nname = \"reply\"\n[[rule.actions]]\n{action}"),
    )?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let topic = settings.kafka.inbound_topic.as_str();
    let produced = Instant::now();
    for chunk in (0..users).collect::<Vec<_>>().chunks(1000) {
        let sends = chunk.iter().map(|&u| {
            let env = envelope(u, now);
            let key = record_key(&env.app, &env.message.from_user_name);
            let value = Envelope::V1(env).to_bytes();
            let producer = &producer;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&value),
                        Timeout::After(Duration::from_secs(30)),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
    }
    eprintln!("published {users} records in {:?}", produced.elapsed());

    let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("consumer"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the consumer binary"))?;
    let mut vars = vec![
        ("SERVER__PORT", metrics_port.to_string()),
        ("KAFKA__BROKERS", brokers.clone()),
        ("KAFKA__GROUP_ID", format!("bench-{run}")),
        ("KAFKA__INBOUND_TOPIC", settings.kafka.inbound_topic.clone()),
        (
            "KAFKA__DEAD_LETTER_TOPIC",
            settings.kafka.dead_letter_topic.clone(),
        ),
        ("KAFKA__HANDOFF_TOPIC", settings.kafka.handoff_topic.clone()),
        ("PROCESSING__MAX_IN_FLIGHT_KEYS", keys.to_string()),
        ("REDIS__KEY_PREFIX", format!("bench-{run}:")),
        ("WECHAT__BASE_URL", format!("http://127.0.0.1:{api_port}")),
        ("RULES__PATH", rules.display().to_string()),
        ("APPS__DEMO__APPID", "wxbench".to_owned()),
        ("APPS__DEMO__SECRET", "bench-secret".to_owned()),
    ];
    if ask_ms.is_some() {
        vars.extend([
            ("ASK__BACKENDS__BENCH__KIND", "chat".to_owned()),
            (
                "ASK__BACKENDS__BENCH__BASE_URL",
                format!("http://127.0.0.1:{api_port}/v1"),
            ),
            ("ASK__BACKENDS__BENCH__MODEL", "bench".to_owned()),
        ]);
    }
    if let Some(concurrency) = ask_concurrency {
        vars.push(("ASK__MAX_CONCURRENCY", concurrency.to_string()));
    }
    let mut child = Command::new(&exe)
        .env("CONSUMER_CONFIG_DIR", repo.join("config"))
        .env("APP_ENVIRONMENT", "bench")
        .env("RUST_LOG", "warn")
        .envs(
            vars.iter()
                .chain(&more_vars)
                .map(|(k, v)| (format!("CONSUMER__{k}"), v)),
        )
        .stdout(Stdio::null())
        .spawn()?;

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = reqwest::Client::new();
    let (mut first, mut cpu_at_first) = (None, 0.0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let (elapsed, cpu, rss) = loop {
        anyhow::ensure!(Instant::now() < deadline, "not done within 300 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(response) = http.get(&url).send().await else {
            continue;
        };
        let text = response.text().await?;
        let replied = sample(&text, "consumer_records_total{outcome=\"replied\"}");
        // From /proc, in clock ticks (10 ms): `process_cpu_seconds_total` counts whole seconds,
        // too coarse for a run of a few seconds.
        let cpu = cpu_seconds(child.id()).unwrap_or(0.0);
        if replied > 0.0 && first.is_none() {
            first = Some(Instant::now());
            cpu_at_first = cpu;
        }
        if replied as usize >= users {
            let rss = sample(&text, "process_resident_memory_bytes");
            let started = first.unwrap_or_else(Instant::now);
            break (started.elapsed(), cpu - cpu_at_first, rss);
        }
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();

    let per_second = users as f64 / elapsed.as_secs_f64();
    // Records replied to within the measured span: the first one was before it.
    let measured = users.saturating_sub(1).max(1);
    println!(
        "redis={} sent_replicas={} users={users} latency={}ms ask={} max_in_flight_keys={keys} sends={} elapsed={:.2}s replies/s={per_second:.0} cpu/record={:.1}µs rss={:.0}MiB",
        if cluster.is_some() { "cluster" } else { "single" },
        sent_replicas.as_deref().unwrap_or("default"),
        latency.as_millis(),
        ask_ms.map_or("-".to_owned(), |ms| format!("{ms}ms")),
        sends.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        cpu / measured as f64 * 1e6,
        rss / (1024.0 * 1024.0),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// User plus system CPU time of process `pid`, in seconds (Linux: `/proc/<pid>/stat`, whose
/// fields 14 and 15 count clock ticks of 10 ms, the kernel's `USER_HZ` of 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its closing paren.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
