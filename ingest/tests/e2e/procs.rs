//! The pipeline's processes, run as they run in production: `ingest`, `consumer` and
//! `wechat-sim` binaries, each with its own log file, killed (SIGKILL) when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn ingest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ingest"))
}

pub fn sim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wechat-sim"))
}

/// The consumer binary of the same build: next to `ingest` in `target/<profile>/`.
///
/// Cargo rebuilds this package's binaries (`ingest`, `wechat-sim`) before running the test, but
/// not another package's, and it cannot be asked to from here: it holds the target directory's
/// lock while tests run. So `scripts/test.sh` builds the consumer first, and this refuses — rather
/// than silently testing old code — a consumer binary older than any source it is built from.
pub fn consumer_bin() -> PathBuf {
    let path = ingest_bin().with_file_name(format!("consumer{}", std::env::consts::EXE_SUFFIX));
    let build = "build it with `cargo build -p consumer` (scripts/test.sh does)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "the consumer binary is missing at {}; {build}",
                path.display()
            )
        });
    let root = repo_root();
    // Only sources whose change makes cargo relink the binary, so a fresh build always passes.
    let sources = [root.join("consumer/src"), root.join("common/src")];
    if let Some(newer) = sources.iter().find_map(|p| newer_than(p, built)) {
        panic!(
            "the consumer binary at {} is older than {}; {build}",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A file under `path` (or `path` itself) modified after `time`.
fn newer_than(path: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return (meta.modified().ok()? > time).then(|| path.to_path_buf());
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .find_map(|entry| newer_than(&entry.path(), time))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ingest lives in the workspace")
        .to_path_buf()
}

/// A port nobody listens on right now (bound and released; the OS does not hand it out again
/// soon), for a process that must come back on the same port after a restart.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// One running process of the pipeline.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args` with `env`, stdout and stderr appended to `{dir}/{name}.log`.
    pub fn start(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn")
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Proc {
            name: name.to_owned(),
            log,
            child,
        }
    }

    /// `kill -9`: no shutdown, no flush, no final commit.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits (bounded; SIGKILL after `within`) until the process has exited.
    pub async fn terminate(&mut self, within: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(within, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not exit within {within:?} of SIGTERM; killing it",
                self.name
            );
            self.kill9().await;
        }
    }

    /// SIGKILL without waiting (for drops).
    pub fn kill_now(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Fails with the log's tail if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
    }
}

/// The last `lines` lines of a log.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion; panics with its output if it fails.
pub async fn run(name: &str, program: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts the simulator's API side on a free port; returns it and its base URL (read from the
/// `listening on` line it prints).
pub async fn start_sim_api(dir: &Path, args: &[String]) -> (Child, String) {
    let mut all = vec!["api".to_owned(), "--listen".into(), "127.0.0.1:0".into()];
    all.extend_from_slice(args);
    let log = std::fs::File::create(dir.join("wechat-sim-api.log")).expect("log file");
    let mut child = Command::new(sim_bin())
        .args(&all)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting wechat-sim api");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("wechat-sim api printed its address within 20 s")
        .expect("reading wechat-sim api's stdout")
        .expect("wechat-sim api printed a line");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line of wechat-sim api: {line}"))
        .to_owned();
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// Polls `url` until it answers 2xx, or fails after `within` naming `what`.
pub async fn wait_http(client: &reqwest::Client, url: &str, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not answer {url} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
