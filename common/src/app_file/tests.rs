//! Reading app files: secrets byte for byte, every problem with its place and without a secret,
//! the listing, and the change detection.

use std::path::Path;

use super::*;

/// A service's section, as the services type theirs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    secret: Spanned<SecretRef>,
    #[serde(default)]
    tokens: Vec<Spanned<ExpiringSecretRef>>,
}

#[derive(Debug)]
struct App {
    appid: AppId,
    secret: String,
    tokens: Vec<(String, Option<SystemTime>)>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Loads `dir` as a service reading `[consumer]` would (with `shop` static when `shop_static`).
fn load(dir: &Path, shop_static: bool) -> (Result<Vec<(String, App)>, String>, Sources) {
    let settings = AppFilesSettings {
        dir: dir.to_path_buf(),
        ..AppFilesSettings::default()
    };
    let (result, sources) = super::load::<Unread, Section, App>(
        &settings,
        Apps::new(),
        |name| shop_static && name == "shop",
        |parsed, check| {
            let Some(section) = parsed.consumer else {
                check.invalid("no [consumer] section");
                return None;
            };
            let secret = check.secret("consumer.secret", &section.secret, Ok);
            let tokens: Vec<_> = section
                .tokens
                .iter()
                .enumerate()
                .filter_map(|(i, entry)| {
                    check
                        .secret(&format!("consumer.tokens[{i}]"), entry, Ok)
                        .map(|t| (t, entry.get_ref().valid_until()))
                })
                .collect();
            Some(App {
                appid: parsed.appid?,
                secret: secret?,
                tokens,
            })
            .filter(|_| parsed.name.is_some())
        },
    );
    // Sorted by name, and out of their `Arc`s, for the assertions.
    let result = result.map(|apps| {
        let mut apps: Vec<(String, App)> = apps
            .into_iter()
            .map(|(name, app)| (name, Arc::into_inner(app).unwrap()))
            .collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        apps
    });
    (result, sources)
}

#[test]
fn a_secret_file_loses_its_final_line_break_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join(".secret"), " s3cret-hunter2 \r\n");
    write(
        &dir.path().join("shop.toml"),
        &format!(
            "appid = \"wx1\"\n[ingest]\nanything = 1\n[consumer]\nsecret = {{ file = \"{}/.secret\" }}\n\
             tokens = [{{ value = \"t\", valid_until = \"2000-01-01T00:00:00Z\" }}]\n",
            dir.path().display()
        ),
    );
    let (apps, _) = load(dir.path(), false);
    let apps = apps.unwrap();
    assert_eq!(apps.len(), 1, "the hidden secret file is not an app");
    let (name, app) = &apps[0];
    assert_eq!(name, "shop");
    assert_eq!(app.appid.as_str(), "wx1");
    assert_eq!(app.secret, " s3cret-hunter2 ");
    assert_eq!(
        app.tokens,
        [(
            "t".to_owned(),
            Some(humantime::parse_rfc3339("2000-01-01T00:00:00Z").unwrap())
        )]
    );
}

#[test]
fn a_quoted_secret_in_a_parser_message_is_blanked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[consumer]\nsecret = \"hunter2-misplaced\"\n",
    );
    let refused = load(dir.path(), false).0.unwrap_err();
    assert!(
        refused.contains("shop.toml: 3:10: invalid type"),
        "{refused}"
    );
    assert!(refused.contains("\"…\""), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
    assert_eq!(
        without_quoted("invalid type: string \"hunter2\", expected `value`"),
        "invalid type: string \"…\", expected `value`"
    );
}

#[test]
fn an_error_is_placed_by_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[consumer]\n  secret = { file = \"/nonexistent/secret-file\" }\n",
    );
    write(
        &dir.path().join("syntax.toml"),
        "appid = \"wx1\"\nappid =\n",
    );
    let refused = load(dir.path(), false).0.unwrap_err();
    assert!(
        refused.contains("shop.toml: 3:12: consumer.secret: cannot read the secret file"),
        "{refused}"
    );
    assert!(refused.contains("syntax.toml: 2:"), "{refused}");
    assert_eq!(position("ab\ncdé\nf", 7), "2:4", "columns count characters");
    assert_eq!(position("ab", 99), "1:3", "past the end: the end");
}

#[test]
fn both_value_and_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[consumer]\nsecret = { value = \"hunter2\", file = \"/x\" }\n",
    );
    write(
        &dir.path().join("none.toml"),
        "appid = \"wx2\"\n[consumer]\nsecret = {}\n",
    );
    let refused = load(dir.path(), false).0.unwrap_err();
    assert!(
        refused
            .contains("shop.toml: 3:10: consumer.secret: give exactly one of `value` and `file`"),
        "{refused}"
    );
    assert!(
        refused.contains("none.toml: 3:10: consumer.secret: give exactly one"),
        "{refused}"
    );
    assert!(!refused.contains("hunter2"), "{refused}");
}

#[test]
fn every_problem_of_every_file_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("Bad.toml"),
        "appid = \"\"\n[consumer]\nsecret = { value = \"\" }\nextra = 1\n",
    );
    write(
        &dir.path().join("shop.toml"),
        "appid = \"wx1\"\n[consumer]\nsecret = { value = \"s\" }\n",
    );
    write(&dir.path().join("other.toml"), "appid = \"wx3\"\n");
    write(&dir.path().join("notes.txt"), "not an app");
    let refused = load(dir.path(), true).0.unwrap_err();
    for part in [
        "Bad.toml: 4:1: unknown field `extra`",
        "other.toml: no [consumer] section",
        "shop.toml: the app `shop` is also configured as [apps.shop]; keep one",
    ] {
        assert!(refused.contains(part), "{part} missing from: {refused}");
    }
    write(
        &dir.path().join("Bad.toml"),
        "appid = \"\"\n[consumer]\nsecret = { value = \"s\" }\n",
    );
    let refused = load(dir.path(), false).0.unwrap_err();
    assert!(
        refused.contains("Bad.toml: the file name is the app's name"),
        "{refused}"
    );
    assert_eq!(refused.matches("Bad.toml").count(), 2, "{refused}");
    let missing = load(&dir.path().join("missing"), false).0.unwrap_err();
    assert!(missing.starts_with("app_files.dir "), "{missing}");
}

/// A directory with the app `shop`, whose AppSecret is read from the file returned beside it,
/// holding `secret`.
fn shop_with_secret_file(secret: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".secret");
    write(&path, secret);
    write(
        &dir.path().join("shop.toml"),
        &format!(
            "appid = \"wx1\"\n[consumer]\nsecret = {{ file = \"{}\" }}\n",
            path.display()
        ),
    );
    (dir, path)
}

/// Loads `dir` twice and observes both loads: a change is taken on its second read in a row.
fn observe_twice(changes: &mut Changes, dir: &Path) -> Change<Vec<(String, App)>> {
    let (first, sources) = load(dir, false);
    let once = changes.observe(first, sources);
    let (second, sources) = load(dir, false);
    let twice = changes.observe(second, sources);
    assert!(
        matches!(once, Change::None) || matches!(twice, Change::None),
        "one change taken twice: {once:?} then {twice:?}"
    );
    if matches!(twice, Change::None) {
        once
    } else {
        twice
    }
}

#[test]
fn a_changed_secret_file_is_a_change_and_a_broken_state_is_reported_once() {
    let (dir, secret) = shop_with_secret_file("one\n");
    let (first, seen) = load(dir.path(), false);
    assert_eq!(first.unwrap()[0].1.secret, "one");
    let mut changes = Changes::new(seen);
    assert!(matches!(
        observe_twice(&mut changes, dir.path()),
        Change::None
    ));

    write(&secret, "two\n");
    match observe_twice(&mut changes, dir.path()) {
        Change::Valid(apps) => assert_eq!(apps[0].1.secret, "two"),
        other => panic!("expected the rotation, got {other:?}"),
    }
    assert!(matches!(
        observe_twice(&mut changes, dir.path()),
        Change::None
    ));

    std::fs::remove_file(&secret).unwrap();
    assert!(matches!(
        observe_twice(&mut changes, dir.path()),
        Change::Refused(problems) if problems.contains("cannot read the secret file")
    ));
    assert!(
        matches!(observe_twice(&mut changes, dir.path()), Change::None),
        "the same broken state is reported once"
    );
    write(&secret, "two\n");
    assert!(
        matches!(observe_twice(&mut changes, dir.path()), Change::None),
        "back to what is in force: nothing to apply"
    );
}

/// A secret file written in place (truncated, then written) can be read cut short: a wrong
/// secret that is otherwise a valid app. A version is taken only once two loads in a row read it.
#[test]
fn a_secret_file_caught_half_written_is_never_taken() {
    let (dir, secret) = shop_with_secret_file("one\n");
    let (_, seen) = load(dir.path(), false);
    let mut changes = Changes::new(seen);

    write(&secret, "tw");
    let (half_written, sources) = load(dir.path(), false);
    assert!(matches!(
        changes.observe(half_written, sources),
        Change::None
    ));
    write(&secret, "two\n");
    let (whole, sources) = load(dir.path(), false);
    assert!(
        matches!(changes.observe(whole, sources), Change::None),
        "read once: not yet"
    );
    let (whole, sources) = load(dir.path(), false);
    match changes.observe(whole, sources) {
        Change::Valid(apps) => assert_eq!(apps[0].1.secret, "two"),
        other => panic!("expected the whole secret on the second read, got {other:?}"),
    }
}

#[test]
fn the_handle_swaps_the_apps_whole() {
    let handle = AppsHandle::new(HashMap::from([("a".to_owned(), Arc::new(1))]));
    let before = handle.all();
    handle.replace(HashMap::from([("b".to_owned(), Arc::new(2))]));
    assert_eq!(before.len(), 1, "a snapshot stays as it was");
    assert!(!handle.contains("a") && handle.get("b").as_deref() == Some(&2));
}

#[test]
fn the_reload_interval_must_be_above_zero() {
    let mut settings = AppFilesSettings::default();
    assert!(settings.problems().is_empty() && settings.dir().is_none());
    settings.reload_interval = Duration::ZERO;
    assert_eq!(
        settings.problems(),
        ["app_files.reload_interval must be above zero"]
    );
}
