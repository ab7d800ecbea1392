//! The push side: WeChat delivering users' messages to the push URL.
//!
//! Each push is sealed exactly as WeChat seals it ([`common::seal`]). An attempt that gets no
//! answer within `--attempt-timeout` (WeChat: 5 s) or a non-success answer is retried
//! `--retries` times (WeChat: 3), the same push each time. With `--rate` the load is open-loop:
//! push *i* is due at `start + i / rate` whether or not earlier ones were answered, and its latency
//! counts from when it was due, so a slow server cannot hide its queueing (no coordinated
//! omission).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use common::codec::Format;
use common::crypto::AesKey;
use common::ids::{MsgId, OpenId};
use common::message::{Message, MessageBody};
use common::push::{AppCredentials, Mode};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app's push URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/wechat/demo")]
    url: String,
    #[command(flatten)]
    shape: Shape,
    /// Number of pushes. Without --rate they go out as fast as --max-in-flight allows.
    #[arg(long)]
    count: Option<u64>,
    /// Pushes per second, open loop.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to push at --rate (instead of --count).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Most pushes outstanding at once.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// How long WeChat waits for an answer before it gives up on an attempt.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    attempt_timeout: Duration,
    /// Retries after the first attempt.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Pause before retrying an attempt that was answered with a failure.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    retry_delay: Duration,
    /// Write every push and its outcome as JSON lines to this file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What the pushes are: the app they are sealed for, their mode, format, users and kinds. Shared
/// with the load generator (`load.rs`), which seals the same pushes ahead of time.
#[derive(Debug, clap::Args)]
pub(crate) struct Shape {
    /// The push configuration's Token.
    #[arg(long, default_value = "AAAAA")]
    pub(crate) token: String,
    /// The 43-character EncodingAESKey.
    #[arg(long, default_value = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    pub(crate) aes_key: String,
    /// The mini program's AppID (sealed into every ciphertext).
    #[arg(long, default_value = "wxba5fad812f8e6fb9")]
    pub(crate) appid: String,
    /// The mini program's original id (ToUserName).
    #[arg(long, default_value = "gh_97417a04a28d")]
    original_id: String,
    /// Encryption mode of the pushes; `mixed` picks one per push.
    #[arg(long, value_enum, default_value = "safe")]
    mode: ModeArg,
    /// Data format of the pushes; `mixed` picks one per push (the app must then sniff).
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// Distinct users (openids) the pushes come from, round robin.
    #[arg(long, default_value_t = 100)]
    pub(crate) users: u64,
    /// Prefix of the simulated openids.
    #[arg(long, default_value = "sim-user")]
    user_prefix: String,
    /// Weights of the kinds of push: text, image, card (miniprogrampage), enter
    /// (user_enter_tempsession), other (a platform event the pipeline only stores).
    #[arg(long, default_value = "text=85,image=5,card=3,enter=5,other=2", value_parser = parse_mix)]
    mix: Mix,
    /// Seed of the message mix (0: random).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Plaintext,
    Compatible,
    Safe,
    Mixed,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Xml,
    Json,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Text,
    Image,
    Card,
    Enter,
    Other,
}

const KINDS: [Kind; 5] = [
    Kind::Text,
    Kind::Image,
    Kind::Card,
    Kind::Enter,
    Kind::Other,
];

#[derive(Debug, Clone)]
struct Mix([u32; 5]);

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut weights = [0u32; 5];
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected kind=weight"))?;
        let slot = match name.trim() {
            "text" => 0,
            "image" => 1,
            "card" => 2,
            "enter" => 3,
            "other" => 4,
            other => {
                return Err(format!(
                    "unknown kind `{other}` (text, image, card, enter, other)"
                ))
            }
        };
        weights[slot] = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{weight}` is not a whole number"))?;
    }
    if weights.iter().all(|w| *w == 0) {
        return Err("at least one kind needs a weight above 0".into());
    }
    Ok(Mix(weights))
}

impl Mix {
    fn pick(&self, roll: u32) -> Kind {
        let total: u32 = self.0.iter().sum();
        let mut roll = roll % total;
        for (kind, weight) in KINDS.iter().zip(self.0) {
            if roll < weight {
                return *kind;
            }
            roll -= weight;
        }
        Kind::Text
    }
}

/// One push as planned, and what became of it.
#[derive(Debug, Serialize)]
struct Outcome {
    seq: u64,
    openid: String,
    /// The push's position among its user's pushes (0, 1, ...).
    user_seq: u64,
    kind: Kind,
    msg_id: Option<String>,
    content: Option<String>,
    create_time: i64,
    format: Format,
    mode: Mode,
    acked: bool,
    attempts: u32,
    /// The last HTTP status seen, if any.
    status: Option<u16>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    sent: u64,
    acknowledged: u64,
    failed: u64,
    attempts: u64,
    retries: u64,
    timeouts: u64,
    connection_errors: u64,
    statuses: BTreeMap<u16, u64>,
    elapsed_s: f64,
    target_rate: Option<f64>,
    achieved_rate: f64,
    latency_ms: BTreeMap<&'static str, f64>,
}

struct Shared {
    client: reqwest::Client,
    args: Args,
    key: AesKey,
    summary: Mutex<Summary>,
    latency_us: Mutex<Histogram<u64>>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let key = AesKey::from_encoding_aes_key(&args.shape.aes_key).context("--aes-key")?;
    let total = match (args.count, args.rate, args.duration) {
        (Some(n), _, _) => n,
        (None, Some(rate), Some(d)) => (rate * d.as_secs_f64()).round() as u64,
        _ => anyhow::bail!("give --count, or --rate with --duration"),
    };
    if args.shape.users == 0 {
        anyhow::bail!("--users must be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .build()?;
    let seed = if args.shape.seed == 0 {
        rand::random()
    } else {
        args.shape.seed
    };
    // The CreateTime of each user's latest push (see `next_create_time`).
    let mut last_create_time: std::collections::HashMap<u64, i64> = Default::default();
    let msg_id_base = msg_id_base(seed);
    let shared = Arc::new(Shared {
        client,
        key,
        summary: Mutex::new(Summary::default()),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        args,
    });
    let permits = Arc::new(Semaphore::new(shared.args.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    let keep_outcomes = shared.args.record.is_some();
    let start = Instant::now();

    for seq in 0..total {
        let due = match shared.args.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        let permit = permits.clone().acquire_owned().await?;
        let last = last_create_time
            .entry(seq % shared.args.shape.users)
            .or_insert(i64::MIN);
        let create_time = next_create_time(last, unix_now());
        let planned = plan(&shared.args.shape, seed, seq, msg_id_base, create_time);
        let shared = shared.clone();
        tasks.spawn(async move {
            let outcome = deliver(&shared, planned, due).await;
            drop(permit);
            outcome
        });
        while let Some(done) = tasks.try_join_next() {
            let outcome = done?;
            if keep_outcomes {
                outcomes.push(outcome);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let outcome = done?;
        if keep_outcomes {
            outcomes.push(outcome);
        }
    }
    let elapsed = start.elapsed();

    if let Some(path) = &shared.args.record {
        outcomes.sort_by_key(|o| o.seq);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for outcome in &outcomes {
            serde_json::to_writer(&mut file, outcome)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
    }

    let mut summary = std::mem::take(&mut *lock(&shared.summary));
    let histogram = lock(&shared.latency_us);
    summary.sent = total;
    summary.elapsed_s = elapsed.as_secs_f64();
    summary.target_rate = shared.args.rate;
    summary.achieved_rate = summary.acknowledged as f64 / elapsed.as_secs_f64().max(1e-9);
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        summary
            .latency_ms
            .insert(name, histogram.value_at_quantile(q) as f64 / 1000.0);
    }
    summary
        .latency_ms
        .insert("max", histogram.max() as f64 / 1000.0);
    if shared.args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "pushes sent={} acknowledged={} failed={} retries={} timeouts={} elapsed={:.1}s rate={:.0}/s | ack latency ms p50={} p90={} p99={} p999={} max={}",
            summary.sent,
            summary.acknowledged,
            summary.failed,
            summary.retries,
            summary.timeouts,
            summary.elapsed_s,
            summary.achieved_rate,
            summary.latency_ms["p50"],
            summary.latency_ms["p90"],
            summary.latency_ms["p99"],
            summary.latency_ms["p999"],
            summary.latency_ms["max"],
        );
    }
    if summary.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// A push as WeChat would send it: the message, its plaintext, and how it is sealed.
pub(crate) struct Planned {
    outcome: Outcome,
    plain: String,
}

impl Planned {
    /// Seals the push as WeChat does, signed at `timestamp` with `nonce`.
    pub(crate) fn seal(
        &self,
        shape: &Shape,
        key: &AesKey,
        timestamp: i64,
        nonce: &str,
    ) -> common::seal::SealedPush {
        let creds = AppCredentials {
            token: &shape.token,
            aes_key: Some(key),
            appid: &shape.appid,
        };
        common::seal::seal(
            &self.plain,
            self.outcome.format,
            self.outcome.mode,
            &creds,
            timestamp,
            nonce,
        )
    }
}

/// The first MsgId of a run: unique per run and above 2^53, as real MsgIds are.
pub(crate) fn msg_id_base(seed: u64) -> u64 {
    (1u64 << 60) | (StdRng::seed_from_u64(seed).random::<u64>() >> 8)
}

/// WeChat stamps a message with the time the user acted: now, but strictly after the same user's
/// previous push, so two events of one user never share a dedup key (made of FromUserName,
/// CreateTime and Event). Tied to the clock, so reply windows (1 min after entering the session)
/// stay open for replies sent in time however long the run lasts.
fn next_create_time(last: &mut i64, now: i64) -> i64 {
    let create_time = now.max(last.saturating_add(1));
    *last = create_time;
    create_time
}

pub(crate) fn plan(
    shape: &Shape,
    seed: u64,
    seq: u64,
    msg_id_base: u64,
    create_time: i64,
) -> Planned {
    let mut rng = StdRng::seed_from_u64(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let user = seq % shape.users;
    let user_seq = seq / shape.users;
    let openid = format!("{}-{user:06}", shape.user_prefix);
    let kind = shape.mix.pick(rng.random());
    let msg_id = MsgId::new((msg_id_base + seq).to_string());
    let format = match shape.format {
        FormatArg::Xml => Format::Xml,
        FormatArg::Json => Format::Json,
        FormatArg::Mixed if rng.random_bool(0.5) => Format::Xml,
        FormatArg::Mixed => Format::Json,
    };
    let mode = match shape.mode {
        ModeArg::Plaintext => Mode::Plaintext,
        ModeArg::Compatible => Mode::Compatible,
        ModeArg::Safe => Mode::Safe,
        ModeArg::Mixed => [Mode::Plaintext, Mode::Compatible, Mode::Safe][rng.random_range(0..3)],
    };
    let mut content = None;
    let body = match kind {
        Kind::Text => {
            let text = format!("hello #{user_seq} from {openid}");
            content = Some(text.clone());
            MessageBody::Text {
                msg_id: msg_id.clone(),
                content: text,
            }
        }
        Kind::Image => MessageBody::Image {
            msg_id: msg_id.clone(),
            pic_url: format!("http://mmbiz.qpic.cn/sim/{seq}"),
            media_id: format!("sim-media-{seq}"),
        },
        Kind::Card => MessageBody::MiniProgramPage {
            msg_id: msg_id.clone(),
            title: "Order details".into(),
            app_id: shape.appid.clone(),
            page_path: format!("pages/order/index?id={seq}"),
            thumb_url: String::new(),
            thumb_media_id: String::new(),
        },
        Kind::Enter => MessageBody::EnterSession {
            session_from: format!("sim-button-{}", seq % 3),
        },
        Kind::Other => MessageBody::Other {
            msg_type: "event".into(),
            event: Some("debug_demo".into()),
            msg_id: None,
            fields: BTreeMap::from([("debug_str".into(), format!("ping {seq}"))]),
        },
    };
    let message = Message {
        to_user_name: shape.original_id.clone(),
        from_user_name: OpenId::new(openid.clone()),
        create_time,
        body,
    };
    let plain = match format {
        Format::Xml => common::codec::to_xml(&message),
        Format::Json => common::codec::to_json(&message),
    };
    Planned {
        outcome: Outcome {
            seq,
            openid,
            user_seq,
            kind,
            msg_id: message.msg_id().map(|id| id.as_str().to_owned()),
            content,
            create_time,
            format,
            mode,
            acked: false,
            attempts: 0,
            status: None,
        },
        plain,
    }
}

/// Delivers one push with WeChat's timeout and retries; its latency counts from `due`.
async fn deliver(shared: &Shared, planned: Planned, due: Instant) -> Outcome {
    let args = &shared.args;
    let nonce = rand::random::<u32>().to_string();
    // WeChat re-sends the same push; sealed once, it is byte-identical on every attempt.
    let sealed = planned.seal(&args.shape, &shared.key, unix_now(), &nonce);
    let mut outcome = planned.outcome;
    let url = format!("{}?{}", args.url, sealed.query);
    for attempt in 0..=args.retries {
        outcome.attempts = attempt + 1;
        let result = shared
            .client
            .post(&url)
            .header("Content-Type", sealed.content_type)
            .body(sealed.body.clone())
            .timeout(args.attempt_timeout)
            .send()
            .await;
        let answered = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                outcome.status = Some(status);
                *lock(&shared.summary).statuses.entry(status).or_default() += 1;
                let body = response.text().await.unwrap_or_default();
                status == 200 && is_acknowledgement(&body)
            }
            Err(e) => {
                let mut summary = lock(&shared.summary);
                if e.is_timeout() {
                    summary.timeouts += 1;
                } else {
                    summary.connection_errors += 1;
                }
                false
            }
        };
        lock(&shared.summary).attempts += 1;
        if answered {
            outcome.acked = true;
            let micros = due.elapsed().as_micros().clamp(1, 120_000_000) as u64;
            let _ = lock(&shared.latency_us).record(micros);
            let mut summary = lock(&shared.summary);
            summary.acknowledged += 1;
            summary.retries += u64::from(attempt);
            return outcome;
        }
        if attempt < args.retries {
            tokio::time::sleep(args.retry_delay).await;
        }
    }
    let mut summary = lock(&shared.summary);
    summary.failed += 1;
    summary.retries += u64::from(args.retries);
    outcome
}

/// What WeChat takes as a timely, valid answer: `success`, an empty body, or a transfer packet.
pub(crate) fn is_acknowledgement(body: &str) -> bool {
    let body = body.trim();
    body.is_empty()
        || body == "success"
        || body.contains("transfer_customer_service")
        || body.contains("Encrypt")
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_times_follow_the_clock_and_never_repeat_for_a_user() {
        let mut last = i64::MIN;
        assert_eq!(next_create_time(&mut last, 100), 100);
        // Same second: one later, so the user's events keep distinct dedup keys.
        assert_eq!(next_create_time(&mut last, 100), 101);
        assert_eq!(next_create_time(&mut last, 100), 102);
        // The clock caught up: back to it, never behind it.
        assert_eq!(next_create_time(&mut last, 250), 250);
    }
}
