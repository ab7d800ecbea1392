//! Apps and their secrets changed while both services run (the same process ids before and
//! after): an app added by a file, an AES key rotation, a token rotation, an AppSecret reset at
//! WeChat, and a broken app file — each through the app files and the secret files they name, as
//! a Kubernetes deployment changes them (OPERATIONS.md, "Apps and their secrets").

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::codec::Format;
use common::crypto::AesKey;
use common::push::{AppCredentials, Mode};
use common::{seal, signature};
use serde_json::{json, Value};

use super::pipeline::Pipeline;
use super::{say, serial, Deadline};

const APP: &str = "shop";
const APPID: &str = "wxf00dcafe00000001";
const ORIGINAL_ID: &str = "gh_f00dcafe0001";
const USER: &str = "o-app-files-user";
const TOKEN_1: &str = "shop-token-one-7f3a";
const TOKEN_2: &str = "shop-token-two-91c4";
const KEY_1: &str = "k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k";
const KEY_2: &str = "K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K2K";
const SECRET_1: &str = "shop-appsecret-one-5d2e";
const SECRET_2: &str = "shop-appsecret-two-b8a0";

/// Writes a file whole, the way a mounted volume changes: a new file renamed over the old one.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The app file, with tokens and keys named by their secret files (primary first).
fn app_file(secrets: &Path, tokens: &[&str], keys: &[&str]) -> String {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{{ file = \"{}\" }}", secrets.join(n).display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "appid = \"{APPID}\"\n\n[ingest]\noriginal_id = \"{ORIGINAL_ID}\"\ntokens = [{}]\n\
         encoding_aes_keys = [{}]\nformat = \"json\"\n\n[consumer]\nsecret = {{ file = \"{}\" }}\n",
        list(tokens),
        list(keys),
        secrets.join("app_secret").display()
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

struct Shop<'a> {
    pipeline: &'a Pipeline,
    next_msg: u64,
}

impl Shop<'_> {
    fn url(&self, query: &str) -> String {
        format!(
            "http://127.0.0.1:{}/wechat/{APP}?{query}",
            self.pipeline.ingest_port
        )
    }

    /// A text push signed with `token` and encrypted with `key`: (status, msg id).
    async fn push(&mut self, token: &str, key: &str) -> (u16, u64) {
        self.next_msg += 1;
        let msg_id = 7_100_000_000 + self.next_msg;
        let ts = now();
        let plain = json!({
            "ToUserName": ORIGINAL_ID, "FromUserName": USER, "CreateTime": ts,
            "MsgType": "text", "Content": format!("hello {msg_id}"), "MsgId": msg_id,
        })
        .to_string();
        let key = AesKey::from_encoding_aes_key(key).expect("test key");
        let creds = AppCredentials {
            token,
            aes_key: Some(&key),
            appid: APPID,
        };
        let sealed = seal::seal(&plain, Format::Json, Mode::Safe, &creds, ts, "nonce42");
        let response = self
            .pipeline
            .http
            .post(self.url(&sealed.query))
            .header("content-type", sealed.content_type)
            .body(sealed.body)
            .send()
            .await
            .expect("ingest answers");
        (response.status().as_u16(), msg_id)
    }

    /// The console's URL check, signed with `token`: the status and the body.
    async fn check_url(&self, token: &str) -> (u16, String) {
        let ts = now().to_string();
        let sig = signature::sign(&[token, &ts, "n1"]);
        let query = format!("signature={sig}&timestamp={ts}&nonce=n1&echostr=echo-{ts}");
        let response = self
            .pipeline
            .http
            .get(self.url(&query))
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Waits for the reply to `msg_id` at the simulated API; returns the appid it came with.
    async fn reply_to(&self, msg_id: u64) -> String {
        let wait = Deadline::new(Duration::from_secs(60), format!("the reply to {msg_id}"));
        loop {
            let sends: Vec<Value> = self
                .pipeline
                .http
                .get(format!("{}/sim/sends?touser={USER}", self.pipeline.sim_url))
                .send()
                .await
                .expect("sim answers")
                .json()
                .await
                .expect("sends JSON");
            let wanted = format!("echo {msg_id}:");
            if let Some(send) = sends.iter().find(|s| {
                s["body"]["text"]["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&wanted))
            }) {
                return send["appid"].as_str().unwrap_or_default().to_owned();
            }
            wait.tick().await;
        }
    }

    async fn wait_reloads(&self, result: &str, at_least: f64) {
        self.wait_reloads_of(result, at_least, at_least).await;
    }

    /// Waits for `ingest` and `consumer` reloads with `result` in each service.
    async fn wait_reloads_of(&self, result: &str, ingest_at_least: f64, at_least: f64) {
        let label = format!("result=\"{result}\"");
        let wait = Deadline::new(
            Duration::from_secs(30),
            format!("{at_least} {result} app reloads in both services"),
        );
        loop {
            let ingest = self
                .pipeline
                .ingest_metric("ingest_app_reloads_total", &label)
                .await;
            let consumer = self
                .pipeline
                .consumer_metric(0, "consumer_app_reloads_total", &label)
                .await;
            if ingest >= ingest_at_least && consumer >= at_least {
                return;
            }
            wait.tick().await;
        }
    }

    async fn slot(&self, credential: &str, slot: &str) -> f64 {
        let labels = format!("app=\"{APP}\",credential=\"{credential}\",slot=\"{slot}\"");
        self.pipeline
            .ingest_metric("ingest_credential_matches_total", &labels)
            .await
    }

    async fn sim_app(&self, secret: &str, revoke_tokens: bool) {
        let response = self
            .pipeline
            .http
            .post(format!("{}/sim/apps", self.pipeline.sim_url))
            .json(&json!({"appid": APPID, "secret": secret, "revoke_tokens": revoke_tokens}))
            .send()
            .await
            .expect("sim answers");
        assert!(response.status().is_success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_and_their_secrets_change_without_a_restart() {
    let _serial = serial().await;
    let mut pipeline = Pipeline::start("app-files", 1, &[]).await;
    let pids = |p: &Pipeline| {
        (
            p.ingest.as_ref().and_then(|i| i.pid()),
            p.consumers[0].0.pid(),
        )
    };
    let started_as = pids(&pipeline);
    let secrets = pipeline.dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    for (name, value) in [
        ("token_1", TOKEN_1),
        ("token_2", TOKEN_2),
        ("key_1", KEY_1),
        ("key_2", KEY_2),
    ] {
        // As `kubectl create secret --from-file` keeps a file's last line break.
        put(&secrets.join(name), &format!("{value}\n"));
    }
    put(&secrets.join("app_secret"), SECRET_1);
    let app_path = pipeline.apps_dir().join(format!("{APP}.toml"));
    let mut shop = Shop {
        pipeline: &pipeline,
        next_msg: 0,
    };

    // 1. A new app file: served by ingest, answered by the consumer with its own credentials.
    shop.sim_app(SECRET_1, false).await;
    put(&app_path, &app_file(&secrets, &["token_1"], &["key_1"]));
    shop.wait_reloads("applied", 1.0).await;
    let (status, body) = shop.check_url(TOKEN_1).await;
    assert_eq!(status, 200, "URL check of the new app: {body}");
    assert!(body.starts_with("echo-"), "{body}");
    let (status, msg) = shop.push(TOKEN_1, KEY_1).await;
    assert_eq!(status, 200, "a push to the new app is stored");
    assert_eq!(
        shop.reply_to(msg).await,
        APPID,
        "replied with the app's token"
    );

    // 2. AES key rotation: [new, old], then [new] only.
    put(
        &app_path,
        &app_file(&secrets, &["token_1"], &["key_2", "key_1"]),
    );
    shop.wait_reloads("applied", 2.0).await;
    let previous_before = shop.slot("aes_key", "previous").await;
    let (status_new, _) = shop.push(TOKEN_1, KEY_2).await;
    let (status_old, msg_old) = shop.push(TOKEN_1, KEY_1).await;
    assert_eq!((status_new, status_old), (200, 200), "either key decrypts");
    assert!(shop.slot("aes_key", "previous").await > previous_before);
    assert!(shop.slot("aes_key", "primary").await >= 1.0);
    shop.reply_to(msg_old).await;
    put(&app_path, &app_file(&secrets, &["token_1"], &["key_2"]));
    shop.wait_reloads("applied", 3.0).await;
    assert_eq!(shop.push(TOKEN_1, KEY_1).await.0, 400, "the retired key");
    assert_eq!(shop.push(TOKEN_1, KEY_2).await.0, 200);

    // 3. Token rotation: the console checks the URL with the new token while pushes under way
    //    are still signed with the old one; then the old one is removed.
    put(
        &app_path,
        &app_file(&secrets, &["token_2", "token_1"], &["key_2"]),
    );
    shop.wait_reloads("applied", 4.0).await;
    assert_eq!(
        shop.check_url(TOKEN_2).await.0,
        200,
        "URL check with the new token"
    );
    let (status, msg_old_token) = shop.push(TOKEN_1, KEY_2).await;
    assert_eq!(
        status, 200,
        "a push signed with the old token is still stored"
    );
    assert!(shop.slot("token", "previous").await >= 1.0);
    shop.reply_to(msg_old_token).await;
    put(&app_path, &app_file(&secrets, &["token_2"], &["key_2"]));
    shop.wait_reloads("applied", 5.0).await;
    assert_eq!(shop.push(TOKEN_1, KEY_2).await.0, 401, "the retired token");
    assert_eq!(shop.check_url(TOKEN_1).await.0, 401);

    // 4. AppSecret reset at WeChat: the old secret and the tokens fetched with it die at once;
    //    the Secret's file changes, and the consumer replaces the access token right away.
    let issued_before = shop.pipeline.sim_stats().await["tokens_issued"]
        .as_u64()
        .unwrap_or_default();
    shop.sim_app(SECRET_2, true).await;
    put(&secrets.join("app_secret"), &format!("{SECRET_2}\n"));
    // Only the consumer reads the AppSecret's file.
    shop.wait_reloads_of("applied", 5.0, 6.0).await;
    let wait = Deadline::new(
        Duration::from_secs(30),
        "a token fetched with the new secret",
    );
    while shop.pipeline.sim_stats().await["tokens_issued"]
        .as_u64()
        .unwrap_or_default()
        <= issued_before
    {
        wait.tick().await;
    }
    let (status, msg) = shop.push(TOKEN_2, KEY_2).await;
    assert_eq!(status, 200);
    assert_eq!(
        shop.reply_to(msg).await,
        APPID,
        "replies flow after the reset"
    );
    let unavailable = shop
        .pipeline
        .consumer_metric(
            0,
            "consumer_dead_letters_total",
            "reason=\"token_unavailable\"",
        )
        .await;
    assert_eq!(
        unavailable, 0.0,
        "no record waited for a token it could not get"
    );

    // 5. A broken app file: refused by both, counted, and the running configuration serves on.
    put(
        &app_path,
        "appid = \"wxf00dcafe00000001\"\n[ingest\noriginal_id = 1\n",
    );
    shop.wait_reloads("refused", 1.0).await;
    let (status, msg) = shop.push(TOKEN_2, KEY_2).await;
    assert_eq!(status, 200, "the running configuration still serves");
    shop.reply_to(msg).await;
    let log = std::fs::read_to_string(&shop.pipeline.consumers[0].0.log).unwrap_or_default();
    assert!(
        log.contains("shop.toml: 2:"),
        "the refusal names the file and the line"
    );

    // 6. The app file goes: ingest answers its pushes 404 from the next reload.
    std::fs::remove_file(&app_path).expect("remove the app file");
    shop.wait_reloads_of("applied", 6.0, 7.0).await;
    assert_eq!(shop.push(TOKEN_2, KEY_2).await.0, 404, "a removed app");

    // Same processes throughout, and no secret value in any of their log lines.
    pipeline.assert_running();
    assert_eq!(pids(&pipeline), started_as, "no restart");
    let mut logs = vec![pipeline.consumers[0].0.log.clone()];
    logs.extend(pipeline.ingest.as_ref().map(|i| i.log.clone()));
    for log in logs {
        let text = std::fs::read_to_string(&log).expect("log");
        for secret in [TOKEN_1, TOKEN_2, KEY_1, KEY_2, SECRET_1, SECRET_2] {
            assert!(!text.contains(secret), "a secret in {}", log.display());
        }
    }
    say(format!(
        "app-files: 6 changes applied, 1 refused; aes_key slots primary={} previous={}, token \
         slots primary={} previous={}",
        Shop {
            pipeline: &pipeline,
            next_msg: 0
        }
        .slot("aes_key", "primary")
        .await,
        Shop {
            pipeline: &pipeline,
            next_msg: 0
        }
        .slot("aes_key", "previous")
        .await,
        Shop {
            pipeline: &pipeline,
            next_msg: 0
        }
        .slot("token", "primary")
        .await,
        Shop {
            pipeline: &pipeline,
            next_msg: 0
        }
        .slot("token", "previous")
        .await,
    ));
}
