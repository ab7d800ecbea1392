//! The soak: the same audit over a long run with recurring disturbances. Not part of the default
//! run (`#[ignore]`); run it with
//!
//! ```sh
//! cargo build --workspace --bins
//! WXKF_SOAK_SECS=600 WXKF_SOAK_RATE=50 cargo test -p ingest --test e2e -- --ignored soak --nocapture
//! ```
//!
//! Every `WXKF_SOAK_EVERY_SECS` (default 45) one disturbance, in turn: a consumer killed with
//! SIGKILL and replaced, ingest killed and restarted, an API storm (errors, slow answers, expiring
//! tokens) for a while; with `WXKF_SOAK_OUTAGES=1` also Kafka and Redis restarts.

use std::time::{Duration, Instant};

use serde_json::json;

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::report::check;
use super::services::{Outage, Service};
use super::{say, serial};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long; run with --ignored (see the module docs)"]
async fn soak() {
    let _serial = serial().await;
    let secs = env_or("WXKF_SOAK_SECS", 600);
    let rate = env_or("WXKF_SOAK_RATE", 50);
    let every = Duration::from_secs(env_or("WXKF_SOAK_EVERY_SECS", 45));
    let outages = env_or("WXKF_SOAK_OUTAGES", 0) == 1;
    let mut p = Pipeline::start("soak", 3, &["--latency", "10ms", "--jitter", "20ms"]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(secs * rate, rate as f64, 500);
    let started = Instant::now();
    let mut turn = 0;
    while started.elapsed() + every < Duration::from_secs(secs) {
        tokio::time::sleep(every).await;
        p.assert_running();
        let kinds = if outages { 5 } else { 3 };
        match turn % kinds {
            0 => {
                p.kill_consumer(0).await;
                p.start_consumer().await;
                p.wait_group_stable().await;
                say(format!(
                    "soak {:>4}s: a consumer killed and replaced",
                    started.elapsed().as_secs()
                ));
            }
            1 => {
                p.kill_ingest().await;
                p.start_ingest().await;
                say(format!(
                    "soak {:>4}s: ingest killed and restarted",
                    started.elapsed().as_secs()
                ));
            }
            2 => {
                p.sim_faults(
                    json!({"error_rate": 0.1, "slow_rate": 0.02, "slow_delay": "3s",
                                     "token_ttl": "5s", "token_announced_ttl": "7200s"}),
                )
                .await;
                tokio::time::sleep(every / 2).await;
                p.sim_faults(
                    json!({"error_rate": 0.0, "slow_rate": 0.0, "token_ttl": "7200s",
                                     "token_announced_ttl": "0s"}),
                )
                .await;
                say(format!(
                    "soak {:>4}s: an API storm",
                    started.elapsed().as_secs()
                ));
            }
            3 => {
                let down = Outage::begin(Service::Kafka).await.end().await;
                say(format!(
                    "soak {:>4}s: Kafka restarted ({:.1}s down)",
                    started.elapsed().as_secs(),
                    down.as_secs_f64()
                ));
            }
            _ => {
                let down = Outage::begin(Service::Redis).await.end().await;
                say(format!(
                    "soak {:>4}s: Redis restarted ({:.1}s down)",
                    started.elapsed().as_secs(),
                    down.as_secs_f64()
                ));
            }
        }
        turn += 1;
    }
    let push = push.finish(Duration::from_secs(secs + 300)).await;
    let report = audit.settle(&mut p, &push, Duration::from_secs(300)).await;
    check(
        &report,
        &["ambiguous", "retries_exhausted", "window_closed"],
    );
}
