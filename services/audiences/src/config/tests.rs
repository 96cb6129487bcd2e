//! Configuration: the built-in audiences, the example file, and errors reported all at once.

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    audiences: AudiencesArgs,
}

fn validate(args: &[&str]) -> Result<AudiencesConfig, ConfigErrors> {
    let mut all = vec!["aftercart", "--kafka-brokers", "127.0.0.1:9092"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).expect("flags parse");
    cli.audiences.validate(
        &cli.kafka,
        Duration::from_secs(5),
        &AudiencesDefaults::production(),
    )
}

fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A file removed when dropped.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            let path = std::env::temp_dir().join(format!(
                "aftercart-audiences-{}-{}.toml",
                std::process::id(),
                fastrand_name()
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }
    fn fastrand_name() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn without_a_file_the_built_in_audiences_export_to_files() {
    let config = validate(&[]).unwrap();
    let names: Vec<&str> = config
        .rules
        .audiences
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "abandoned-checkouts",
            "high-value-abandoners",
            "recent-purchasers"
        ]
    );
    assert!(matches!(config.destinations["files"], Destination::File(_)));
    assert_eq!(config.rules.flush_interval_ms, 30_000);
    assert_eq!(config.exporter_group("files"), "aftercart-audiences-files");
}

#[test]
fn the_example_file_starts_with_its_placeholders_and_every_destination() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/audiences.toml");
    let config = validate(&[
        "--audiences-config",
        path,
        "--audiences-meta-base-url",
        "https://127.0.0.1:1/",
    ])
    .unwrap();
    let kinds: Vec<&str> = config
        .destinations
        .values()
        .map(Destination::kind)
        .collect();
    assert_eq!(kinds, ["file", "google", "meta", "tiktok"]);
    let Destination::Meta(meta) = &config.destinations["meta"] else {
        panic!("meta");
    };
    assert_eq!(
        meta.base_url, "https://127.0.0.1:1",
        "the trailing slash is dropped"
    );
    assert!(
        !format!("{config:?}").contains("placeholder-meta-token"),
        "tokens never print"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let file = write(
        r#"
[destinations.meta]
type = "meta"
audience_id = "${AFTERCART_TEST_SURELY_UNSET}"

[[audiences]]
name = "a"
source = "carts"
destinations = ["meta", "nowhere"]
"#,
    );
    let errors = validate(&[
        "--audiences-config",
        file.0.to_str().unwrap(),
        "--audiences-export-flush-interval",
        "0s",
    ])
    .unwrap_err();
    let text = errors.problems().join("\n");
    for expected in [
        "AFTERCART_AUDIENCES_EXPORT_FLUSH_INTERVAL",
        "AFTERCART_TEST_SURELY_UNSET",
        "access_token: required",
        "\"nowhere\" is not defined",
        "source \"carts\"",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn a_filter_key_of_another_source_is_refused() {
    let file = write(
        r#"
[destinations.files]
type = "file"

[[audiences]]
name = "buyers"
source = "orders"
destinations = ["files"]
filter = { value_tiers = ["high"] }
"#,
    );
    let errors = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap_err();
    assert!(errors.problems().join("\n").contains("value_tiers"));
}

#[test]
fn tokens_can_come_from_files() {
    let token = write("secret-from-file\n");
    let text = format!(
        "[destinations.t]\ntype = \"tiktok\"\nadvertiser_id = \"1\"\naudience_id = \"2\"\naccess_token_file = {:?}\n\n[[audiences]]\nname = \"a\"\nsource = \"customers\"\ndestinations = [\"t\"]\n",
        token.0.to_str().unwrap()
    );
    let file = write(&text);
    let config = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap();
    let Destination::Tiktok(target) = &config.destinations["t"] else {
        panic!("tiktok");
    };
    assert_eq!(target.access_token.expose(), "secret-from-file");
}

#[test]
fn a_platform_destination_serves_one_audience_only() {
    let file = write(
        r#"
[destinations.meta]
type = "meta"
audience_id = "1"
access_token = "t"

[[audiences]]
name = "a"
source = "orders"
destinations = ["meta"]

[[audiences]]
name = "b"
source = "customers"
destinations = ["meta"]
"#,
    );
    let errors = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap_err();
    assert!(
        errors
            .problems()
            .join("\n")
            .contains("cannot hold several (a, b)"),
        "{errors}"
    );
}

#[test]
fn google_takes_one_credential_of_four_kinds() {
    let google = |auth: &str| {
        format!(
            "[destinations.g]\ntype = \"google\"\noperating_account_id = \"123-456-7890\"\nuser_list_id = \"2\"\n{auth}\n\n[[audiences]]\nname = \"a\"\nsource = \"orders\"\ndestinations = [\"g\"]\n"
        )
    };
    let refreshing = write(&google(
        "refresh_token = \"r\"\nclient_id = \"c\"\nclient_secret = \"s\"",
    ));
    let config = validate(&["--audiences-config", refreshing.0.to_str().unwrap()]).unwrap();
    let Destination::Google(target, GoogleAuth::Refresh { token_url, .. }) =
        &config.destinations["g"]
    else {
        panic!("a refreshing Google destination");
    };
    assert_eq!(token_url, GOOGLE_TOKEN_URL);
    assert_eq!(target.base_url, "https://datamanager.googleapis.com");
    assert_eq!(target.operating_account.account_type, "GOOGLE_ADS");

    let metadata = write(&google("application_default = true"));
    let config = validate(&["--audiences-config", metadata.0.to_str().unwrap()]).unwrap();
    assert!(matches!(
        &config.destinations["g"],
        Destination::Google(_, GoogleAuth::Metadata { url }) if url == GOOGLE_METADATA_TOKEN_URL
    ));

    let key = std::env::temp_dir().join(format!("aftercart-sa-{}.json", std::process::id()));
    let pem = include_str!("../export/testdata/service-account-key.pem");
    std::fs::write(
        &key,
        serde_json::json!({"type": "service_account", "client_email": "sa@p.iam.gserviceaccount.com",
            "private_key": pem, "token_uri": "https://oauth2.googleapis.com/token"})
        .to_string(),
    )
    .unwrap();
    let keyed = write(&google(&format!(
        "service_account_key_file = {:?}",
        key.display().to_string()
    )));
    let config = validate(&["--audiences-config", keyed.0.to_str().unwrap()]).unwrap();
    assert!(matches!(
        &config.destinations["g"],
        Destination::Google(_, GoogleAuth::ServiceAccount { client_email, .. }) if client_email == "sa@p.iam.gserviceaccount.com"
    ));
    assert!(
        !format!("{config:?}").contains("PRIVATE KEY"),
        "keys never print"
    );
    std::fs::remove_file(&key).ok();

    let two = write(&google("access_token = \"a\"\napplication_default = true"));
    let errors = validate(&["--audiences-config", two.0.to_str().unwrap()]).unwrap_err();
    assert!(
        errors.problems().join("\n").contains("exactly one of"),
        "{errors}"
    );
    let no_client = write(&google("refresh_token = \"r\""));
    let errors = validate(&["--audiences-config", no_client.0.to_str().unwrap()]).unwrap_err();
    let text = errors.problems().join("\n");
    assert!(text.contains("client_id: required"), "{text}");
    assert!(text.contains("client_secret: required"), "{text}");
}

#[test]
fn the_legacy_ads_destination_keeps_its_developer_token_and_refresh_flow() {
    let file = write(
        "[destinations.g]\ntype = \"google_ads_legacy\"\ncustomer_id = \"1\"\nuser_list_id = \"2\"\ndeveloper_token = \"d\"\nrefresh_token = \"r\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\n[[audiences]]\nname = \"a\"\nsource = \"orders\"\ndestinations = [\"g\"]\n",
    );
    let config = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap();
    let Destination::GoogleAdsLegacy(target, GoogleAuth::Refresh { .. }) =
        &config.destinations["g"]
    else {
        panic!("a legacy Google Ads destination");
    };
    assert_eq!(target.base_url, "https://googleads.googleapis.com");
    assert_eq!(config.destinations["g"].kind(), "google_ads_legacy");
    let both = write(
        "[destinations.g]\ntype = \"google_ads_legacy\"\ncustomer_id = \"1\"\nuser_list_id = \"2\"\ndeveloper_token = \"d\"\naccess_token = \"a\"\nrefresh_token = \"r\"\n\n[[audiences]]\nname = \"a\"\nsource = \"orders\"\ndestinations = [\"g\"]\n",
    );
    let errors = validate(&["--audiences-config", both.0.to_str().unwrap()]).unwrap_err();
    assert!(
        errors.problems().join("\n").contains("not both"),
        "{errors}"
    );
}

#[test]
fn a_typo_in_a_destination_is_named_at_start() {
    let file = write(
        r#"
[destinations.meta]
type = "meta"
audience_id = "12O45"
access_token = "t"
base_url = "htps://graph.facebook.com"

[destinations.google]
type = "google"
operating_account_id = "123-456-789O"
user_list_id = "42"
access_token = "t"
base_url = "datamanager.googleapis.com"

[destinations.legacy]
type = "google_ads_legacy"
customer_id = "1234567890"
user_list_id = "list-1"
developer_token = "d"
access_token = "t"

[destinations.tiktok]
type = "tiktok"
advertiser_id = "adv"
audience_id = "7"
base_url = "https://"

[[audiences]]
name = "a"
source = "orders"
destinations = ["meta"]

[[audiences]]
name = "b"
source = "orders"
destinations = ["google"]

[[audiences]]
name = "c"
source = "orders"
destinations = ["legacy"]

[[audiences]]
name = "d"
source = "orders"
destinations = ["tiktok"]
"#,
    );
    let errors = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap_err();
    let text = errors.problems().join("\n");
    for expected in [
        "destinations.meta.audience_id: \"12O45\" is not a numeric id",
        "destinations.meta.base_url: \"htps://graph.facebook.com\" is not an http(s) URL",
        "destinations.google.operating_account_id: \"123-456-789O\" is not a numeric id",
        "destinations.google.base_url: \"datamanager.googleapis.com\" is not an http(s) URL",
        "destinations.legacy.user_list_id: \"list-1\" is not a numeric id",
        "destinations.tiktok.advertiser_id: \"adv\" is not a numeric id",
        "destinations.tiktok.base_url: \"https://\" is not an http(s) URL",
        "destinations.tiktok.access_token: required",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn the_redaction_retention_is_bounded() {
    let config = validate(&[]).unwrap();
    assert_eq!(config.rules.redaction_retention_ms, 400 * 86_400_000);
    let errors = validate(&["--audiences-redaction-retention", "20y"]).unwrap_err();
    assert!(errors
        .problems()
        .join("\n")
        .contains("AFTERCART_AUDIENCES_REDACTION_RETENTION"));
}

#[test]
fn a_base_url_the_requests_cannot_be_built_on_is_refused_at_start() {
    // The request builders take `http://` and `https://` as written: an upper-case scheme
    // would pass a looser check and then fail every batch (removals forever).
    let file = write(
        r#"
[destinations.meta]
type = "meta"
audience_id = "23850001"
access_token = "t"
base_url = "HTTPS://graph.facebook.com"

[[audiences]]
name = "a"
source = "orders"
destinations = ["meta"]
"#,
    );
    assert_refused(
        &file,
        "destinations.meta.base_url: \"HTTPS://graph.facebook.com\" is not an http(s) URL",
    );
}

#[test]
fn a_google_token_or_metadata_url_typo_is_named_at_start() {
    // Every request's credential comes from these: a typo would hold every batch back.
    let google = |auth: &str| {
        write(&format!(
            "[destinations.g]\ntype = \"google\"\noperating_account_id = \"1234567890\"\nuser_list_id = \"2\"\n{auth}\n\n[[audiences]]\nname = \"a\"\nsource = \"orders\"\ndestinations = [\"g\"]\n"
        ))
    };
    let refreshing = google(
        "refresh_token = \"r\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"oauth2.googleapis.com/token\"",
    );
    assert_refused(
        &refreshing,
        "destinations.g.token_url: \"oauth2.googleapis.com/token\" is not an http(s) URL",
    );
    let metadata =
        google("application_default = true\nmetadata_url = \"metadata.google.internal\"");
    assert_refused(
        &metadata,
        "destinations.g.metadata_url: \"metadata.google.internal\" is not an http(s) URL",
    );
}

#[test]
fn a_refused_url_is_shown_without_its_password_or_query() {
    // The typo stays visible; what may be a credential does not reach the error (and the log).
    let file = write(
        "[destinations.g]\ntype = \"google\"\noperating_account_id = \"1234567890\"\nuser_list_id = \"2\"\nrefresh_token = \"r\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"htps://admin:hunter2@oauth2.googleapis.com/token?key=s3cret\"\n\n[[audiences]]\nname = \"a\"\nsource = \"orders\"\ndestinations = [\"g\"]\n",
    );
    let errors = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap_err();
    let text = errors.problems().join("\n");
    assert!(
        text.contains(
            "destinations.g.token_url: \"htps://…@oauth2.googleapis.com/token?…\" is not an http(s) URL"
        ),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
}

#[test]
fn redaction_markers_may_not_expire_before_the_people_they_guard() {
    // People are kept 90 days: a marker gone after one would let a late fact about a redacted
    // person (a lagging topic, a replay) bring them back.
    let errors = validate(&["--audiences-redaction-retention", "1d"]).unwrap_err();
    let text = errors.problems().join("\n");
    assert!(
        text.contains("AFTERCART_AUDIENCES_REDACTION_RETENTION")
            && text.contains("AFTERCART_AUDIENCES_PERSON_RETENTION"),
        "{text}"
    );
    validate(&["--audiences-redaction-retention", "90d"]).unwrap();
}

/// Asserts that the configuration in `file` is refused with `expected` among the problems.
fn assert_refused(file: &tempfile_path::TempPath, expected: &str) {
    let errors = validate(&["--audiences-config", file.0.to_str().unwrap()]).unwrap_err();
    let text = errors.problems().join("\n");
    assert!(
        text.contains(expected),
        "{expected:?} missing from:\n{text}"
    );
}

#[test]
fn a_plain_http_platform_url_is_refused_naming_the_switch_and_not_the_url() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/audiences.toml");
    let errors = validate(&[
        "--audiences-config",
        path,
        "--audiences-meta-base-url",
        "http://graph.example.com/?t=s3cret",
    ])
    .unwrap_err()
    .to_string();
    assert!(errors.contains("AFTERCART_ALLOW_INSECURE_HTTP"), "{errors}");
    assert!(!errors.contains("s3cret"), "{errors}");
}

#[test]
fn unconfirmed_removals_are_emitted_again_well_inside_the_topic_retention() {
    let config = validate(&[]).unwrap();
    assert_eq!(config.rules.removal_reemit_after_ms, 86_400_000);
    // Re-emitted only after the first copy may be gone from the batches topic: too late.
    let errors = validate(&["--audiences-removal-reemit-after", "7d"]).unwrap_err();
    let text = errors.problems().join("\n");
    assert!(
        text.contains("AFTERCART_AUDIENCES_REMOVAL_REEMIT_AFTER")
            && text.contains("AFTERCART_TOPIC_RETENTION"),
        "{text}"
    );
    validate(&["--audiences-removal-reemit-after", "0s"]).unwrap_err();
    validate(&["--audiences-removal-reemit-after", "6d"]).unwrap();
}
