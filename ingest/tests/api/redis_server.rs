//! A `redis-server` of a test's own (Debian's, `/usr/bin/redis-server`) on a free 127.0.0.1
//! port: with a password (`requirepass`), and optionally TLS only (`--port 0 --tls-port`) with a
//! CA and a certificate for `localhost` made for the test. Stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The PEM of the CA that signed the server's certificate (TLS only).
    pub ca_file: Option<PathBuf>,
    tls: bool,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// A plain-TCP Redis that requires `password`.
    pub async fn with_password(password: &str) -> RedisServer {
        RedisServer::start(password, false).await
    }

    /// A TLS-only Redis that requires `password`, its certificate signed by a CA of the test's own.
    pub async fn with_tls(password: &str) -> RedisServer {
        RedisServer::start(password, true).await
    }

    async fn start(password: &str, tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        command.arg("--dir").arg(dir.path());
        command.args(["--requirepass", password]);
        let mut ca_file = None;
        if tls {
            let (ca, cert, key) = certificates(dir.path());
            command.args(["--port", "0", "--tls-port", &port.to_string()]);
            command.arg("--tls-cert-file").arg(&cert);
            command.arg("--tls-key-file").arg(&key);
            command.arg("--tls-ca-cert-file").arg(&ca);
            // The clients present no certificate of their own: the password authenticates them.
            command.args(["--tls-auth-clients", "no"]);
            ca_file = Some(ca);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian's redis-server package)");
        let server = RedisServer {
            child,
            port,
            ca_file,
            tls,
            _dir: dir,
        };
        server.wait_ready(password).await;
        server
    }

    /// The URL of this server with `password` in it; TLS servers are named `localhost`, the name
    /// in their certificate.
    pub fn url(&self, password: &str) -> String {
        if self.tls {
            format!("rediss://:{password}@localhost:{}/", self.port)
        } else {
            format!("redis://:{password}@127.0.0.1:{}/", self.port)
        }
    }

    async fn wait_ready(&self, password: &str) {
        let url = self.url(password);
        let client = match &self.ca_file {
            Some(ca) => redis::Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).expect("CA file")),
                },
            ),
            None => redis::Client::open(url.as_str()),
        }
        .expect("redis URL");
        let ready = async {
            loop {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .unwrap_or_else(|_| panic!("redis-server on port {} not ready in 10 s", self.port));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (the OS picks it; released before redis-server binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A CA and a certificate for `localhost` signed by it, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wxkf test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let leaf_key = rcgen::KeyPair::generate().expect("server key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&leaf_key, &ca)
        .expect("server certificate");
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, leaf.pem()).expect("write certificate");
    std::fs::write(&paths.2, leaf_key.serialize_pem()).expect("write key");
    paths
}
