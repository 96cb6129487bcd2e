//! Configuration validation helpers: collect every problem, then exit 64 once with all of them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Exit code for invalid configuration (sysexits `EX_USAGE`).
pub const EX_USAGE: i32 = 64;
/// Exit code for a deployment that contradicts the configuration, e.g. journey topics with
/// different partition counts (sysexits `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// Every configuration problem found, reported together.
#[derive(Debug, Default)]
pub struct ConfigErrors {
    problems: Vec<String>,
}

impl ConfigErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem. Messages name the variable and the rule, never a secret value.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// Keeps the value of `result`, or records its error under `name` and returns `None`.
    pub fn check<T>(&mut self, name: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.push(format!("{name}: {problem}"));
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn extend(&mut self, other: ConfigErrors) {
        self.problems.extend(other.problems);
    }

    /// `Ok(value)` when no problem was recorded.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigErrors> {
        if self.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A duration in humantime syntax: `500ms`, `3s`, `24h`, `1h 30m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|error| format!("{value:?} is not a duration like 3s or 24h ({error})"))
}

/// A duration above zero: timeouts, windows and delays that must pass.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).and_then(|duration| {
        if duration.is_zero() {
            Err("must be above 0".to_string())
        } else {
            Ok(duration)
        }
    })
}

/// A secret given either as `<name>` or as a file (`<name>_FILE`, e.g. a mounted Kubernetes
/// Secret; its trailing newline is ignored). `Some(None)`: neither is set; `None`: a problem,
/// reported in `errors` without the secret.
pub fn secret_or_file(
    errors: &mut ConfigErrors,
    name: &str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Option<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => {
            errors.push(format!("{name} and {name}_FILE: set one, not both"));
            None
        }
        (Some(""), None) => {
            errors.push(format!("{name}: is empty"));
            None
        }
        (Some(secret), None) => Some(Some(secret.to_string())),
        (None, Some(path)) => errors
            .check(&format!("{name}_FILE"), read_secret_file(path))
            .map(Some),
        (None, None) => Some(None),
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} holds no secret", path.display()));
    }
    Ok(secret.to_string())
}

/// Reports every empty name among a service's topics and consumer groups.
pub fn check_names(errors: &mut ConfigErrors, names: &[(&str, &str)]) {
    for (setting, value) in names {
        if value.trim().is_empty() {
            errors.push(format!("{setting}: must not be empty"));
        }
    }
}

/// Whether `name` uses only what Kafka allows in topic names and ids: letters, digits, '.',
/// '_' and '-'.
pub fn is_kafka_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A Kafka topic name: 1 to 249 of the characters Kafka allows.
pub fn parse_topic_name(topic: &str) -> Result<(), String> {
    if !topic.is_empty() && topic.len() <= 249 && is_kafka_name(topic) {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"
        ))
    }
}

/// A size in bytes: a plain number, or a number with B, KB, KiB, MB, MiB, GB, GiB.
pub fn parse_byte_size(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a size like 4194304 or 4MiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => {
            return Err(format!(
                "{value:?} has an unknown unit (use B, KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{value:?} is too large"))
}

/// A listen address such as `0.0.0.0:8080` or `[::]:8080`.
pub fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not an address like 0.0.0.0:8080"))
}

/// An on/off switch: `true`/`false`, `on`/`off`, `yes`/`no` or `1`/`0`, any case.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("{value:?} is not a switch (use true or false)")),
    }
}

/// A whole number within `min..=max`.
pub fn parse_in_range(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let number: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))?;
    if number < min || number > max {
        return Err(format!("{number} is outside {min}..={max}"));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file_never_both() {
        let dir = std::env::temp_dir().join(format!("aftercart-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let mut errors = ConfigErrors::new();
        assert_eq!(
            secret_or_file(&mut errors, "S", Some("v"), None),
            Some(Some("v".into()))
        );
        assert_eq!(
            secret_or_file(&mut errors, "S", None, Some(&file)),
            Some(Some("from-the-file".into()))
        );
        assert_eq!(secret_or_file(&mut errors, "S", None, None), Some(None));
        assert!(errors.is_empty());
        assert_eq!(
            secret_or_file(&mut errors, "S", Some("v"), Some(&file)),
            None
        );
        assert_eq!(secret_or_file(&mut errors, "S", Some(""), None), None);
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(secret_or_file(&mut errors, "S", None, Some(&file)), None);
        let text = errors.to_string();
        assert!(text.contains("S and S_FILE: set one, not both"), "{text}");
        assert!(
            text.contains("S: is empty") && text.contains("holds no secret"),
            "{text}"
        );
        assert!(!text.contains("from-the-file"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_positive_duration_refuses_zero_and_names_bad_syntax() {
        assert_eq!(parse_positive_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(
            parse_positive_duration("0s"),
            Err("must be above 0".to_string())
        );
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn every_empty_name_is_reported() {
        let mut errors = ConfigErrors::new();
        check_names(&mut errors, &[("A", "x"), ("B", " "), ("C", "")]);
        let text = errors.to_string();
        assert!(
            !text.contains("A:") && text.contains("B: must not be empty") && text.contains("C:")
        );
    }

    #[test]
    fn sizes_accept_plain_numbers_and_units() {
        assert_eq!(parse_byte_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_byte_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_byte_size("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_byte_size("2MB"), Ok(2_000_000));
        assert!(parse_byte_size("four").is_err());
        assert!(parse_byte_size("4 parsecs").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn every_problem_is_kept_and_printed() {
        let mut errors = ConfigErrors::new();
        assert_eq!(errors.check("A", parse_duration("x")), None);
        assert_eq!(errors.check("B", parse_in_range("0", 1, 10)), None);
        assert_eq!(errors.check("C", parse_in_range("5", 1, 10)), Some(5));
        let text = errors.to_string();
        assert!(text.contains("2 problem(s)"), "{text}");
        assert!(text.contains("A: ") && text.contains("B: "), "{text}");
        assert!(errors.finish(|| ()).is_err());
    }
}
