//! Stopping and restarting the shared Kafka and Redis of `scripts/services.sh` mid-stream.
//!
//! An [`Outage`] is a guard: whatever happens to the test (a failed assertion, a panic), the
//! service it stopped is started again when the guard is dropped, so one failing test never
//! leaves the machine without Kafka or Redis. Only services the script started can be stopped;
//! anything else listening on the port makes the test fail with that explanation.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::procs::repo_root;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Redis,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Redis => "redis",
        }
    }

    fn port(self) -> u16 {
        let from = |var: &str, default: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| {
                    v.rsplit(':')
                        .next()
                        .map(|p| p.trim_end_matches('/').to_owned())
                })
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| default.parse().expect("default port"))
        };
        match self {
            Service::Kafka => from("WXKF_TEST_KAFKA", "9092"),
            Service::Redis => from("WXKF_TEST_REDIS", "6379"),
        }
    }

    fn listening(self) -> bool {
        TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port()).into(),
            Duration::from_millis(300),
        )
        .is_ok()
    }

    /// `scripts/services.sh {name}-{action}`, blocking.
    fn script(self, action: &str) -> Result<(), String> {
        let port_var = match self {
            Service::Kafka => "WXKF_KAFKA_PORT",
            Service::Redis => "WXKF_REDIS_PORT",
        };
        let output = std::process::Command::new(repo_root().join("scripts/services.sh"))
            .arg(format!("{}-{action}", self.name()))
            .env(port_var, self.port().to_string())
            .output()
            .map_err(|e| format!("running scripts/services.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/services.sh {}-{action} failed: {}{}",
                self.name(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

/// A stopped service, started again on [`Outage::end`] or, at the latest, on drop.
#[derive(Debug)]
pub struct Outage {
    service: Service,
    stopped_at: Instant,
    ended: bool,
}

impl Outage {
    /// Stops `service` (blocking until it no longer listens).
    pub async fn begin(service: Service) -> Outage {
        tokio::task::spawn_blocking(move || {
            let outage = Outage {
                service,
                stopped_at: Instant::now(),
                ended: false,
            };
            if service == Service::Redis {
                keep_redis_data();
            }
            if let Err(e) = service.script("stop") {
                panic!("{e}");
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while service.listening() {
                assert!(
                    Instant::now() < deadline,
                    "{} still listens on 127.0.0.1:{} after scripts/services.sh {}-stop: it was \
                     not started by scripts/services.sh, so this test cannot stop it",
                    service.name(),
                    service.port(),
                    service.name()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            outage
        })
        .await
        .expect("stopping the service")
    }

    /// Starts the service again and waits until it is ready; returns how long it was down.
    pub async fn end(mut self) -> Duration {
        let service = self.service;
        let stopped_at = self.stopped_at;
        self.ended = true;
        tokio::task::spawn_blocking(move || restart(service))
            .await
            .expect("restarting the service");
        stopped_at.elapsed()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            eprintln!(
                "restarting {} after a failed test (it was stopped by the test)",
                self.service.name()
            );
            restart(self.service);
        }
    }
}

fn restart(service: Service) {
    if let Err(e) = service.script("start") {
        // Panicking in a drop during a panic would abort and hide the first failure.
        eprintln!("{e}");
        return;
    }
    if service == Service::Redis {
        forget_redis_dump();
    }
}

/// Makes the Redis that is about to stop write its data to disk on shutdown, so it comes back
/// with it — as a production Redis does (AOF or snapshots). The local one runs without
/// persistence, and a Redis that forgets the send ledger cannot keep replies at most once.
fn keep_redis_data() {
    let mut conn = redis_conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("3600 1")
        .query(&mut conn)
        .expect("CONFIG SET save");
}

/// Removes the snapshot the restarted Redis loaded, so later restarts start empty as before.
fn forget_redis_dump() {
    let Ok(mut conn) = std::panic::catch_unwind(redis_conn) else {
        return;
    };
    let dir: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut conn);
    let file: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dbfilename")
        .query(&mut conn);
    if let (Ok(dir), Ok(file)) = (dir, file) {
        if let (Some(dir), Some(file)) = (dir.get(1), file.get(1)) {
            let _ = std::fs::remove_file(std::path::Path::new(dir).join(file));
        }
    }
}

fn redis_conn() -> redis::Connection {
    let url = std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("Redis answers")
}
