//! Tests of the real `aftercart` executable: configuration errors, signals and exit codes, the
//! dev stack and `aftercart send`, against a real (mock cluster) broker over sockets.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aftercart_ingress::app::topic_specs;
use aftercart_kafka::KafkaSettings;
use aftercart_shopify::Family;
use aftercart_tests::http::Webhook;
use aftercart_tests::{eventually, read_topic, unique_prefix, Broker};

const BIN: &str = env!("CARGO_BIN_EXE_aftercart");

/// The binary with a clean environment: no AFTERCART_* variable leaks in from the caller, and
/// a spool directory of its own (tests run side by side; one ingress per spool).
fn aftercart(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("AFTERCART_INGRESS_SPOOL_DIR", temp_spool_dir())
        .args(args)
        .stdin(Stdio::null());
    command
}

fn temp_spool_dir() -> std::path::PathBuf {
    aftercart_tests::scratch(&format!("spool-{}", unique_prefix()))
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the child to exit, killing it after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_64_without_secrets() {
    let output = run(aftercart(&["ingress"])
        .env("AFTERCART_SHOPIFY_SECRETS", "hunter2-secret")
        .env("AFTERCART_SHOPIFY_SECRETS_FILE", "/nonexistent")
        .env("AFTERCART_INGRESS_LISTEN", "not-an-address")
        .env("AFTERCART_INGRESS_MAX_BODY_BYTES", "huge")
        .env("AFTERCART_TOPIC_PARTITIONS", "0")
        .env("AFTERCART_INGRESS_PUBLISH_DEADLINE", "10s"));
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "AFTERCART_KAFKA_BROKERS",
        "AFTERCART_SHOPIFY_SECRETS_FILE",
        "AFTERCART_INGRESS_LISTEN",
        "AFTERCART_INGRESS_MAX_BODY_BYTES",
        "AFTERCART_TOPIC_PARTITIONS",
        "AFTERCART_INGRESS_PUBLISH_DEADLINE",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
    assert!(stderr.contains("6 problem(s)"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "a secret was printed:\n{stderr}"
    );
}

/// The lines of a run's stderr that warn about deprecated setting names.
fn deprecation_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains("deprecated setting names"))
        .map(String::from)
        .collect()
}

#[test]
fn an_old_setting_name_still_works_with_one_warning_line_and_no_value() {
    // Two old names, both invalid: their problems are reported under the new names, which
    // proves the values arrived there; the one warning line names both, never their values.
    let output = run(aftercart(&["abandonment"])
        .env("AFTERCART_ABANDON_AFTER", "0s")
        .env("AFTERCART_REPEAT_WINDOW", "not-a-duration-7731"));
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AFTERCART_ABANDONMENT_ABANDON_AFTER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("AFTERCART_ABANDONMENT_REPEAT_WINDOW"),
        "{stderr}"
    );
    let warnings = deprecation_lines(&output);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("AFTERCART_ABANDON_AFTER (now AFTERCART_ABANDONMENT_ABANDON_AFTER)")
    );
    assert!(warnings[0].contains("AFTERCART_REPEAT_WINDOW"));
    assert!(
        !warnings[0].contains("7731"),
        "a value was printed: {}",
        warnings[0]
    );

    // The old flag is still accepted too, with the same one warning line (a script or manifest
    // passing old flags learns of the rename as one using old variables does).
    let output = run(&mut aftercart(&[
        "abandonment",
        "--abandon-after=0s",
        "--repeat-window",
        "not-a-duration-7731",
    ]));
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AFTERCART_ABANDONMENT_ABANDON_AFTER"),
        "{stderr}"
    );
    let warnings = deprecation_lines(&output);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("--abandon-after (now --abandonment-abandon-after)"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("--repeat-window (now --abandonment-repeat-window)"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("7731"), "a value was printed");

    // The new flags warn about nothing.
    let output = run(&mut aftercart(&[
        "abandonment",
        "--abandonment-abandon-after=0s",
    ]));
    assert_eq!(output.status.code(), Some(64));
    assert!(deprecation_lines(&output).is_empty());
}

#[test]
fn with_old_and_new_setting_names_both_set_the_new_one_wins() {
    let problem = |old: &str, new: &str| {
        let output = run(aftercart(&["abandonment"])
            .env("AFTERCART_ABANDON_AFTER", old)
            .env("AFTERCART_ABANDONMENT_ABANDON_AFTER", new));
        assert_eq!(output.status.code(), Some(64), "brokers are missing");
        let warnings = deprecation_lines(&output);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("AFTERCART_ABANDON_AFTER (ignored"),
            "{}",
            warnings[0]
        );
        String::from_utf8_lossy(&output.stderr).contains("AFTERCART_ABANDONMENT_ABANDON_AFTER:")
    };
    assert!(!problem("0s", "5m"), "the old, invalid value was used");
    assert!(problem("5m", "0s"), "the new, invalid value was not used");
}

#[test]
fn a_typo_in_an_audiences_destination_exits_64_naming_the_field() {
    let dir = aftercart_tests::scratch(&format!("audiences-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audiences.toml");
    std::fs::write(
        &file,
        r#"
[destinations.meta]
type = "meta"
audience_id = "238O0001"
access_token = "meta-secret-token"
base_url = "htps://graph.facebook.com"

[[audiences]]
name = "abandoners"
source = "abandonments"
destinations = ["meta"]
"#,
    )
    .unwrap();
    let output = run(aftercart(&["audiences"])
        .env("AFTERCART_KAFKA_BROKERS", "127.0.0.1:9")
        .env("AFTERCART_AUDIENCES_CONFIG", &file));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "destinations.meta.audience_id: \"238O0001\" is not a numeric id",
        "destinations.meta.base_url: \"htps://graph.facebook.com\" is not an http(s) URL",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
    assert!(
        !stderr.contains("meta-secret-token"),
        "a secret was printed"
    );
}

#[test]
fn plain_http_destinations_and_a_missing_state_hash_key_exit_64_naming_the_settings() {
    let referrals = |allow_http: bool, key: bool| {
        let mut command = aftercart(&["referrals"]);
        command
            .env("AFTERCART_KAFKA_BROKERS", "127.0.0.1:1")
            .env("AFTERCART_REFERRALS_CODE_SECRET", "a-referral-code-secret")
            .env(
                "AFTERCART_REFERRALS_WEBHOOK_URL",
                "http://127.0.0.1:9/hooks?token=t0ken",
            )
            .env(
                "AFTERCART_SHOPIFY_ADMIN_URL",
                "http://127.0.0.1:9/{shop}/graphql.json",
            );
        if allow_http {
            command.env("AFTERCART_ALLOW_INSECURE_HTTP", "true");
        }
        if key {
            command.env("AFTERCART_STATE_HASH_KEY", "a-state-hash-key-of-16");
        }
        run(&mut command)
    };
    let refused = referrals(false, true);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    for named in [
        "AFTERCART_REFERRALS_WEBHOOK_URL",
        "AFTERCART_SHOPIFY_ADMIN_URL",
        "AFTERCART_ALLOW_INSECURE_HTTP=true",
    ] {
        assert!(stderr.contains(named), "{named} not named:\n{stderr}");
    }
    assert!(
        !stderr.contains("t0ken"),
        "the URL's token was printed:\n{stderr}"
    );
    assert!(!stderr.contains("AFTERCART_STATE_HASH_KEY"), "{stderr}");

    // Allowed, the URLs pass; production has no default state hash key.
    let no_key = referrals(true, false);
    let stderr = String::from_utf8_lossy(&no_key.stderr);
    assert_eq!(no_key.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("AFTERCART_STATE_HASH_KEY: required"),
        "{stderr}"
    );
    assert!(!stderr.contains("_URL"), "{stderr}");
}

#[test]
fn the_insecure_http_switch_is_also_a_flag_and_a_bad_value_exits_64() {
    let referrals = |extra: &[&str], switch: Option<&str>| {
        let mut args = vec!["referrals"];
        args.extend(extra);
        let mut command = aftercart(&args);
        command
            .env("AFTERCART_KAFKA_BROKERS", "127.0.0.1:1")
            .env("AFTERCART_REFERRALS_CODE_SECRET", "a-referral-code-secret")
            .env(
                "AFTERCART_REFERRALS_WEBHOOK_URL",
                "http://127.0.0.1:9/hooks",
            );
        if let Some(value) = switch {
            command.env("AFTERCART_ALLOW_INSECURE_HTTP", value);
        }
        run(&mut command)
    };
    // The flag allows http like the variable: only the missing key is refused.
    let flagged = referrals(&["--allow-insecure-http=true"], None);
    let stderr = String::from_utf8_lossy(&flagged.stderr);
    assert_eq!(flagged.status.code(), Some(64), "{stderr}");
    assert!(
        !stderr.contains("AFTERCART_REFERRALS_WEBHOOK_URL"),
        "{stderr}"
    );
    assert!(stderr.contains("AFTERCART_STATE_HASH_KEY"), "{stderr}");
    // The flag wins over the variable both ways: `=false` refuses http although the
    // environment says true.
    let overridden = referrals(&["--allow-insecure-http=false"], Some("true"));
    let stderr = String::from_utf8_lossy(&overridden.stderr);
    assert_eq!(overridden.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("AFTERCART_REFERRALS_WEBHOOK_URL"),
        "the flag's false did not hold over the variable:\n{stderr}"
    );
    let unreadable = referrals(&[], Some("maybe"));
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    assert_eq!(unreadable.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("AFTERCART_ALLOW_INSECURE_HTTP"), "{stderr}");
}

#[test]
fn a_retention_too_long_for_milliseconds_exits_64_instead_of_wrapping() {
    // About 300 million years: more milliseconds than an i64 holds (it used to wrap negative,
    // so redaction markers and orders would have expired at once).
    let mut command = aftercart(&["referrals"]);
    command
        .env("AFTERCART_KAFKA_BROKERS", "127.0.0.1:1")
        .env("AFTERCART_REFERRALS_CODE_SECRET", "a-referral-code-secret")
        .env("AFTERCART_REFERRALS_ORDER_RETENTION", "300000000y")
        .env("AFTERCART_REFERRALS_REDACTION_RETENTION", "300000000y");
    let refused = run(&mut command);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    for named in [
        "AFTERCART_REFERRALS_ORDER_RETENTION: is too long",
        "AFTERCART_REFERRALS_REDACTION_RETENTION: is too long",
    ] {
        assert!(stderr.contains(named), "{named} not named:\n{stderr}");
    }
}

#[test]
fn nudges_need_the_shared_state_hash_key_and_take_the_old_identity_key_as_its_alias() {
    let nudges = |vars: &[(&str, &str)]| {
        let mut command = aftercart(&["nudges"]);
        for (name, value) in vars {
            command.env(name, value);
        }
        run(&mut command)
    };
    // Production has no default: exit 64 naming the shared key, not the old name.
    let missing = nudges(&[]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("AFTERCART_STATE_HASH_KEY: required"),
        "{stderr}"
    );
    assert!(!stderr.contains("IDENTITY_KEY"), "{stderr}");
    assert!(deprecation_lines(&missing).is_empty());

    // The old name's value arrives under the new one (its too-short value is refused there),
    // with one warning line naming both and never the value.
    let old = nudges(&[("AFTERCART_NUDGES_IDENTITY_KEY", "short-5309")]);
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert_eq!(old.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("AFTERCART_STATE_HASH_KEY: must be at least 16 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("5309"), "a key was printed:\n{stderr}");
    let warnings = deprecation_lines(&old);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("AFTERCART_NUDGES_IDENTITY_KEY (now AFTERCART_STATE_HASH_KEY)"),
        "{}",
        warnings[0]
    );

    // So does the _FILE variant; a valid key leaves only the missing brokers.
    let dir = aftercart_tests::scratch(&format!("nudges-key-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("identity-key");
    std::fs::write(&file, "an-old-identity-key-of-32-chars\n").unwrap();
    let from_file = nudges(&[("AFTERCART_NUDGES_IDENTITY_KEY_FILE", file.to_str().unwrap())]);
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&from_file.stderr);
    assert_eq!(from_file.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("AFTERCART_KAFKA_BROKERS"), "{stderr}");
    assert!(!stderr.contains("AFTERCART_STATE_HASH_KEY:"), "{stderr}");
    assert!(!stderr.contains("an-old-identity-key"), "{stderr}");
    let warnings = deprecation_lines(&from_file);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0]
        .contains("AFTERCART_NUDGES_IDENTITY_KEY_FILE (now AFTERCART_STATE_HASH_KEY_FILE)"));
}

#[test]
fn unknown_flags_exit_64_and_help_exits_0() {
    assert_eq!(
        run(&mut aftercart(&["ingress", "--no-such-flag"]))
            .status
            .code(),
        Some(64)
    );
    let help =
        run(aftercart(&["ingress", "--help"]).env("AFTERCART_SHOPIFY_SECRETS", "hunter2-secret"));
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "AFTERCART_KAFKA_BROKERS",
        "AFTERCART_TOPIC_PREFIX",
        "AFTERCART_SHOPIFY_SECRETS",
        "AFTERCART_SHOPIFY_SECRETS_FILE",
        "AFTERCART_SHOPIFY_SHOP_SECRETS_FILE",
        "AFTERCART_INGRESS_LISTEN",
        "AFTERCART_ADMIN_LISTEN",
        "AFTERCART_INGRESS_MAX_BODY_BYTES",
        "AFTERCART_TOPIC_PARTITIONS",
        "AFTERCART_TOPIC_REPLICATION",
    ] {
        assert!(text.contains(variable), "{variable} missing from --help");
    }
    assert!(!text.contains("hunter2"), "--help shows a secret value");
}

/// The ingress binary on a mock cluster with its topics made; returns (child, webhook, admin).
fn start_ingress(broker: &Broker, prefix: &str, secret: &str) -> (Child, SocketAddr, SocketAddr) {
    let mut settings = KafkaSettings::new(broker.bootstrap(), prefix);
    settings.partitions = 3;
    broker.precreate_for_mock(&topic_specs(&settings, 4 << 20));
    let (listen, admin) = (free_addr(), free_addr());
    let child = aftercart(&["ingress"])
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env("AFTERCART_TOPIC_PREFIX", prefix)
        .env("AFTERCART_TOPIC_PARTITIONS", "3")
        .env("AFTERCART_SHOPIFY_SECRETS", secret)
        .env("AFTERCART_INGRESS_LISTEN", listen.to_string())
        .env("AFTERCART_ADMIN_LISTEN", admin.to_string())
        .env("AFTERCART_LOG_FORMAT", "json")
        // The load generator's HTTP/2 run needs it (off by default).
        .env("AFTERCART_INGRESS_HTTP2", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ingress starts");
    (child, listen, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_binary_publishes_and_exits_0_on_sigterm_on_the_mock_cluster() {
    ingress_binary_publishes_and_exits_0_on_sigterm(&Broker::mock()).await;
}

/// On Tansu the binary creates its topics itself through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_binary_publishes_and_exits_0_on_sigterm_on_tansu() {
    let Some(broker) = Broker::tansu().await else {
        return;
    };
    ingress_binary_publishes_and_exits_0_on_sigterm(&broker).await;
}

async fn ingress_binary_publishes_and_exits_0_on_sigterm(broker: &Broker) {
    let prefix = unique_prefix();
    let (mut child, listen, admin) = start_ingress(broker, &prefix, "binary-secret");
    eventually("readiness", Duration::from_secs(30), || async {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && aftercart_tests::http::get(admin, "/readyz").await.status == 200;
        ready.then_some(())
    })
    .await;
    let webhook = Webhook::new(
        "orders/create",
        br#"{"id":5,"cart_token":"c5","email":"private@example.com"}"#.to_vec(),
        "binary-secret",
    );
    assert_eq!(webhook.post(listen).await.status, 200);

    signal(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, Duration::from_secs(20));
        let mut logs = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
        (code, logs)
    })
    .await
    .unwrap();
    assert_eq!(code.0, 0, "logs:\n{}", code.1);
    for line in code.1.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    }
    assert!(
        !code.1.contains("private@example.com") && !code.1.contains("binary-secret"),
        "personal data or secret in logs"
    );
    let records = read_topic(&broker.bootstrap(), &format!("{prefix}orders")).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, webhook.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_topics_with_different_partition_counts_exit_78() {
    let broker = Broker::mock();
    let prefix = unique_prefix();
    let settings = KafkaSettings::new(broker.bootstrap(), &prefix);
    let mut specs = topic_specs(&settings, 4 << 20);
    for spec in &mut specs {
        spec.partitions = if spec.name.ends_with("carts") { 2 } else { 3 };
    }
    broker.precreate_for_mock(&specs);
    let mut child = aftercart(&["ingress"])
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env("AFTERCART_TOPIC_PREFIX", &prefix)
        .env("AFTERCART_TOPIC_PARTITIONS", "3")
        .env("AFTERCART_SHOPIFY_SECRETS", "s")
        .env("AFTERCART_INGRESS_LISTEN", free_addr().to_string())
        .env("AFTERCART_ADMIN_LISTEN", free_addr().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, logs) = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, Duration::from_secs(30));
        let mut logs = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
        (code, logs)
    })
    .await
    .unwrap();
    assert_eq!(code, 78, "{logs}");
    assert!(
        logs.contains("different partition counts") && logs.contains("carts=2"),
        "{logs}"
    );
}

/// Reads the dev banner until it shows the webhook URL; returns (webhook addr, admin addr, brokers).
fn read_banner(child: &mut Child) -> (SocketAddr, SocketAddr, String) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut webhook, mut admin, mut brokers) = (None, None, None);
    while webhook.is_none() || admin.is_none() || brokers.is_none() {
        let line = lines.next().expect("banner line").expect("utf-8");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Kafka", "brokers", value, ..] => brokers = Some(value.to_string()),
            ["Webhook", "URL", url, ..] => {
                webhook = Some(
                    url.trim_start_matches("http://")
                        .trim_end_matches("/webhooks/shopify")
                        .parse()
                        .unwrap(),
                )
            }
            ["Admin", url, ..] => {
                admin = Some(
                    url.trim_start_matches("http://")
                        .trim_end_matches("/metrics")
                        .parse()
                        .unwrap(),
                )
            }
            _ => {}
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (webhook.unwrap(), admin.unwrap(), brokers.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_stack_takes_the_demo_journey_and_stops_on_ctrl_c() {
    let audiences = aftercart_tests::scratch("dev-audiences");
    // The example nudges file with its files in a directory of this test's own.
    let nudges_dir = aftercart_tests::scratch("dev-nudges");
    std::fs::create_dir_all(&nudges_dir).unwrap();
    let example = include_str!("../../../examples/nudges.toml").replace(
        r#"dir = ".aftercart/nudges""#,
        &format!("dir = {:?}", nudges_dir.join("out").display().to_string()),
    );
    std::fs::write(nudges_dir.join("nudges.toml"), example).unwrap();
    let mut child = aftercart(&[
        "dev",
        "--ingress-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .env("AFTERCART_AUDIENCES_DIR", &audiences)
    .env("AFTERCART_NUDGES_CONFIG", nudges_dir.join("nudges.toml"))
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("dev starts");
    let (webhook, admin, brokers) = read_banner(&mut child);
    eventually("dev readiness", Duration::from_secs(30), || async {
        (aftercart_tests::http::get(admin, "/readyz").await.status == 200).then_some(())
    })
    .await;
    let url = format!("http://{webhook}/webhooks/shopify");
    let demo = tokio::task::spawn_blocking(move || {
        run(&mut aftercart(&["send", "--demo", "--send-url", &url]))
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert_eq!(demo.status.code(), Some(0), "{printed}");
    assert_eq!(printed.lines().count(), 13, "{printed}");
    assert_eq!(printed.matches("\"duplicate\"").count(), 1, "{printed}");

    let count = |family: Family| {
        let brokers = brokers.clone();
        async move {
            read_topic(&brokers, &format!("shopify.{}", family.as_str()))
                .await
                .len()
        }
    };
    assert_eq!(count(Family::Carts).await, 2);
    assert_eq!(count(Family::Checkouts).await, 3);
    assert_eq!(
        count(Family::Orders).await,
        4,
        "the redelivered order is published once; the friend's and the switcher's orders too"
    );
    assert_eq!(
        count(Family::Fulfillments).await,
        3,
        "shipped, out for delivery, delivered"
    );
    let metrics = aftercart_tests::http::get(admin, "/metrics").await.body;
    assert!(
        metrics.contains(r#"aftercart_ingress_requests_total{family="orders",status="200"} 5"#),
        "{metrics}"
    );
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            metrics.contains(&format!("\n{family} ")),
            "{family} missing"
        );
    }
    // The buyer became an advocate and the friend's first order, with the code, is under review.
    let (invites, rewards) = eventually("referral events", Duration::from_secs(30), || {
        let brokers = brokers.clone();
        async move {
            let invites = read_topic(&brokers, "aftercart.referral-invites").await;
            let rewards = read_topic(&brokers, "aftercart.referral-rewards").await;
            (!invites.is_empty() && !rewards.is_empty()).then_some((invites, rewards))
        }
    })
    .await;
    assert_eq!(invites.len(), 1);
    let reward: serde_json::Value = serde_json::from_slice(&rewards[0].value).unwrap();
    assert_eq!(reward["type"], "reward.pending", "{reward}");
    // The journey told the purchase step by step, then asked for a review 10 s after delivery
    // and relayed the referral invite that came 5 s after it (one invite, not two).
    let touchpoints = eventually("the timed touchpoints", Duration::from_secs(40), || {
        let brokers = brokers.clone();
        async move {
            let records = read_topic(&brokers, "aftercart.touchpoints").await;
            let types: Vec<String> = records
                .iter()
                .map(|r| {
                    let value: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                    value["type"].as_str().unwrap_or_default().to_string()
                })
                .collect();
            types.iter().any(|t| t == "review_request").then_some(types)
        }
    })
    .await;
    let count = |kind: &str| touchpoints.iter().filter(|t| *t == kind).count();
    assert_eq!(
        count("order_confirmed"),
        3,
        "the buyer's, the friend's and the one who ordered through another cart"
    );
    for kind in [
        "shipped",
        "out_for_delivery",
        "delivered",
        "referral_invitation",
        "review_request",
    ] {
        assert_eq!(count(kind), 1, "{kind} in {touchpoints:?}");
    }
    // The consenting buyer appears in the built-in recent-purchasers audience's file, hashed.
    let snapshot = audiences.join("recent-purchasers/snapshot.csv");
    let text = eventually("the audience file", Duration::from_secs(30), || async {
        std::fs::read_to_string(&snapshot).ok()
    })
    .await;
    // printf '%s' buyer@example.com | sha256sum
    assert!(
        text.contains("6a6c26195c3682faa816966af789717c3bfa834eee6c599d667d2b3429c27cfd"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&audiences);
    // The abandoned checkout gets a nudge within a minute; the buyer who left a checkout and
    // ordered through another cart gets none.
    let nudges = eventually("a nudge", Duration::from_secs(90), || {
        let brokers = brokers.clone();
        async move {
            let metrics = aftercart_tests::http::get(admin, "/metrics").await.body;
            let purchased =
                metrics.contains(r#"aftercart_nudges_suppressed_total{reason="purchased"} 1"#);
            let nudges = read_topic(&brokers, "aftercart.nudges").await;
            (purchased && !nudges.is_empty()).then_some(nudges)
        }
    })
    .await;
    let nudged: std::collections::BTreeSet<String> = nudges
        .iter()
        .map(|r| {
            let nudge: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            nudge["customer"]["email"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        nudged,
        std::collections::BTreeSet::from(["fence.sitter@example.com".to_string()])
    );
    let shop_dir = nudges_dir.join("out/aftercart-demo.myshopify.com");
    eventually("the nudge file", Duration::from_secs(30), || async {
        std::fs::read_dir(&shop_dir)
            .ok()
            .and_then(|mut files| files.next())
            .map(|_| ())
    })
    .await;
    let _ = std::fs::remove_dir_all(&nudges_dir);

    signal(&child, "INT");
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

#[test]
fn send_refuses_when_there_is_nothing_to_send_and_lists_samples() {
    assert_eq!(run(&mut aftercart(&["send"])).status.code(), Some(64));
    let list = run(&mut aftercart(&["send", "--list"]));
    assert_eq!(list.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&list.stdout).contains("orders_paid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_makes_every_topic_and_is_idempotent() {
    let Some(broker) = Broker::tansu().await else {
        return;
    };
    let prefix = unique_prefix();
    for attempt in 0..2 {
        let bootstrap = broker.bootstrap();
        let prefix = prefix.clone();
        let output = tokio::task::spawn_blocking(move || {
            run(aftercart(&["topics", "create"])
                .env("AFTERCART_KAFKA_BROKERS", bootstrap)
                .env("AFTERCART_TOPIC_PREFIX", prefix)
                .env("AFTERCART_TOPIC_PARTITIONS", "4"))
        })
        .await
        .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed = String::from_utf8_lossy(&output.stdout).lines().count();
        assert_eq!(listed, 30, "attempt {attempt}: the raw topics (fulfillments too) plus the abandonment (output, changelog, dead letters), referrals (invites, rewards, by-shop, changelog, dead letters), audiences (batches, by-shop, changelog, dead letters), journey (touchpoints, kpis, by-shop, changelog, dead letters), nudges (nudges, by-shop, changelog, dead letters) and data requests topics");
    }
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let metadata = tokio::task::spawn_blocking(move || {
        rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    let ours: Vec<_> = metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&prefix))
        .collect();
    assert_eq!(ours.len(), 8, "the raw topics carry the prefix");
    assert!(ours.iter().all(|t| t.partitions().len() == 4));
}

/// The abandonment binary on `broker` with its own topics and group under `prefix`.
fn start_abandonment(broker: &Broker, prefix: &str, admin: SocketAddr) -> Child {
    aftercart(&["abandonment"])
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env("AFTERCART_TOPIC_PREFIX", prefix)
        .env("AFTERCART_TOPIC_PARTITIONS", "3")
        .env(
            "AFTERCART_ABANDONMENT_GROUP",
            format!("{prefix}abandonment"),
        )
        .env(
            "AFTERCART_ABANDONMENT_OUTPUT_TOPIC",
            format!("{prefix}abandonments"),
        )
        .env(
            "AFTERCART_ABANDONMENT_STATE_TOPIC",
            format!("{prefix}abandonment-state"),
        )
        .env(
            "AFTERCART_ABANDONMENT_DEAD_LETTER_TOPIC",
            format!("{prefix}abandonment-dead-letter"),
        )
        .env(
            "AFTERCART_ABANDONMENT_DATA_REQUESTS_TOPIC",
            format!("{prefix}data_requests"),
        )
        .env("AFTERCART_ABANDONMENT_ABANDON_AFTER", "3s")
        .env(
            "AFTERCART_KAFKA_PROPERTIES",
            "session.timeout.ms=6000,heartbeat.interval.ms=500",
        )
        .env("AFTERCART_ADMIN_LISTEN", admin.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("abandonment starts")
}

async fn wait_ready(admin: SocketAddr) {
    eventually("readiness", Duration::from_secs(60), || async {
        let up = tokio::net::TcpStream::connect(admin).await.is_ok();
        (up && aftercart_tests::http::get(admin, "/readyz").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abandonment_binary_killed_mid_way_emits_exactly_one_abandonment_per_journey() {
    let broker = Broker::mock();
    let prefix = unique_prefix();
    let (mut ingress, listen, ingress_admin) = start_ingress(&broker, &prefix, "kill-secret");
    let names = |suffix: &str| format!("{prefix}{suffix}");
    let mut specs = topic_specs(&KafkaSettings::new(broker.bootstrap(), &prefix), 4 << 20);
    for name in [
        names("abandonments"),
        names("abandonment-state"),
        names("abandonment-dead-letter"),
        names("data_requests"),
    ] {
        let mut settings = KafkaSettings::new(broker.bootstrap(), &prefix);
        settings.partitions = 3;
        specs.push(aftercart_kafka::TopicSpec::new(name, &settings));
    }
    for spec in &mut specs {
        spec.partitions = 3;
    }
    broker.precreate_for_mock(&specs);
    wait_ready(ingress_admin).await;
    let admin = free_addr();
    let mut first = start_abandonment(&broker, &prefix, admin);
    wait_ready(admin).await;

    let carts: Vec<String> = (0..12).map(|n| format!("kill-cart-{n}")).collect();
    for cart in &carts {
        let body = format!(
            r#"{{"token":"chk-{cart}","cart_token":"{cart}","email":"k@example.com","total_price":"10.00"}}"#
        );
        assert_eq!(
            Webhook::new("checkouts/create", body.into_bytes(), "kill-secret")
                .post(listen)
                .await
                .status,
            200
        );
    }
    // Kill right around the moment the abandonments become due: some may be emitted, some
    // persisted, some neither.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    signal(&first, "KILL");
    let _ =
        tokio::task::spawn_blocking(move || wait_exit(&mut first, Duration::from_secs(10))).await;

    let admin = free_addr();
    let mut second = start_abandonment(&broker, &prefix, admin);
    wait_ready(admin).await;
    let output = names("abandonments");
    let bootstrap = broker.bootstrap();
    eventually("every journey abandoned", Duration::from_secs(60), || {
        let (output, bootstrap) = (output.clone(), bootstrap.clone());
        async move { (read_topic(&bootstrap, &output).await.len() >= 12).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let records = read_topic(&bootstrap, &output).await;
    let mut per_journey = std::collections::HashMap::<String, usize>::new();
    for record in &records {
        *per_journey.entry(record.key_str().to_string()).or_default() += 1;
    }
    assert_eq!(per_journey.len(), 12, "{per_journey:?}");
    assert!(
        per_journey.values().all(|n| *n == 1),
        "a journey abandoned twice: {per_journey:?}"
    );
    signal(&second, "TERM");
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut second, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    signal(&ingress, "TERM");
    let _ =
        tokio::task::spawn_blocking(move || wait_exit(&mut ingress, Duration::from_secs(20))).await;
}

/// The load generator against the real ingress, over HTTP/1.1 and over HTTP/2: every answer is
/// accounted for, bad signatures are refused, redeliveries are answered as duplicates, and the
/// JSON report carries them. Its whole-run books match what the ingress published, record for
/// record, and with `--live-orders` every journey is new and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_reports_accepted_duplicate_and_refused_webhooks_from_the_ingress() {
    let broker = Broker::mock();
    let prefix = unique_prefix();
    let (mut child, listen, admin) = start_ingress(&broker, &prefix, "loadgen-secret");
    eventually("readiness", Duration::from_secs(30), || async {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && aftercart_tests::http::get(admin, "/readyz").await.status == 200;
        ready.then_some(())
    })
    .await;
    let url = format!("http://{listen}/webhooks/shopify");
    let mut outputs = Vec::new();
    for (protocol, extra) in [
        ("http/1.1", vec![]),
        ("h2 over 2 connections", vec!["--http2-connections", "2"]),
        ("http/1.1", vec!["--live-orders", "--run-id", "5eed"]),
    ] {
        let url = url.clone();
        let output = tokio::task::spawn_blocking(move || {
            let mut argv = vec![
                "loadgen",
                "--loadgen-url",
                &url,
                "--shopify-secrets",
                "loadgen-secret",
                "--connections",
                "4",
                "--warmup",
                "0s",
                "--duration",
                "2s",
                "--journeys",
                "50",
                "--duplicates",
                "0.2",
                "--bad-signatures",
                "0.2",
                "--json",
            ];
            argv.extend(extra);
            run(&mut aftercart(&argv))
        })
        .await
        .unwrap();
        outputs.push((protocol, output));
    }
    signal(&child, "TERM");
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
        .await
        .unwrap();
    // Published records by run id (a webhook id's first 8 hex digits) and Shopify topic.
    let mut published = std::collections::BTreeMap::<(String, String), u64>::new();
    let mut orders = std::collections::BTreeSet::new();
    let topics = aftercart_kafka::TopicNames::new(&prefix).ingress_outputs();
    for topic in &topics {
        for record in read_topic(&broker.bootstrap(), topic).await {
            let id = record.header("shopify-webhook-id").unwrap();
            let shopify_topic = record.header("shopify-topic").unwrap().to_string();
            if shopify_topic == "orders/paid" && id.starts_with("00005eed") {
                let order: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
                assert!(
                    orders.insert(order["id"].as_u64().unwrap()),
                    "order repeated"
                );
            }
            *published
                .entry((id[..8].to_string(), shopify_topic))
                .or_default() += 1;
        }
    }
    for (protocol, output) in outputs {
        assert!(
            output.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let status = |code: &str| report["status"][code].as_u64().unwrap_or(0);
        assert_eq!(report["protocol"], protocol, "{report}");
        assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
        assert!(report["duplicates"].as_u64().unwrap() > 0, "{report}");
        assert!(status("401") > 0, "{report}");
        assert_eq!(
            status("200") + status("401"),
            report["requests"].as_u64().unwrap(),
            "only 200s and 401s expected: {report}"
        );
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        let run = &report["run"];
        assert_eq!(run["unconfirmed"], 0, "{report}");
        let run_id = format!("{:08x}", report["run_id"].as_u64().unwrap());
        let by_topic = |topic: &str| run["published"][topic].as_u64().unwrap_or(0);
        for topic in ["carts/update", "checkouts/create", "orders/paid"] {
            let in_kafka = published
                .get(&(run_id.clone(), topic.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(by_topic(topic), in_kafka, "{topic}: {report}");
        }
        assert_eq!(by_topic("orders/paid"), run["orders"].as_u64().unwrap());
        // Whole journeys: as many carts as checkouts, orders created as paid.
        assert_eq!(by_topic("carts/update"), by_topic("checkouts/create"));
        assert_eq!(by_topic("checkouts/update"), by_topic("checkouts/create"));
        assert_eq!(by_topic("orders/create"), by_topic("orders/paid"));
        assert_eq!(
            by_topic("checkouts/create"),
            run["orders"].as_u64().unwrap() + run["abandoned_checkouts"].as_u64().unwrap(),
            "{report}"
        );
        if run_id == "00005eed" {
            // Past the 50 journeys of the pool, new ones: one distinct order each.
            assert!(run["journeys"].as_u64().unwrap() > 50, "{report}");
            assert_eq!(orders.len() as u64, by_topic("orders/paid"), "{report}");
        }
    }
}

/// `dev --broker-only` prints its address, serves Kafka there, and stops on SIGTERM.
#[test]
fn dev_broker_only_prints_its_address_and_stops_on_sigterm() {
    let mut child = aftercart(&["dev", "--broker-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("aftercart dev broker ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    std::net::TcpStream::connect(address).expect("the broker accepts connections");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
}

/// A mock broker with the ingress's topics under a fresh prefix: the broker, the prefix and
/// the carts topic's name.
fn broker_with_ingress_topics() -> (Broker, String, String) {
    let broker = Broker::mock();
    let prefix = unique_prefix();
    let settings = KafkaSettings::new(broker.bootstrap(), &prefix);
    broker.precreate_for_mock(&topic_specs(&settings, 4 << 20));
    let topic = format!("{prefix}carts");
    (broker, prefix, topic)
}

/// `aftercart spool inspect` reports a spool left behind; `aftercart spool drain` publishes it
/// in order and empties it, and refuses while a process holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_inspect_and_drain_publish_what_a_stopped_ingress_left() {
    use aftercart_ingress::spool::{unix_ms, Spool, SpoolMetrics, SpoolRecord};

    let (broker, prefix, topic) = broker_with_ingress_topics();
    let dir = temp_spool_dir();
    let (spool, _) = Spool::open(&dir, 1 << 20, SpoolMetrics::unregistered()).unwrap();
    for n in 0..5 {
        let record = SpoolRecord {
            topic: topic.clone(),
            key: "shop.myshopify.com/t".into(),
            headers: vec![("shopify-webhook-id".into(), format!("id-{n}").into_bytes())],
            body: bytes::Bytes::from(format!(r#"{{"token":"t","n":{n}}}"#)),
            received_unix_ms: unix_ms(),
        };
        spool
            .append(record, None)
            .await
            .unwrap()
            .map_err(|e| e.0)
            .unwrap();
    }
    let dir_arg = dir.to_str().unwrap();
    let held = run(
        aftercart(&["spool", "drain", "--ingress-spool-dir", dir_arg])
            .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
            .env("AFTERCART_TOPIC_PREFIX", &prefix),
    );
    assert_eq!(
        held.status.code(),
        Some(69),
        "refused while the spool is held"
    );
    drop(spool);
    // The writer thread lets go of the lock just after the last handle is dropped.
    std::thread::sleep(Duration::from_millis(200));

    let inspected = run(&mut aftercart(&[
        "spool",
        "inspect",
        "--ingress-spool-dir",
        dir_arg,
    ]));
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert_eq!(inspected.status.code(), Some(0), "{text}");
    assert!(text.contains("pending: 5 events"), "{text}");
    assert!(text.contains(&format!("topic {topic}: 5 events")), "{text}");
    assert!(
        !text.contains("shop.myshopify.com"),
        "no keys or bodies in the report: {text}"
    );

    let drained = run(
        aftercart(&["spool", "drain", "--ingress-spool-dir", dir_arg])
            .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
            .env("AFTERCART_TOPIC_PREFIX", &prefix),
    );
    let out = String::from_utf8_lossy(&drained.stdout);
    assert_eq!(
        drained.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let records = read_topic(&broker.bootstrap(), &topic).await;
    let ids: Vec<_> = records
        .iter()
        .map(|r| r.header("shopify-webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        (0..5).map(|n| format!("id-{n}")).collect::<Vec<_>>(),
        "all, once, in order"
    );
    let after = run(&mut aftercart(&[
        "spool",
        "inspect",
        "--ingress-spool-dir",
        dir_arg,
    ]));
    assert!(String::from_utf8_lossy(&after.stdout).contains("pending: 0 events"));
}

/// Events the ingress set aside in `refused/` (Kafka refused them for their size) are shown by
/// `spool inspect`, and `spool drain` on that directory publishes them once Kafka takes them.
/// While Kafka still refuses them, the drain never sets them aside a second time (the operator
/// would then delete them with the directory): it gives up at its timeout, non-zero, and
/// keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_set_aside_are_inspected_and_drained_never_set_aside_again() {
    use aftercart_ingress::spool::refused::{self, SetAside, REFUSED_DIR};
    use aftercart_ingress::spool::{unix_ms, Entry, RealDisk, SpoolRecord};

    let (broker, prefix, topic) = broker_with_ingress_topics();
    let dir = temp_spool_dir();
    let entry = Entry {
        seq: 41,
        record: SpoolRecord {
            topic: topic.clone(),
            key: "shop.myshopify.com/t".into(),
            headers: vec![("shopify-webhook-id".into(), b"id-aside".to_vec())],
            body: bytes::Bytes::from_static(br#"{"token":"t"}"#),
            received_unix_ms: unix_ms(),
        },
    };
    assert!(matches!(
        refused::set_aside(&RealDisk, &dir, &entry, u64::MAX).unwrap(),
        SetAside::Written(_)
    ));
    let inspected = run(&mut aftercart(&[
        "spool",
        "inspect",
        "--ingress-spool-dir",
        dir.to_str().unwrap(),
    ]));
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(
        text.contains("set aside in refused/ (Kafka refused them for their size): 1 events"),
        "{text}"
    );

    let aside = dir.join(REFUSED_DIR);
    let drain = |timeout: &str| {
        run(aftercart(&[
            "spool",
            "drain",
            "--ingress-spool-dir",
            aside.to_str().unwrap(),
            "--timeout",
            timeout,
        ])
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env("AFTERCART_TOPIC_PREFIX", &prefix))
    };
    broker.refuse_produce(
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        1000,
    );
    let refused_again = drain("3s");
    assert_eq!(
        refused_again.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused_again.stderr)
    );
    assert_eq!(refused::held(&RealDisk, &dir).unwrap().events, 1, "kept");
    assert!(!aside.join(REFUSED_DIR).exists(), "not set aside again");

    broker.accept_produce();
    let drained = drain("1m");
    assert_eq!(
        drained.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let records = read_topic(&broker.bootstrap(), &topic).await;
    let published: Vec<_> = records
        .iter()
        .filter(|r| r.header("shopify-webhook-id") == Some("id-aside"))
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(refused::held(&RealDisk, &dir).unwrap().events, 0);
}

#[test]
fn the_committed_references_match_the_code_and_a_stale_one_is_named() {
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference");
    let output = run(&mut aftercart(&[
        "docs",
        "--check",
        "--out",
        committed.to_str().unwrap(),
    ]));
    assert!(
        output.status.success(),
        "docs/reference is stale: run `make docs` and commit it\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let scratch = temp_spool_dir();
    let written = run(&mut aftercart(&[
        "docs",
        "--out",
        scratch.to_str().unwrap(),
    ]));
    assert!(written.status.success());
    let metrics = std::fs::read_to_string(scratch.join("metrics.md")).unwrap();
    for family in [
        "aftercart_ingress_requests_total",
        "aftercart_ingress_spool_rejected_total",
        "aftercart_abandonment_abandonments_total",
        "aftercart_referrals_rewards_total",
        "aftercart_referrals_http_deliveries_total",
        "aftercart_audiences_batch_duration_seconds",
    ] {
        assert!(
            metrics.contains(&format!("| `{family}` |")),
            "{family} missing"
        );
    }
    std::fs::write(scratch.join("metrics.md"), "stale").unwrap();
    let stale = run(&mut aftercart(&[
        "docs",
        "--check",
        "--out",
        scratch.to_str().unwrap(),
    ]));
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("metrics.md"));
    let _ = std::fs::remove_dir_all(scratch);
}

/// A properties file (Java style: a JAAS line with `,` and `=` in the password, comments) and
/// AFTERCART_KAFKA_PROPERTIES: their secrets never reach --help, a configuration error or the
/// logs, even at debug level with librdkafka's own lines, while a SASL refusal is logged as
/// one clear line. The mock cluster has no SASL handlers, so authentication is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_kafka_properties_never_reach_the_output() {
    const SECRETS: [&str; 2] = ["file-s3cret", "env-s3cret"];
    let dir = temp_spool_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.properties");
    std::fs::write(
        &file,
        "# as a provider hands it out\n\
         security.protocol = SASL_PLAINTEXT\n\
         sasl.mechanism=PLAIN\n\
         sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
         username=\"svc\" password=\"file-s3cret,with=odd\";\n\
         client.dns.lookup=use_all_dns_ips\n",
    )
    .unwrap();
    let with_secrets = |command: &mut Command| {
        command
            .env("AFTERCART_KAFKA_PROPERTIES_FILE", &file)
            .env("AFTERCART_KAFKA_PROPERTIES", "sasl.password=env-s3cret")
            .env("AFTERCART_SHOPIFY_SECRETS", "test-secret");
    };
    let assert_clean = |what: &str, text: &str| {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    };

    let mut help = aftercart(&["ingress", "--help"]);
    with_secrets(&mut help);
    let help = run(&mut help);
    assert_clean("--help", &String::from_utf8_lossy(&help.stdout));

    let mut bad = aftercart(&["ingress"]);
    with_secrets(&mut bad);
    bad.env("AFTERCART_KAFKA_BROKERS", "127.0.0.1:1").env(
        "AFTERCART_KAFKA_PROPERTIES",
        "sasl.password=env-s3cret,sasl.mechanisms=MAGIC",
    );
    let bad = run(&mut bad);
    assert_eq!(bad.status.code(), Some(64), "a bad SASL setting exits 64");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("sasl.mechanisms"), "{stderr}");
    assert_clean("a configuration error", &stderr);

    let broker = Broker::mock();
    let (listen, admin) = (free_addr(), free_addr());
    let mut running = aftercart(&["ingress"]);
    with_secrets(&mut running);
    let mut child = running
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env("AFTERCART_INGRESS_LISTEN", listen.to_string())
        .env("AFTERCART_ADMIN_LISTEN", admin.to_string())
        .env("AFTERCART_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ingress starts");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (stderr, lines) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = lines.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    eventually(
        "a logged authentication failure",
        Duration::from_secs(30),
        || {
            let lines = lines.clone();
            async move {
                lines
                    .lock()
                    .unwrap()
                    .contains("Kafka authentication failed")
                    .then_some(())
            }
        },
    )
    .await;
    let readyz = aftercart_tests::http::get(admin, "/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    let metrics = aftercart_tests::http::get(admin, "/metrics").await.body;
    assert!(
        aftercart_tests::metric_value(
            &metrics,
            r#"aftercart_ingress_kafka_errors_total{kind="authentication"}"#
        ) >= 1.0,
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let logs = lines.lock().unwrap().clone();
    assert!(
        logs.contains("client.dns.lookup"),
        "the skipped Java setting is named"
    );
    assert_clean("the logs", &logs);

    // `kafka check` reports on the same settings, with librdkafka's own debug lines on (its
    // configuration dump and SASL handshake included).
    let mut check = aftercart(&["kafka", "check", "--timeout", "2s"]);
    with_secrets(&mut check);
    check
        .env("AFTERCART_KAFKA_BROKERS", broker.bootstrap())
        .env(
            "AFTERCART_KAFKA_PROPERTIES",
            "sasl.password=env-s3cret,debug=all",
        )
        .env("AFTERCART_LOG", "debug");
    let check = run(&mut check);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    assert_eq!(check.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert_clean("kafka check", &format!("{stdout}{stderr}"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `aftercart kafka check` with the services' settings: the cluster, brokers, topics with
/// partitions, a consumer group joined, and with --write one record produced and read back;
/// against nothing reachable it fails with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_check_reports_the_cluster_and_fails_when_it_cannot_connect() {
    let broker = Broker::mock();
    let prefix = unique_prefix();
    let mut settings = KafkaSettings::new(broker.bootstrap(), prefix.as_str());
    settings.partitions = 3;
    let check_topic = format!("{prefix}check");
    let mut specs = topic_specs(&settings, 4 << 20);
    specs.push(aftercart_kafka::TopicSpec::new(&check_topic, &settings));
    broker.precreate_for_mock(&specs);
    let output = tokio::task::spawn_blocking({
        let (bootstrap, prefix, check_topic) =
            (broker.bootstrap(), prefix.clone(), check_topic.clone());
        move || {
            run(
                aftercart(&["kafka", "check", "--write", "--check-topic", &check_topic])
                    .env("AFTERCART_KAFKA_BROKERS", bootstrap)
                    .env("AFTERCART_TOPIC_PREFIX", prefix)
                    .env("AFTERCART_TOPIC_PARTITIONS", "3")
                    .env("AFTERCART_REFERRALS_CODE_SECRET", "a-referral-code-secret")
                    .env("AFTERCART_STATE_HASH_KEY", "a-state-hash-key-of-16"),
            )
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ok    librdkafka"), "{stdout}");
    assert!(stdout.contains("ok    cluster"), "{stdout}");
    assert!(stdout.contains("ok    broker: 1 at"), "{stdout}");
    assert!(
        stdout.contains(&format!("ok    topic {prefix}checkouts: 3 partitions")),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    produce and consume: produced to"),
        "{stdout}"
    );
    let records = read_topic(&broker.bootstrap(), &check_topic).await;
    assert_eq!(
        records.len(),
        1,
        "exactly one record, to the check topic only"
    );
    assert_eq!(
        read_topic(&broker.bootstrap(), &format!("{prefix}checkouts"))
            .await
            .len(),
        0,
        "nothing written to the services' topics"
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}");

    let unreachable = run(aftercart(&["kafka", "check", "--timeout", "2s"])
        .env("AFTERCART_KAFKA_BROKERS", free_addr().to_string())
        .env("AFTERCART_REFERRALS_CODE_SECRET", "a-referral-code-secret")
        .env("AFTERCART_STATE_HASH_KEY", "a-state-hash-key-of-16"));
    let stdout = String::from_utf8_lossy(&unreachable.stdout);
    assert!(stdout.contains("FAIL  connect"), "{stdout}");
    assert_eq!(unreachable.status.code(), Some(1), "{stdout}");
}
