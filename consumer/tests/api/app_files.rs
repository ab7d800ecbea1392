//! Apps from files, changed while running: a changed AppSecret replaces the cached access token at
//! once (before the old one expires), a removed app's records are dead-lettered `unknown_app`, a
//! broken file is refused and counted while the running apps stay.

use std::path::Path;
use std::time::{Duration, Instant};

use consumer::processor::Outcome;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";
const OUTLET: &str = "outlet";
const OUTLET_APPID: &str = "wx0u7137000000001";

fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mount_token_for(h: &Harness, secret: &str, token: &str) {
    Mock::given(method("POST"))
        .and(path(STABLE_TOKEN))
        .and(body_partial_json(
            json!({"appid": OUTLET_APPID, "secret": secret}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": token, "expires_in": 7200})),
        )
        .mount(&h.wechat)
        .await;
}

#[tokio::test]
async fn app_files_change_the_served_apps_and_their_tokens_while_running() {
    let mut h = Harness::new(REPLY).await;
    let apps = h.dir.join("apps");
    std::fs::create_dir_all(&apps).expect("apps dir");
    let secret_file = h.dir.join("outlet-app-secret");
    put(&secret_file, "outlet-secret-1\n");
    let app_file = apps.join(format!("{OUTLET}.toml"));
    let file = format!(
        "appid = \"{OUTLET_APPID}\"\n[ingest]\nignored = \"by the consumer\"\n\
         [consumer]\nsecret = {{ file = \"{}\" }}\n",
        secret_file.display()
    );
    put(&app_file, &file);
    h.settings.app_files.dir = apps.clone();
    h.settings.app_files.reload_interval = Duration::from_millis(50);
    mount_token_for(&h, "outlet-secret-1", "OUTLET-TOKEN-1").await;
    mount_token_for(&h, "outlet-secret-2", "OUTLET-TOKEN-2").await;

    let services = h.services().await;
    let first = services.tokens.token(OUTLET).await.expect("a token");
    assert_eq!(first.value.expose(), "OUTLET-TOKEN-1");
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(services.apps_watcher.run(stop.clone()));
    let reloads = |result: &str| h.metric("consumer_app_reloads_total", &[("result", result)]);

    // The AppSecret's file changes: the cached token (valid for two more hours) is replaced now.
    put(&secret_file, "outlet-secret-2\n");
    wait_for("the reload", || reloads("applied") >= 1.0).await;
    let replaced = services.tokens.token(OUTLET).await.expect("a token");
    assert_eq!(replaced.value.expose(), "OUTLET-TOKEN-2");
    assert!(replaced.generation > first.generation);

    // A broken file: refused once, the running apps stay.
    put(&app_file, "appid = \"wx1\"\n[consumer\n");
    wait_for("the refusal", || reloads("refused") >= 1.0).await;
    assert!(services.processor.apps.contains(OUTLET));

    // The file goes: its records are dead-lettered as `unknown_app`.
    std::fs::remove_file(&app_file).expect("remove");
    wait_for("the removal", || reloads("applied") >= 2.0).await;
    let mut env = text("o-outlet-user", "9001", "hi");
    env.app = OUTLET.to_owned();
    match services.processor.process(&env).await.expect("processed") {
        Outcome::DeadLettered(letter) => assert_eq!(letter.reason.kind(), "unknown_app"),
        other => panic!("expected unknown_app, got {other:?}"),
    }
    assert_eq!(
        reloads("refused"),
        1.0,
        "the same broken state is counted once"
    );
    stop.cancel();
    watcher.await.expect("watcher stops");
}
