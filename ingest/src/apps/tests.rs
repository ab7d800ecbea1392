//! Loading the app files: secrets from files, every problem at once with its place, no secret in
//! any message, and the watcher's swap-or-refuse.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const KEY_A: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn settings(dir: &Path) -> Settings {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut settings = Settings::load_layers(&config, "none", Some(Default::default())).unwrap();
    settings.app_files.dir = dir.to_path_buf();
    settings.app_files.reload_interval = Duration::from_millis(20);
    settings
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn secrets_come_from_files_and_the_lists_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join(".token"), "tok-new-hunter2\n");
    write(&dir.path().join(".key"), &format!("{KEY_A}\r\n"));
    let file = format!(
        r#"
appid = "wx1"
[ingest]
original_id = "gh_1"
tokens = [{{ file = "{}/.token" }}, {{ value = "tok-old", valid_until = "2000-01-01T00:00:00Z" }}]
encoding_aes_keys = [{{ file = "{}/.key" }}, {{ value = "{KEY_B}" }}]
[consumer]
secret = {{ file = "/not/read/here" }}
"#,
        dir.path().display(),
        dir.path().display()
    );
    write(&dir.path().join("shop.toml"), &file);
    let (apps, _) = load(&settings(dir.path())).unwrap();
    let shop = &apps["shop"];
    assert_eq!(shop.appid.as_str(), "wx1");
    let (tokens, slots) = shop.live_tokens(std::time::SystemTime::now());
    assert_eq!(
        tokens,
        ["tok-new-hunter2"],
        "the line break is not part of it"
    );
    assert_eq!(slots, [0], "a token past valid_until is no longer live");
    let (keys, slots) = shop.live_keys(std::time::SystemTime::now());
    assert_eq!((keys.len(), slots), (2, vec![0, 1]));
    assert!(shop.refuses_plaintext());
    assert!(!format!("{shop:?}").contains("hunter2"));
}

#[test]
fn every_problem_is_reported_with_its_place_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[ingest]\noriginal_id = \"gh_1\"\ntokens = [{ value = \"hunter2\" }\n",
    );
    write(
        &dir.path().join("Bad.toml"),
        "appid = \"\"\n[ingest]\noriginal_id = \"\"\ntokens = []\nencoding_aes_keys = [{ value = \"short-hunter2\" }]\n",
    );
    write(
        &dir.path().join("misplaced.toml"),
        "appid = \"wx4\"\n[ingest]\noriginal_id = \"gh_4\"\ntokens = \"hunter2-misplaced\"\n",
    );
    write(
        &dir.path().join("other.toml"),
        "appid = \"wx3\"\n[ingest]\noriginal_id = \"gh_3\"\n  tokens = [{ file = \"/nonexistent/token-file\" }]\n",
    );
    let refused = load(&settings(dir.path())).unwrap_err();
    for part in [
        "shop.toml: 4:",
        "may hold only",
        "appid",
        "original_id is empty",
        "tokens is empty",
        "encoding_aes_keys[0]: not usable",
        "other.toml: 4:13: ingest.tokens[0]: cannot read the secret file",
    ] {
        assert!(refused.contains(part), "{part} missing from: {refused}");
    }
    assert!(
        refused.contains("misplaced.toml: 4:10: invalid type"),
        "{refused}"
    );
    assert!(!refused.contains("hunter2"), "no secret in: {refused}");
}

#[test]
fn an_app_in_both_places_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.apps.insert(
        "shop".into(),
        crate::config::AppSettings {
            appid: "wx1".into(),
            original_id: "gh_1".into(),
            token: "t".to_owned().into(),
            encoding_aes_key: None,
            format: None,
            allow_plaintext: false,
            answer: Default::default(),
        },
    );
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[ingest]\noriginal_id = \"gh_1\"\ntokens = [{ value = \"t\" }]\n",
    );
    let refused = load(&settings).unwrap_err();
    assert!(
        refused.contains("also configured as [apps.shop]"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_watcher_swaps_valid_changes_and_keeps_serving_through_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = |token: &str| {
        format!("appid = \"wx1\"\n[ingest]\noriginal_id = \"gh_1\"\ntokens = [{{ file = \"{}/.t\" }}]\n# {token}\n", dir.path().display())
    };
    write(&dir.path().join(".t"), "one");
    write(&dir.path().join("shop.toml"), &app("a"));
    let settings = settings(dir.path());
    let (apps, seen) = load(&settings).unwrap();
    let handle = AppsHandle::new(apps);
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let watcher = AppsWatcher {
        settings,
        handle: handle.clone(),
        metrics: metrics.clone(),
        seen,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(watcher.run(stop.clone()));
    let token_of = |h: &AppsHandle| h.get("shop").map(|a| a.tokens[0].value.expose().to_owned());
    let wait = |what: &'static str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let counted = |result: &str| metrics.app_reloads.with_label_values(&[result]).get();

    // A changed secret file alone is a change.
    write(&dir.path().join(".t"), "two");
    tokio::task::yield_now().await;
    let h = handle.clone();
    tokio::task::spawn_blocking(move || {
        wait("rotated", &|| token_of(&h).as_deref() == Some("two"))
    })
    .await
    .unwrap();
    assert_eq!(counted("applied"), 1);

    // A broken file: refused once, the running apps stay.
    write(&dir.path().join("shop.toml"), "appid = \n");
    let m = metrics.clone();
    tokio::task::spawn_blocking(move || {
        wait("refused", &|| {
            m.app_reloads.with_label_values(&["refused"]).get() == 1
        })
    })
    .await
    .unwrap();
    assert_eq!(token_of(&handle).as_deref(), Some("two"));

    // A new app appears, the broken one is fixed: applied together.
    write(&dir.path().join("shop.toml"), &app("b"));
    write(
        &dir.path().join("new.toml"),
        "appid = \"wx2\"\n[ingest]\noriginal_id = \"gh_2\"\ntokens = [{ value = \"n\" }]\n",
    );
    let h = handle.clone();
    tokio::task::spawn_blocking(move || wait("added", &|| h.get("new").is_some()))
        .await
        .unwrap();
    assert_eq!(
        counted("refused"),
        1,
        "the same broken state is not counted twice"
    );
    stop.cancel();
    task.await.unwrap();
}

#[test]
fn the_example_app_file_is_valid_but_for_its_secret_files() {
    // config/app-example.toml names secret files of a pod; everything else in it must load.
    let dir = tempfile::tempdir().unwrap();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/app-example.toml");
    std::fs::copy(&example, dir.path().join("shop.toml")).unwrap();
    let refused = load(&settings(dir.path())).unwrap_err();
    let problems: Vec<&str> = refused.split("; ").collect();
    assert_eq!(problems.len(), 2, "{refused}");
    assert!(
        problems
            .iter()
            .all(|p| p.contains("cannot read the secret file")),
        "{refused}"
    );
}
