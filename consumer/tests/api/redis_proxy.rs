//! A TCP proxy in front of the real Redis that can hold back one answer, so a test sees what a
//! Redis command whose answer timed out does to the send path. The command itself reaches Redis
//! and is executed; only its answer (and, since answers come in order, the ones behind it) arrives
//! late. Nothing is dropped, so the client's request/answer pairing stays right.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// When the `nth` (1-based) request containing `pattern` is seen, its answer is held back `delay`.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub pattern: Vec<u8>,
    pub nth: usize,
    pub delay: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RedisProxy {
    trigger: Arc<Mutex<Option<Trigger>>>,
    seen: Arc<AtomicUsize>,
    /// How many answers were held back.
    pub delayed: Arc<AtomicUsize>,
}

impl RedisProxy {
    /// Listens on 127.0.0.1 and forwards to the Redis of `upstream` (`redis://host:port/...`);
    /// returns the proxy and the URL to use instead.
    pub async fn start(upstream: &str) -> (RedisProxy, String) {
        let rest = upstream.trim_start_matches("redis://");
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = hostport.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let url = format!(
            "redis://127.0.0.1:{}/{path}",
            listener.local_addr().expect("addr").port()
        );
        let proxy = RedisProxy::default();
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&hostport).await else {
                    continue;
                };
                tokio::spawn(p.clone().pipe(client, server));
            }
        });
        (proxy, url)
    }

    /// Requests seen containing the armed trigger's pattern since it was armed.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Arms the trigger (counting matches from now).
    pub fn arm(&self, trigger: Trigger) {
        self.seen.store(0, Ordering::SeqCst);
        *self.trigger.lock().expect("trigger") = Some(trigger);
    }

    async fn pipe(self, client: TcpStream, server: TcpStream) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        // Delays to apply to the next answer chunks, in order.
        let (delay_tx, mut delay_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let up = {
            let p = self.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let mut fire = None;
                    if let Some(t) = p.trigger.lock().expect("trigger").as_ref() {
                        if contains(chunk, &t.pattern)
                            && p.seen.fetch_add(1, Ordering::SeqCst) + 1 == t.nth
                        {
                            fire = Some(t.delay);
                        }
                    }
                    if let Some(delay) = fire {
                        let _ = delay_tx.send(delay);
                        p.delayed.fetch_add(1, Ordering::SeqCst);
                    }
                    if server_write.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            }
        };
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Ok(delay) = delay_rx.try_recv() {
                    tokio::time::sleep(delay).await;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(up, down);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
