//! `sink_args!`: the HTTP sink's flags as a `clap::Args` struct, with flag and environment names
//! chosen by the embedding service, so two services in one process never collide.

use std::convert::Infallible;

use crate::config::Secret;

/// Declares a `clap::Args` struct of HTTP sink flags under names the embedding service chooses.
///
/// `aftercart_delivery::sink_args!(pub struct WebhookArgs, "referrals-webhook", "AFTERCART_REFERRALS_WEBHOOK");`
/// declares `WebhookArgs` with `--referrals-webhook-url` (`AFTERCART_REFERRALS_WEBHOOK_URL`),
/// `-secret`, `-secret-file`, `-timeout`, `-backoff-initial`, `-backoff-max` and
/// `-max-retry-duration`, with the shipped [`defaults`](crate::defaults), plus
/// `flags(&self) -> SinkFlags` and `validate(&self, &mut ConfigErrors) -> Option<SinkConfig>`.
/// The embedding crate needs `clap` with the `derive` and `env` features.
#[macro_export]
macro_rules! sink_args {
    ($(#[$meta:meta])* $vis:vis struct $name:ident, $flag:literal, $env:literal $(,)?) => {
        $(#[$meta])*
        #[derive(Debug, Clone, clap::Args)]
        $vis struct $name {
            /// The receiver's URL: http:// or https://, without user:password@ (required).
            #[arg(id = concat!($flag, "-url"), long = concat!($flag, "-url"), env = concat!($env, "_URL"))]
            pub url: Option<String>,

            /// Secret that signs every body into X-Aftercart-Hmac-Sha256 (unsigned without one).
            #[arg(
                id = concat!($flag, "-secret"),
                long = concat!($flag, "-secret"),
                env = concat!($env, "_SECRET"),
                hide_env_values = true,
                value_parser = $crate::args::parse_secret
            )]
            pub secret: Option<$crate::Secret>,

            /// File holding the signing secret (a trailing newline is ignored), instead of the secret.
            #[arg(id = concat!($flag, "-secret-file"), long = concat!($flag, "-secret-file"), env = concat!($env, "_SECRET_FILE"))]
            pub secret_file: Option<std::path::PathBuf>,

            /// Per-request timeout: connecting, sending, and reading the answer.
            #[arg(id = concat!($flag, "-timeout"), long = concat!($flag, "-timeout"), env = concat!($env, "_TIMEOUT"), default_value = $crate::defaults::TIMEOUT)]
            pub timeout: String,

            /// Ceiling of the first retry's random backoff; it doubles after every failure.
            #[arg(id = concat!($flag, "-backoff-initial"), long = concat!($flag, "-backoff-initial"), env = concat!($env, "_BACKOFF_INITIAL"), default_value = $crate::defaults::BACKOFF_INITIAL)]
            pub backoff_initial: String,

            /// Largest backoff ceiling (a Retry-After answer may ask for longer, and gets it).
            #[arg(id = concat!($flag, "-backoff-max"), long = concat!($flag, "-backoff-max"), env = concat!($env, "_BACKOFF_MAX"), default_value = $crate::defaults::BACKOFF_MAX)]
            pub backoff_max: String,

            /// How long one record is retried, from its first attempt, before it is dead-lettered
            /// (at most 12h; 0s: never retried).
            #[arg(id = concat!($flag, "-max-retry-duration"), long = concat!($flag, "-max-retry-duration"), env = concat!($env, "_MAX_RETRY_DURATION"), default_value = $crate::defaults::MAX_RETRY_DURATION)]
            pub max_retry_duration: String,
        }

        impl $name {
            /// The flags as text, for [`DeliveryFlags`]($crate::DeliveryFlags).
            pub fn flags(&self) -> $crate::SinkFlags {
                $crate::SinkFlags {
                    url: self.url.clone(),
                    secret: self.secret.clone(),
                    secret_file: self.secret_file.clone(),
                    timeout: self.timeout.clone(),
                    backoff_initial: self.backoff_initial.clone(),
                    backoff_max: self.backoff_max.clone(),
                    max_retry_duration: self.max_retry_duration.clone(),
                }
            }

            /// Validates the flags, recording every problem under their environment names.
            pub fn validate(
                &self,
                errors: &mut $crate::ConfigErrors,
            ) -> Option<$crate::SinkConfig> {
                self.flags().validate($env, errors)
            }
        }
    };
}

/// Wraps a secret flag's value as soon as clap reads it, so it never prints.
pub fn parse_secret(value: &str) -> Result<Secret, Infallible> {
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::ConfigErrors;

    crate::sink_args!(
        /// The referrals service's provider webhook.
        struct ReferralsWebhook,
        "referrals-webhook",
        "AFTERCART_REFERRALS_WEBHOOK"
    );
    crate::sink_args!(struct AudiencesWebhook, "audiences-webhook", "AFTERCART_AUDIENCES_WEBHOOK");

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        referrals: ReferralsWebhook,
        #[command(flatten)]
        audiences: AudiencesWebhook,
    }

    #[test]
    fn two_services_flags_live_side_by_side_under_their_own_names() {
        let cli = Cli::try_parse_from([
            "aftercart",
            "--referrals-webhook-url=https://rewards.example.com/hooks",
            "--referrals-webhook-secret=hunter2",
            "--referrals-webhook-max-retry-duration=5m",
            "--audiences-webhook-url=https://127.0.0.1:9000/",
        ])
        .expect("flags parse");
        let mut errors = ConfigErrors::new();
        let referrals = cli.referrals.validate(&mut errors).unwrap();
        let audiences = cli.audiences.validate(&mut errors).unwrap();
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(referrals.retry.max_duration, Duration::from_secs(300));
        assert_eq!(referrals.secret.unwrap().expose(), "hunter2");
        assert_eq!(
            audiences.timeout,
            Duration::from_secs(10),
            "shipped default"
        );
        assert!(audiences.secret.is_none());
        assert!(!format!("{:?}", cli.referrals).contains("hunter2"));
    }

    #[test]
    fn problems_are_named_by_the_services_environment_variables() {
        let cli = Cli::try_parse_from(["aftercart", "--audiences-webhook-timeout=soon"]).unwrap();
        let mut errors = ConfigErrors::new();
        assert!(cli.referrals.validate(&mut errors).is_none());
        assert!(cli.audiences.validate(&mut errors).is_none());
        let text = errors.to_string();
        assert!(
            text.contains("AFTERCART_REFERRALS_WEBHOOK_URL: required"),
            "{text}"
        );
        assert!(
            text.contains("AFTERCART_AUDIENCES_WEBHOOK_TIMEOUT:"),
            "{text}"
        );
    }

    #[test]
    fn help_lists_the_flags_with_their_environment_names() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--referrals-webhook-secret-file"), "{help}");
        assert!(
            help.contains("AFTERCART_AUDIENCES_WEBHOOK_MAX_RETRY_DURATION"),
            "{help}"
        );
    }
}
