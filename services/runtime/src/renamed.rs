//! Renamed settings: every environment variable follows `AFTERCART_<SERVICE>_<KEY>` (or
//! `AFTERCART_<KEY>` when every service shares it); the names used before that scheme keep working
//! as deprecated aliases, resolved here once, before clap reads the environment.

use std::ffi::OsString;

/// One setting that was renamed: `old` still works, with a deprecation warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
}

impl Renamed {
    const fn new(old: &'static str, new: &'static str) -> Self {
        Self { old, new }
    }
}

/// Every renamed setting, old name first (sorted by old name). The generated configuration
/// reference lists this table, so a rename shows up there too.
pub const RENAMED: &[Renamed] = &[
    Renamed::new(
        "AFTERCART_ABANDONMENTS_TOPIC",
        "AFTERCART_ABANDONMENT_OUTPUT_TOPIC",
    ),
    Renamed::new(
        "AFTERCART_ABANDON_AFTER",
        "AFTERCART_ABANDONMENT_ABANDON_AFTER",
    ),
    Renamed::new(
        "AFTERCART_AUDIENCE_BATCHES_TOPIC",
        "AFTERCART_AUDIENCES_BATCHES_TOPIC",
    ),
    Renamed::new(
        "AFTERCART_BODY_READ_TIMEOUT",
        "AFTERCART_INGRESS_BODY_READ_TIMEOUT",
    ),
    Renamed::new(
        "AFTERCART_CART_ABANDON_AFTER",
        "AFTERCART_ABANDONMENT_CART_ABANDON_AFTER",
    ),
    Renamed::new(
        "AFTERCART_DEDUPE_CAPACITY",
        "AFTERCART_INGRESS_DEDUPE_CAPACITY",
    ),
    Renamed::new("AFTERCART_DEDUPE_WINDOW", "AFTERCART_INGRESS_DEDUPE_WINDOW"),
    Renamed::new("AFTERCART_DRAIN_DELAY", "AFTERCART_INGRESS_DRAIN_DELAY"),
    Renamed::new(
        "AFTERCART_EXPORT_BACKOFF_INITIAL",
        "AFTERCART_AUDIENCES_EXPORT_BACKOFF_INITIAL",
    ),
    Renamed::new(
        "AFTERCART_EXPORT_BACKOFF_MAX",
        "AFTERCART_AUDIENCES_EXPORT_BACKOFF_MAX",
    ),
    Renamed::new(
        "AFTERCART_EXPORT_BATCH_SIZE",
        "AFTERCART_AUDIENCES_EXPORT_BATCH_SIZE",
    ),
    Renamed::new(
        "AFTERCART_EXPORT_FLUSH_INTERVAL",
        "AFTERCART_AUDIENCES_EXPORT_FLUSH_INTERVAL",
    ),
    Renamed::new(
        "AFTERCART_EXPORT_MAX_RETRY_DURATION",
        "AFTERCART_AUDIENCES_EXPORT_MAX_RETRY_DURATION",
    ),
    Renamed::new(
        "AFTERCART_EXPORT_TIMEOUT",
        "AFTERCART_AUDIENCES_EXPORT_TIMEOUT",
    ),
    Renamed::new(
        "AFTERCART_FENCE_SITTER_SPAN",
        "AFTERCART_ABANDONMENT_FENCE_SITTER_SPAN",
    ),
    Renamed::new(
        "AFTERCART_FENCE_SITTER_VISITS",
        "AFTERCART_ABANDONMENT_FENCE_SITTER_VISITS",
    ),
    Renamed::new(
        "AFTERCART_GOOGLE_BASE_URL",
        "AFTERCART_AUDIENCES_GOOGLE_BASE_URL",
    ),
    Renamed::new(
        "AFTERCART_HEADER_READ_TIMEOUT",
        "AFTERCART_INGRESS_HEADER_READ_TIMEOUT",
    ),
    Renamed::new("AFTERCART_LISTEN", "AFTERCART_INGRESS_LISTEN"),
    Renamed::new(
        "AFTERCART_MAX_BODY_BYTES",
        "AFTERCART_INGRESS_MAX_BODY_BYTES",
    ),
    Renamed::new(
        "AFTERCART_MAX_CONNECTIONS",
        "AFTERCART_INGRESS_MAX_CONNECTIONS",
    ),
    Renamed::new(
        "AFTERCART_MAX_HEADER_BYTES",
        "AFTERCART_INGRESS_MAX_HEADER_BYTES",
    ),
    Renamed::new(
        "AFTERCART_META_BASE_URL",
        "AFTERCART_AUDIENCES_META_BASE_URL",
    ),
    // Nudges hashed people with a key of its own; it shares the state hash key now.
    Renamed::new("AFTERCART_NUDGES_IDENTITY_KEY", "AFTERCART_STATE_HASH_KEY"),
    Renamed::new(
        "AFTERCART_NUDGES_IDENTITY_KEY_FILE",
        "AFTERCART_STATE_HASH_KEY_FILE",
    ),
    Renamed::new(
        "AFTERCART_PUBLISH_DEADLINE",
        "AFTERCART_INGRESS_PUBLISH_DEADLINE",
    ),
    Renamed::new(
        "AFTERCART_RECOVERY_URL_MARKER",
        "AFTERCART_ABANDONMENT_RECOVERY_URL_MARKER",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_ATTRIBUTION",
        "AFTERCART_REFERRALS_ATTRIBUTION",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_CODE_PREFIX",
        "AFTERCART_REFERRALS_CODE_PREFIX",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_CODE_SECRET",
        "AFTERCART_REFERRALS_CODE_SECRET",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_CODE_SECRET_FILE",
        "AFTERCART_REFERRALS_CODE_SECRET_FILE",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_INVITES_TOPIC",
        "AFTERCART_REFERRALS_INVITES_TOPIC",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_INVITE_COOLDOWN",
        "AFTERCART_REFERRALS_INVITE_COOLDOWN",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_INVITE_DELAY",
        "AFTERCART_REFERRALS_INVITE_DELAY",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_INVITE_MIN_ORDER",
        "AFTERCART_REFERRALS_INVITE_MIN_ORDER",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_INVITE_TRIGGER",
        "AFTERCART_REFERRALS_INVITE_TRIGGER",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_IP_BURST_MAX",
        "AFTERCART_REFERRALS_IP_BURST_MAX",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_IP_BURST_WINDOW",
        "AFTERCART_REFERRALS_IP_BURST_WINDOW",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_NOTE_ATTRIBUTES",
        "AFTERCART_REFERRALS_NOTE_ATTRIBUTES",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_REVIEW_WINDOW",
        "AFTERCART_REFERRALS_REVIEW_WINDOW",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_REWARDS_TOPIC",
        "AFTERCART_REFERRALS_REWARDS_TOPIC",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_REWARD_MIN_ORDER",
        "AFTERCART_REFERRALS_REWARD_MIN_ORDER",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_SHARE_URL",
        "AFTERCART_REFERRALS_SHARE_URL",
    ),
    Renamed::new(
        "AFTERCART_REFERRAL_URL_PARAMETER",
        "AFTERCART_REFERRALS_URL_PARAMETER",
    ),
    Renamed::new(
        "AFTERCART_REPEAT_WINDOW",
        "AFTERCART_ABANDONMENT_REPEAT_WINDOW",
    ),
    Renamed::new("AFTERCART_SPOOL_AFTER", "AFTERCART_INGRESS_SPOOL_AFTER"),
    Renamed::new("AFTERCART_SPOOL_DIR", "AFTERCART_INGRESS_SPOOL_DIR"),
    Renamed::new(
        "AFTERCART_SPOOL_MAX_BYTES",
        "AFTERCART_INGRESS_SPOOL_MAX_BYTES",
    ),
    Renamed::new(
        "AFTERCART_TIKTOK_BASE_URL",
        "AFTERCART_AUDIENCES_TIKTOK_BASE_URL",
    ),
    Renamed::new(
        "AFTERCART_UNINSTALL_GRACE",
        "AFTERCART_ABANDONMENT_UNINSTALL_GRACE",
    ),
    Renamed::new(
        "AFTERCART_VALUE_TIER_HIGH",
        "AFTERCART_ABANDONMENT_VALUE_TIER_HIGH",
    ),
    Renamed::new(
        "AFTERCART_VALUE_TIER_MEDIUM",
        "AFTERCART_ABANDONMENT_VALUE_TIER_MEDIUM",
    ),
];

/// The new name of a deprecated one, if it is one.
pub fn new_name(old: &str) -> Option<&'static str> {
    RENAMED.iter().find(|r| r.old == old).map(|r| r.new)
}

/// What resolving the aliases found: which old names were taken over and which were ignored
/// because the new name was set too. Holds names only, never values (they may be secrets).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deprecations {
    /// Old names whose value was used under the new name.
    pub used: Vec<Renamed>,
    /// Old names set alongside their new name: the new one wins.
    pub ignored: Vec<Renamed>,
    /// Old flags given on the command line (clap aliases), as (old, new) spelled `--name`.
    pub flags: Vec<(String, String)>,
}

impl Deprecations {
    /// The one warning line to log at start, or `None` when no old name is set.
    pub fn warning(&self) -> Option<String> {
        if self.used.is_empty() && self.ignored.is_empty() && self.flags.is_empty() {
            return None;
        }
        let used = self
            .used
            .iter()
            .map(|r| format!("{} (now {})", r.old, r.new));
        let ignored = self
            .ignored
            .iter()
            .map(|r| format!("{} (ignored: {} is set and wins)", r.old, r.new));
        let flags = self
            .flags
            .iter()
            .map(|(old, new)| format!("{old} (now {new})"));
        let names: Vec<String> = used.chain(ignored).chain(flags).collect();
        Some(format!(
            "deprecated setting names, rename them (see docs/reference/configuration.md): {}",
            names.join(", ")
        ))
    }
}

/// Resolves the aliases against `get` (the environment): returns the variables to set (new
/// name, the old name's value) and what was found. Pure, so tests need not touch the process
/// environment.
pub fn resolve(
    get: impl Fn(&str) -> Option<OsString>,
) -> (Vec<(&'static str, OsString)>, Deprecations) {
    let mut copies = Vec::new();
    let mut found = Deprecations::default();
    for renamed in RENAMED {
        let Some(value) = get(renamed.old) else {
            continue;
        };
        if get(renamed.new).is_some() {
            found.ignored.push(*renamed);
        } else {
            copies.push((renamed.new, value));
            found.used.push(*renamed);
        }
    }
    (copies, found)
}

/// The old flags (clap aliases) among `args`, as (`--old`, `--new`), for the commands `matches`
/// selected: `command` is the root, `args` the command line without the program name. Stops at
/// `--`. Clap accepts an alias silently; this is how its use is still named at start.
pub fn old_flags(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    args: &[OsString],
) -> Vec<(String, String)> {
    // Aliases of every command on the path, root to the selected leaf.
    let mut renamed: Vec<(String, String)> = Vec::new();
    let (mut command, mut matches) = (command, matches);
    loop {
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            for alias in arg.get_all_aliases().unwrap_or_default() {
                renamed.push((format!("--{alias}"), format!("--{long}")));
            }
        }
        let Some((name, sub_matches)) = matches.subcommand() else {
            break;
        };
        let Some(sub) = command.find_subcommand(name) else {
            break;
        };
        (command, matches) = (sub, sub_matches);
    }
    let mut found: Vec<(String, String)> = Vec::new();
    for arg in args {
        let Some(arg) = arg.to_str() else {
            continue;
        };
        if arg == "--" {
            break;
        }
        // `--name` or `--name=value`; only the name is ever kept (values may be secrets).
        let name = arg.split_once('=').map_or(arg, |(name, _)| name);
        if let Some(pair) = renamed.iter().find(|(old, _)| old == name) {
            if !found.contains(pair) {
                found.push(pair.clone());
            }
        }
    }
    found
}

/// Copies every deprecated variable that is set to its new name (unless the new one is set:
/// it wins). Call it first thing in `main`, before any thread starts and before clap parses;
/// log [`Deprecations::warning`] once logging is up.
pub fn apply_to_process_env() -> Deprecations {
    let (copies, found) = resolve(|name| std::env::var_os(name));
    for (name, value) in copies {
        // Single-threaded at this point: nothing else reads the environment concurrently.
        std::env::set_var(name, value);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_hash::{STATE_HASH_KEY, STATE_HASH_KEY_FILE};
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn an_old_name_alone_is_copied_to_the_new_one_with_one_warning() {
        let (copies, found) = resolve(env(&[("AFTERCART_ABANDON_AFTER", "5m")]));
        assert_eq!(
            copies,
            vec![("AFTERCART_ABANDONMENT_ABANDON_AFTER", OsString::from("5m"))]
        );
        let warning = found.warning().expect("a warning");
        assert!(
            warning.contains("AFTERCART_ABANDON_AFTER (now AFTERCART_ABANDONMENT_ABANDON_AFTER)")
        );
        assert!(
            !warning.contains("5m"),
            "values are never printed: {warning}"
        );
        assert!(!warning.contains('\n'));
    }

    #[test]
    fn when_both_names_are_set_the_new_one_wins_and_the_old_is_named_ignored() {
        let (copies, found) = resolve(env(&[
            ("AFTERCART_REFERRAL_CODE_SECRET", "old-secret"),
            ("AFTERCART_REFERRALS_CODE_SECRET", "new-secret"),
        ]));
        assert!(copies.is_empty());
        let warning = found.warning().expect("a warning");
        assert!(warning.contains("AFTERCART_REFERRAL_CODE_SECRET (ignored"));
        assert!(!warning.contains("old-secret") && !warning.contains("new-secret"));
    }

    #[test]
    fn old_flags_are_named_without_values_and_only_for_the_selected_command() {
        use clap::{Arg, Command};
        let root = Command::new("aftercart")
            .subcommand(
                Command::new("ingress").arg(
                    Arg::new("listen")
                        .long("ingress-listen")
                        .alias("listen")
                        .num_args(1),
                ),
            )
            .subcommand(Command::new("other").arg(Arg::new("listen").long("listen").num_args(1)));
        let args = |list: &[&str]| -> Vec<OsString> { list.iter().map(OsString::from).collect() };
        let line = args(&["ingress", "--listen=secret-9"]);
        let mut all = vec![OsString::from("aftercart")];
        all.extend(line.clone());
        let matches = root.clone().try_get_matches_from(&all).unwrap();
        let flags = old_flags(&root, &matches, &line);
        assert_eq!(
            flags,
            vec![("--listen".to_string(), "--ingress-listen".to_string())]
        );
        let found = Deprecations {
            flags,
            ..Deprecations::default()
        };
        let warning = found.warning().expect("a warning");
        assert!(warning.contains("--listen (now --ingress-listen)"));
        assert!(!warning.contains("secret-9"));

        // `--listen` is the current name of another command's flag: nothing to warn about.
        let line = args(&["other", "--listen", "x"]);
        let matches = root
            .clone()
            .try_get_matches_from(std::iter::once(OsString::from("aftercart")).chain(line.clone()))
            .unwrap();
        assert!(old_flags(&root, &matches, &line).is_empty());
    }

    #[test]
    fn the_nudges_identity_key_is_the_shared_state_hash_key() {
        let (copies, found) = resolve(env(&[(
            "AFTERCART_NUDGES_IDENTITY_KEY_FILE",
            "/run/secrets/identity-key",
        )]));
        assert_eq!(
            copies,
            vec![(
                "AFTERCART_STATE_HASH_KEY_FILE",
                OsString::from("/run/secrets/identity-key")
            )]
        );
        assert_eq!(found.warning().map(|w| w.lines().count()), Some(1));
        assert_eq!(
            new_name("AFTERCART_NUDGES_IDENTITY_KEY"),
            Some(STATE_HASH_KEY)
        );
    }

    #[test]
    fn no_old_name_no_warning() {
        let (copies, found) = resolve(env(&[("AFTERCART_LOG", "info")]));
        assert!(copies.is_empty());
        assert_eq!(found.warning(), None);
    }

    #[test]
    fn the_table_follows_the_scheme_and_names_each_setting_once() {
        let mut olds: Vec<&str> = RENAMED.iter().map(|r| r.old).collect();
        olds.sort_unstable();
        olds.dedup();
        assert_eq!(olds.len(), RENAMED.len(), "an old name twice");
        for r in RENAMED {
            assert!(new_name(r.new).is_none(), "{} is itself renamed", r.new);
            let service = r.new.trim_start_matches("AFTERCART_").split('_').next();
            let shared = [STATE_HASH_KEY, STATE_HASH_KEY_FILE].contains(&r.new);
            assert!(
                shared
                    || matches!(
                        service,
                        Some("ABANDONMENT" | "AUDIENCES" | "INGRESS" | "REFERRALS")
                    ),
                "{} names no service",
                r.new
            );
        }
    }
}
