//! `load`: the ingest benchmark's load generator — the same pushes as `push`, sealed before the
//! clock starts and sent over keep-alive connections, open loop at a fixed rate or closed loop to
//! saturation.
//!
//! `push` seals every push as it goes and sends it through a general-purpose HTTP client, as
//! WeChat would; at tens of thousands of pushes a second that work, on the same cores as the
//! server, is what runs out first. Here every push is planned and sealed by `push.rs`'s own code
//! (unique MsgIds, real signatures and encryption) before the measured span, laid out as a
//! complete HTTP/1.1 request, and then only written to a socket: each of `--threads` threads runs
//! a single-threaded event loop with its share of `--connections` keep-alive connections (as `wrk`
//! does), and answers are read with `httparse` (`Content-Length` bodies; anything else counts as a
//! failed attempt and reopens the connection).
//!
//! - Open loop (`--rate R`): push *i* is due at `start + i / R` and goes out on connection
//!   `i mod N`; its latency counts from when it was due, so a late send (a slow answer ahead of it
//!   on that connection, a busy generator) is charged as waiting instead of hidden. (A push may go
//!   out up to a millisecond early, the timer's resolution; its latency then counts from the send.)
//! - Closed loop (`--saturate`): every connection sends its next push as soon as the previous one
//!   is answered, for `--duration` or until the sealed pushes run out: the rate the server
//!   sustains when the generator is not the limit.
//!
//! Every push is signed when it is sealed, so a run is refused when sealing plus `--duration`
//! would outlast the receiver's timestamp window (`--timestamp-tolerance`, ingest's
//! `deadline.timestamp_tolerance`). CreateTimes are the sealing time plus the user's push number
//! (one second apart per user, as `push` stamps a user's pushes in the same second).
//!
//! No retries: an attempt that fails or gets no answer within `--attempt-timeout` is counted and
//! its connection reopened. The report gives the generator's own CPU time over the measured span
//! and, with `--watch NAME=PID`, that of other processes over exactly the same span (from
//! `/proc/PID/stat`, per process and per thread name), so CPU per push is read without the sealing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::Duration;

use anyhow::Context;
use common::crypto::AesKey;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::push::{self, Shape};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app's push URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080/wechat/demo")]
    url: String,
    #[command(flatten)]
    shape: Shape,
    /// Open loop: pushes per second, push i due at start + i / rate.
    #[arg(
        long,
        conflicts_with = "saturate",
        required_unless_present = "saturate"
    )]
    rate: Option<f64>,
    /// Closed loop: each connection sends its next push as soon as the last one is answered.
    #[arg(long)]
    saturate: bool,
    /// How long the measured span lasts at most.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Pushes to seal before the clock starts. Default with --rate: rate × duration; needed with
    /// --saturate, whose run then ends early when they are used up.
    #[arg(long)]
    count: Option<u64>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Threads, each an event loop with its share of the connections.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// An attempt without a complete answer by then counts as a timeout; its connection is reopened.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    attempt_timeout: Duration,
    /// The receiver's accepted distance between a push's timestamp and its clock (ingest's
    /// `deadline.timestamp_tolerance`, 15 min in config/ingest.toml).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timestamp_tolerance: Duration,
    /// Measure this process's CPU time over the same span too: NAME=PID (repeatable).
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<Watch>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct Watch {
    name: String,
    pid: u32,
}

fn parse_watch(s: &str) -> Result<Watch, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("`{pid}` is not a process id"))?;
    Ok(Watch {
        name: name.trim().to_owned(),
        pid,
    })
}

/// Where the requests go: the address to connect to, and the request line's target and Host.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    host: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).with_context(|| format!("--url {url}"))?;
        anyhow::ensure!(url.scheme() == "http", "--url: only http:// is supported");
        let host = url.host_str().context("--url has no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .with_context(|| format!("--url: {host} resolves to no address"))?;
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}&", url.path()),
            None => format!("{}?", url.path()),
        };
        Ok(Self {
            addr,
            host: format!("{host}:{port}"),
            path_and_query,
        })
    }
}

/// Every push of the run as a complete HTTP/1.1 request, in order, in one buffer per sealing
/// thread (millions of small allocations would cost more than the requests themselves).
#[derive(Debug)]
struct Requests {
    chunks: Vec<Chunk>,
    per_chunk: u64,
    count: u64,
}

#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// Request i of the chunk ends at `ends[i]` and starts where request i - 1 ends.
    ends: Vec<usize>,
}

impl Requests {
    fn get(&self, seq: u64) -> &[u8] {
        let chunk = &self.chunks[(seq / self.per_chunk) as usize];
        let i = (seq % self.per_chunk) as usize;
        let start = if i == 0 { 0 } else { chunk.ends[i - 1] };
        &chunk.bytes[start..chunk.ends[i]]
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.bytes.len()).sum()
    }
}

/// Plans and seals pushes `0..count`, all signed at `stamp`, on every core.
fn seal_all(
    args: &Args,
    key: &AesKey,
    target: &Target,
    count: u64,
    stamp: i64,
) -> anyhow::Result<Requests> {
    let seed = if args.shape.seed == 0 {
        rand::random()
    } else {
        args.shape.seed
    };
    let base = push::msg_id_base(seed);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per_chunk = count.div_ceil(workers).max(1);
    let chunks = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count.div_ceil(per_chunk))
            .map(|c| {
                let seqs = c * per_chunk..((c + 1) * per_chunk).min(count);
                scope.spawn(move || {
                    let mut chunk = Chunk::default();
                    for seq in seqs {
                        let create_time = stamp + (seq / args.shape.users) as i64;
                        let planned = push::plan(&args.shape, seed, seq, base, create_time);
                        let nonce = rand::random::<u32>().to_string();
                        let sealed = planned.seal(&args.shape, key, stamp, &nonce);
                        let head = format!(
                            "POST {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                            target.path_and_query,
                            sealed.query,
                            target.host,
                            sealed.content_type,
                            sealed.body.len()
                        );
                        chunk.bytes.extend_from_slice(head.as_bytes());
                        chunk.bytes.extend_from_slice(sealed.body.as_bytes());
                        chunk.ends.push(chunk.bytes.len());
                    }
                    chunk
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sealing thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(Requests {
        chunks,
        per_chunk,
        count,
    })
}

/// What one connection (and then one thread, and the run) saw.
#[derive(Debug)]
struct Tally {
    sent: u64,
    acknowledged: u64,
    failed: u64,
    timeouts: u64,
    connection_errors: u64,
    statuses: BTreeMap<u16, u64>,
    /// From when the push was due (open loop) or sent (closed loop) to its answer.
    latency_us: Histogram<u64>,
    /// From when the request was written to its answer.
    service_us: Histogram<u64>,
    last_answer: Option<Instant>,
    ran_out: bool,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: 0,
            acknowledged: 0,
            failed: 0,
            timeouts: 0,
            connection_errors: 0,
            statuses: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            service_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            last_answer: None,
            ran_out: false,
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.acknowledged += other.acknowledged;
        self.failed += other.failed;
        self.timeouts += other.timeouts;
        self.connection_errors += other.connection_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.latency_us.add(&other.latency_us)?;
        self.service_us.add(&other.service_us)?;
        self.last_answer = self.last_answer.max(other.last_answer);
        self.ran_out |= other.ran_out;
        Ok(())
    }
}

/// The run as the connections see it.
#[derive(Debug)]
struct Run<'a> {
    requests: &'a Requests,
    addr: SocketAddr,
    rate: Option<f64>,
    connections: u64,
    duration: Duration,
    attempt_timeout: Duration,
    /// The closed loop's next push.
    next: AtomicU64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.shape.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.rate.is_none_or(|r| r > 0.0), "--rate must be above 0");
    let count = match (args.count, args.rate) {
        (Some(n), _) => n,
        (None, Some(rate)) => (rate * args.duration.as_secs_f64()).round() as u64,
        (None, None) => anyhow::bail!("--saturate needs --count: the pushes to seal ahead"),
    };
    anyhow::ensure!(count > 0, "no pushes to send");
    let key = AesKey::from_encoding_aes_key(&args.shape.aes_key).context("--aes-key")?;
    let target = Target::parse(&args.url)?;
    let threads = args.threads.clamp(1, args.connections);

    let stamp = push::unix_now();
    let sealing = std::time::Instant::now();
    let requests = seal_all(&args, &key, &target, count, stamp)?;
    let seal_time = sealing.elapsed();
    // The last push may go out at the end of the span, and be answered an attempt timeout later.
    let signed_for = seal_time + args.duration + args.attempt_timeout;
    anyhow::ensure!(
        signed_for < args.timestamp_tolerance,
        "pushes signed {:.0?} before the end of the run would be past the receiver's timestamp \
         tolerance ({:?}): shorten --duration or seal fewer pushes",
        signed_for,
        args.timestamp_tolerance
    );

    let run = Run {
        requests: &requests,
        addr: target.addr,
        rate: args.rate,
        connections: args.connections as u64,
        duration: args.duration,
        attempt_timeout: args.attempt_timeout,
        next: AtomicU64::new(0),
    };
    // Every thread connects, then all wait for the clock: connecting is not measured.
    let ready = Barrier::new(threads + 1);
    let start: OnceLock<std::time::Instant> = OnceLock::new();
    let (tally, cpu, watched, span) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = (t..args.connections)
                    .step_by(threads)
                    .map(|c| c as u64)
                    .collect();
                let (run, ready, start) = (&run, &ready, &start);
                scope.spawn(move || drive_thread(run, mine, ready, start))
            })
            .collect();
        ready.wait();
        let cpu_before = process_cpu();
        let watched_before: Vec<_> = args.watch.iter().map(|w| proc_cpu(w.pid)).collect();
        let started = std::time::Instant::now();
        let _ = start.set(started);
        ready.wait();
        let mut tally = Tally::new()?;
        for handle in handles {
            let thread = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
            tally.merge(thread)?;
        }
        let span = started.elapsed();
        let cpu = process_cpu().saturating_sub(cpu_before);
        let watched: Vec<_> = args
            .watch
            .iter()
            .zip(watched_before)
            .map(|(w, before)| Ok((w.name.clone(), proc_cpu(w.pid)?.since(&before?))))
            .collect::<anyhow::Result<_>>()?;
        Ok((tally, cpu, watched, span))
    })?;

    let started = start.get().copied().map(Instant::from_std);
    let elapsed = match (started, tally.last_answer) {
        (Some(s), Some(last)) => last.duration_since(s),
        _ => span,
    };
    let report = Report::new(
        &args, &requests, seal_time, tally, elapsed, span, cpu, watched,
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

fn drive_thread(
    run: &Run<'_>,
    connections: Vec<u64>,
    ready: &Barrier,
    start: &OnceLock<std::time::Instant>,
) -> anyhow::Result<Tally> {
    let prepared = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            let streams = runtime.block_on(async {
                let mut streams = Vec::new();
                for _ in &connections {
                    streams.push(connect(run.addr).await?);
                }
                Ok::<_, std::io::Error>(streams)
            })?;
            Ok((runtime, streams))
        });
    // Always meet the others at both barriers, or they would wait forever.
    ready.wait();
    ready.wait();
    let (runtime, streams) = prepared.with_context(|| format!("connecting to {}", run.addr))?;
    let start = Instant::from_std(*start.get().context("the clock did not start")?);
    runtime.block_on(async {
        let tallies = futures::future::join_all(
            connections
                .into_iter()
                .zip(streams)
                .map(|(index, stream)| drive(run, index, stream, start)),
        )
        .await;
        let mut total = Tally::new()?;
        for tally in tallies {
            total.merge(tally?)?;
        }
        Ok(total)
    })
}

/// One connection's share of the run.
async fn drive(
    run: &Run<'_>,
    index: u64,
    stream: TcpStream,
    start: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut stream = Some(stream);
    let mut buf = Vec::with_capacity(4096);
    let end = start + run.duration;
    // An open loop that fell this far behind stops: the run is bounded in time either way.
    let give_up = end + run.attempt_timeout;
    let mut next_open = index;
    loop {
        let (seq, due) = match run.rate {
            Some(rate) => {
                let seq = next_open;
                next_open += run.connections;
                if seq >= run.requests.count || Instant::now() >= give_up {
                    break;
                }
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                // Tokio's timer ticks in whole milliseconds and rounds a deadline up to the next
                // tick, which would send up to a tick late and charge that to the server. Aiming a
                // tick early sends at most that much early; latency then counts from the send.
                tokio::time::sleep_until(due.checked_sub(TIMER_TICK).unwrap_or(due)).await;
                (seq, Some(due))
            }
            None => {
                if Instant::now() >= end {
                    break;
                }
                let seq = run.next.fetch_add(1, Ordering::Relaxed);
                if seq >= run.requests.count {
                    tally.ran_out = true;
                    break;
                }
                (seq, None)
            }
        };
        tally.sent += 1;
        let conn = match &mut stream {
            Some(conn) => conn,
            None => match connect(run.addr).await {
                Ok(conn) => stream.insert(conn),
                Err(_) => {
                    tally.connection_errors += 1;
                    tally.failed += 1;
                    // Refused: do not spin through the remaining pushes at once.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let written = Instant::now();
        let answer = tokio::time::timeout(
            run.attempt_timeout,
            exchange(conn, run.requests.get(seq), &mut buf),
        )
        .await;
        let answered = Instant::now();
        match answer {
            Ok(Ok(answer)) => {
                *tally.statuses.entry(answer.status).or_default() += 1;
                if answer.acknowledged {
                    tally.acknowledged += 1;
                    let service = answered.duration_since(written);
                    // From when it was due, or from the send if that came (a little) earlier.
                    let latency = answered.duration_since(due.map_or(written, |d| d.min(written)));
                    let _ = tally.service_us.record(micros(service));
                    let _ = tally.latency_us.record(micros(latency));
                } else {
                    tally.failed += 1;
                }
                tally.last_answer = Some(answered);
                if !answer.keep_alive {
                    stream = None;
                }
            }
            Ok(Err(_)) => {
                tally.connection_errors += 1;
                tally.failed += 1;
                stream = None;
            }
            Err(_) => {
                tally.timeouts += 1;
                tally.failed += 1;
                stream = None;
            }
        }
    }
    Ok(tally)
}

/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, 120_000_000) as u64
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Debug)]
struct Answer {
    status: u16,
    acknowledged: bool,
    keep_alive: bool,
}

/// Writes one request and reads its answer (no pipelining: one request at a time per connection).
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<Answer> {
    use std::io::{Error, ErrorKind};
    stream.write_all(request).await?;
    buf.clear();
    let (head, status, length, keep_alive) = loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
        };
        let status = response.code.unwrap_or_default();
        let mut length = matches!(status, 100..=199 | 204 | 304).then_some(0);
        let mut keep_alive = response.version == Some(1);
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "a body without Content-Length",
                ));
            } else if header.name.eq_ignore_ascii_case("connection") {
                keep_alive &= !header.value.eq_ignore_ascii_case(b"close");
            }
        }
        let length = length
            .ok_or_else(|| Error::new(ErrorKind::Unsupported, "a body without Content-Length"))?;
        break (head, status, length, keep_alive);
    };
    while buf.len() < head + length {
        if stream.read_buf(buf).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
    }
    let body = &buf[head..head + length];
    Ok(Answer {
        status,
        acknowledged: status == 200
            && std::str::from_utf8(body).is_ok_and(push::is_acknowledgement),
        keep_alive,
    })
}

/// This process's CPU time (all threads, user and system) so far.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Another process's CPU time so far, in clock ticks: the whole process (threads that ended
/// included), and the threads alive now, summed by name, with their voluntary context switches.
#[derive(Debug)]
struct ProcCpu {
    ticks: u64,
    threads: BTreeMap<String, (u64, u64)>,
}

fn proc_cpu(pid: u32) -> anyhow::Result<ProcCpu> {
    let (_, ticks) = read_stat(&format!("/proc/{pid}/stat"))?;
    let mut threads: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let path = task.path();
        // A thread may end between the listing and the read.
        let Ok((name, ticks)) = read_stat(&path.join("stat").to_string_lossy()) else {
            continue;
        };
        let switches = std::fs::read_to_string(path.join("status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let entry = threads.entry(name).or_default();
        entry.0 += ticks;
        entry.1 += switches;
    }
    Ok(ProcCpu { ticks, threads })
}

/// The command name and user + system ticks of a `/proc/…/stat` file.
fn read_stat(path: &str) -> anyhow::Result<(String, u64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The name is in parentheses and may contain anything, parentheses included.
    let open = stat.find('(').context("no command name")?;
    let close = stat.rfind(')').context("no command name")?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the first after the name is field 3.
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i - 3).context("a short stat line")?.parse()?)
    };
    Ok((name, tick(14)? + tick(15)?))
}

impl ProcCpu {
    fn since(&self, before: &ProcCpu) -> Usage {
        let tick = 1.0 / rustix::param::clock_ticks_per_second() as f64;
        Usage {
            cpu_s: self.ticks.saturating_sub(before.ticks) as f64 * tick,
            threads: self
                .threads
                .iter()
                .map(|(name, (ticks, switches))| {
                    let (t0, s0) = before.threads.get(name).copied().unwrap_or_default();
                    (
                        name.clone(),
                        ThreadUse {
                            cpu_s: ticks.saturating_sub(t0) as f64 * tick,
                            voluntary_switches: switches.saturating_sub(s0),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
struct Usage {
    cpu_s: f64,
    threads: BTreeMap<String, ThreadUse>,
}

#[derive(Debug, Serialize)]
struct ThreadUse {
    cpu_s: f64,
    voluntary_switches: u64,
}

#[derive(Debug, Serialize)]
struct Cpu {
    /// User + system CPU time over the measured span.
    cpu_s: f64,
    /// That, per acknowledged push.
    us_per_push: f64,
    /// That, over the span's wall time: cores kept busy.
    cores: f64,
    /// Per thread name (threads alive at the end), for the watched processes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    threads: BTreeMap<String, ThreadUse>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    target_rate: Option<f64>,
    connections: usize,
    threads: usize,
    sealed: u64,
    sealed_mib: f64,
    seal_s: f64,
    sent: u64,
    acknowledged: u64,
    failed: u64,
    timeouts: u64,
    connection_errors: u64,
    statuses: BTreeMap<u16, u64>,
    /// `duration`, or `pushes` when a closed loop used up the sealed pushes first.
    stopped_by: &'static str,
    elapsed_s: f64,
    achieved_rate: f64,
    /// Open loop: from when each push was due; closed loop: from when it was sent.
    latency_ms: BTreeMap<&'static str, f64>,
    /// From when each request was written.
    service_ms: BTreeMap<&'static str, f64>,
    generator: Cpu,
    watched: BTreeMap<String, Cpu>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        args: &Args,
        requests: &Requests,
        seal_time: Duration,
        tally: Tally,
        elapsed: Duration,
        span: Duration,
        cpu: Duration,
        watched: Vec<(String, Usage)>,
    ) -> Self {
        let per_push = |cpu_s: f64| cpu_s * 1e6 / tally.acknowledged.max(1) as f64;
        let cores = |cpu_s: f64| cpu_s / span.as_secs_f64().max(1e-9);
        let quantiles = |h: &Histogram<u64>| {
            let mut out: BTreeMap<&'static str, f64> =
                [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)]
                    .into_iter()
                    .map(|(name, q)| (name, h.value_at_quantile(q) as f64 / 1000.0))
                    .collect();
            out.insert("max", h.max() as f64 / 1000.0);
            out
        };
        Self {
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            target_rate: args.rate,
            connections: args.connections,
            threads: args.threads.clamp(1, args.connections),
            sealed: requests.count,
            sealed_mib: requests.bytes() as f64 / (1024.0 * 1024.0),
            seal_s: seal_time.as_secs_f64(),
            sent: tally.sent,
            acknowledged: tally.acknowledged,
            failed: tally.failed,
            timeouts: tally.timeouts,
            connection_errors: tally.connection_errors,
            stopped_by: if tally.ran_out { "pushes" } else { "duration" },
            elapsed_s: elapsed.as_secs_f64(),
            achieved_rate: tally.acknowledged as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: quantiles(&tally.latency_us),
            service_ms: quantiles(&tally.service_us),
            generator: Cpu {
                cpu_s: cpu.as_secs_f64(),
                us_per_push: per_push(cpu.as_secs_f64()),
                cores: cores(cpu.as_secs_f64()),
                threads: BTreeMap::new(),
            },
            watched: watched
                .into_iter()
                .map(|(name, usage)| {
                    let cpu = Cpu {
                        cpu_s: usage.cpu_s,
                        us_per_push: per_push(usage.cpu_s),
                        cores: cores(usage.cpu_s),
                        threads: usage.threads,
                    };
                    (name, cpu)
                })
                .collect(),
            statuses: tally.statuses,
        }
    }

    fn print(&self) {
        println!(
            "{} loop, {} connections: sent={} acknowledged={} failed={} timeouts={} elapsed={:.1}s rate={:.0}/s ({}) | latency ms p50={} p99={} max={} | generator CPU {:.1} µs/push ({:.2} cores; {} pushes sealed in {:.1}s, {:.0} MiB)",
            self.mode,
            self.connections,
            self.sent,
            self.acknowledged,
            self.failed,
            self.timeouts,
            self.elapsed_s,
            self.achieved_rate,
            self.stopped_by,
            self.latency_ms["p50"],
            self.latency_ms["p99"],
            self.latency_ms["max"],
            self.generator.us_per_push,
            self.generator.cores,
            self.sealed,
            self.seal_s,
            self.sealed_mib,
        );
        for (name, cpu) in &self.watched {
            println!(
                "  {name}: CPU {:.1} µs/push ({:.2} cores)",
                cpu.us_per_push, cpu.cores
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_ticks() {
        let line = "4242 (rdk:broker (1)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 9 0 100 0 0";
        let path = std::env::temp_dir().join(format!("wechat-sim-stat-{}", std::process::id()));
        std::fs::write(&path, line).expect("a temporary file");
        let read = read_stat(&path.to_string_lossy());
        let _ = std::fs::remove_file(&path);
        assert_eq!(read.expect("parsed"), ("rdk:broker (1)".to_owned(), 175));
    }

    #[test]
    fn requests_are_laid_out_back_to_back() {
        let chunk = |reqs: &[&str]| {
            let mut c = Chunk::default();
            for r in reqs {
                c.bytes.extend_from_slice(r.as_bytes());
                c.ends.push(c.bytes.len());
            }
            c
        };
        let requests = Requests {
            chunks: vec![chunk(&["a", "bb"]), chunk(&["ccc"])],
            per_chunk: 2,
            count: 3,
        };
        let all: Vec<&[u8]> = (0..3).map(|i| requests.get(i)).collect();
        assert_eq!(all, [&b"a"[..], b"bb", b"ccc"]);
        assert_eq!(requests.bytes(), 6);
    }

    #[test]
    fn watch_takes_a_name_and_a_pid() {
        let w = parse_watch("kafka=1234").expect("valid");
        assert_eq!((w.name.as_str(), w.pid), ("kafka", 1234));
        assert!(parse_watch("kafka").is_err());
        assert!(parse_watch("kafka=x").is_err());
    }
}
