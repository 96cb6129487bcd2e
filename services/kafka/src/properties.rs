//! librdkafka properties from the operator: a Java `client.properties` file and the
//! `AFTERCART_KAFKA_PROPERTIES` list, merged, translated where the Java client spells a setting
//! differently, and held in a type whose `Debug` never shows a secret.

use std::fmt;
use std::path::Path;

/// `key=value` pairs in the order written.
pub type Pairs = Vec<(String, String)>;

/// Properties whose values are never printed: every key naming a password, secret or private
/// key, and the JAAS line (it carries the password).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "key.pem",
        "private.key",
        "user.info",
        "token",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// librdkafka's aliases (its CONFIGURATION.md, "Alias for"): two names of one setting. A client
/// config is a map without order, so with both names set which value wins is chance.
const ALIASES: [(&str, &str); 12] = [
    ("bootstrap.servers", "metadata.broker.list"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("sasl.mechanism", "sasl.mechanisms"),
    (
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ),
    (
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ),
    ("max.partition.fetch.bytes", "fetch.message.max.bytes"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("retries", "message.send.max.retries"),
    ("compression.type", "compression.codec"),
    ("acks", "request.required.acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("enable.auto.commit", "auto.commit.enable"),
];

/// The other name of `key`, when librdkafka has two for it.
pub fn alias_of(key: &str) -> Option<&'static str> {
    ALIASES.iter().find_map(|(a, b)| {
        if *a == key {
            Some(*b)
        } else if *b == key {
            Some(*a)
        } else {
            None
        }
    })
}

/// Operator-supplied librdkafka properties, in the order they are applied (later wins).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    pairs: Vec<(String, String)>,
}

impl KafkaProperties {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, replacing an earlier value, also one set under its alias.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let alias = alias_of(&key);
        self.pairs
            .retain(|(k, _)| *k != key && Some(k.as_str()) != alias);
        self.pairs.push((key, value.into()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> std::slice::Iter<'_, (String, String)> {
        self.pairs.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `text` with every secret value replaced by `<redacted>`: for messages from librdkafka,
    /// which may quote a value it refused.
    pub fn redact(&self, text: &str) -> String {
        self.pairs
            .iter()
            .filter(|(key, value)| is_secret(key) && !value.is_empty())
            .fold(text.to_string(), |text, (_, value)| {
                text.replace(value.as_str(), "<redacted>")
            })
    }
}

impl From<Vec<(String, String)>> for KafkaProperties {
    fn from(pairs: Vec<(String, String)>) -> Self {
        let mut properties = Self::new();
        properties.extend(pairs);
        properties
    }
}

impl Extend<(String, String)> for KafkaProperties {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (key, value) in iter {
            self.set(key, value);
        }
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.pairs.iter().map(|(key, value)| {
                let shown = if is_secret(key) { "<redacted>" } else { value };
                (key, shown)
            }))
            .finish()
    }
}

/// Parses `AFTERCART_KAFKA_PROPERTIES`: comma-separated `key=value`. A value holding a comma
/// belongs in the properties file.
pub fn parse_list(value: &str) -> Result<Vec<(String, String)>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(index, pair)| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            // Only the position is reported: the entry may hold a password.
            _ => Err(format!("entry {} is not key=value", index + 1)),
        })
        .collect()
}

/// Parses a Java `client.properties` file: one `key=value` (or `key: value`) a line, split at
/// the first `=` or `:`, so values keep their commas and `=`; blank lines and lines starting
/// with `#` or `!` are skipped; a line ending in `\` continues on the next. Other backslash
/// escapes are kept as written.
pub fn parse_file_text(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut logical = String::new();
    let mut first_line = 0;
    for (index, line) in text.lines().enumerate() {
        let line = if logical.is_empty() {
            first_line = index + 1;
            line.trim_start()
        } else {
            line.trim_start()
        };
        if logical.is_empty() && (line.is_empty() || line.starts_with(['#', '!'])) {
            continue;
        }
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        pairs.push(split_line(&logical, first_line)?);
        logical.clear();
    }
    if !logical.is_empty() {
        pairs.push(split_line(&logical, first_line)?);
    }
    Ok(pairs)
}

fn split_line(line: &str, number: usize) -> Result<(String, String), String> {
    let at = line.find(['=', ':']);
    match at {
        Some(at) if !line[..at].trim().is_empty() => Ok((
            line[..at].trim().to_string(),
            line[at + 1..].trim().to_string(),
        )),
        // The line number only: the line may hold a password.
        _ => Err(format!("line {number} is not key=value")),
    }
}

/// Reads and parses a properties file; errors name the path and line, never a value.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse_file_text(&text).map_err(|problem| format!("{}: {problem}", path.display()))
}

/// Replaces values of the form `${file:PATH}` (the whole file, trimmed) or `${file:PATH:KEY}`
/// (one key of a properties file), as Kafka's FileConfigProvider does: a properties file can
/// then sit in a ConfigMap and point at passwords mounted from Secrets (a Strimzi KafkaUser's
/// `password` or `sasl.jaas.config`). Errors name the property and path, never a value.
pub fn resolve_files(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, String> {
    pairs
        .into_iter()
        .map(|(key, value)| {
            let Some(reference) = value
                .trim()
                .strip_prefix("${file:")
                .and_then(|rest| rest.strip_suffix('}'))
            else {
                return Ok((key, value));
            };
            // A path never holds ':' here, so a second ':' starts the key.
            let (path, wanted) = match reference.split_once(':') {
                Some((path, wanted)) => (path, Some(wanted)),
                None => (reference, None),
            };
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("{key}: cannot read {path}: {error}"))?;
            let resolved = match wanted {
                None => text.trim().to_string(),
                Some(wanted) => parse_file_text(&text)
                    .map_err(|problem| format!("{key}: {path}: {problem}"))?
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == wanted)
                    .map(|(_, v)| v)
                    .ok_or_else(|| format!("{key}: {path} has no key {wanted}"))?,
            };
            Ok((key, resolved))
        })
        .collect()
}

/// Java client settings librdkafka has no use for (serialisers, Schema Registry, DNS lookup
/// mode, login callback classes): skipped, so a Confluent or MSK `client.properties` works as
/// downloaded.
const JAVA_ONLY: &[&str] = &[
    "key.serializer",
    "value.serializer",
    "key.deserializer",
    "value.deserializer",
    "client.dns.lookup",
    "sasl.login.callback.handler.class",
    "sasl.client.callback.handler.class",
    "ssl.keystore.type",
    "ssl.truststore.type",
];

/// Turns Java client settings into librdkafka's: `sasl.jaas.config` becomes `sasl.username`
/// and `sasl.password` (PLAIN, SCRAM) or the OIDC client credentials (OAUTHBEARER); Java-only
/// settings are dropped and named in the returned list. Errors name the setting, never a value.
pub fn translate_java(properties: Vec<(String, String)>) -> Result<(Pairs, Vec<String>), String> {
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    for (key, value) in properties {
        if JAVA_ONLY.contains(&key.as_str())
            || key.starts_with("schema.registry.")
            || key.starts_with("basic.auth.")
        {
            dropped.push(key);
            continue;
        }
        match key.as_str() {
            "sasl.jaas.config" => out.extend(translate_jaas(&value)?),
            "ssl.truststore.location" | "ssl.truststore.password" => {
                return Err(format!(
                    "{key}: librdkafka cannot read Java truststores; export the CA as PEM and \
                     set ssl.ca.location instead"
                ))
            }
            _ => out.push((key, value)),
        }
    }
    Ok((out, dropped))
}

/// The librdkafka settings of one JAAS line.
fn translate_jaas(value: &str) -> Result<Vec<(String, String)>, String> {
    let value = value.trim().trim_end_matches(';');
    let (module, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let options = jaas_options(rest);
    let option = |name: &str| {
        options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let module_name = module.rsplit('.').next().unwrap_or(module);
    let mut out = Vec::new();
    match module_name {
        "PlainLoginModule" | "ScramLoginModule" => {
            for (option_name, property) in
                [("username", "sasl.username"), ("password", "sasl.password")]
            {
                match option(option_name) {
                    Some(v) => out.push((property.to_string(), v)),
                    None => {
                        return Err(format!(
                            "sasl.jaas.config: {module_name} without {option_name}"
                        ))
                    }
                }
            }
        }
        "OAuthBearerLoginModule" => {
            for (option_name, property) in [
                ("clientId", "sasl.oauthbearer.client.id"),
                ("clientSecret", "sasl.oauthbearer.client.secret"),
                ("scope", "sasl.oauthbearer.scope"),
            ] {
                if let Some(v) = option(option_name) {
                    out.push((property.to_string(), v));
                }
            }
            let extensions: Vec<String> = options
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("extension_").map(|k| format!("{k}={v}")))
                .collect();
            if !extensions.is_empty() {
                out.push((
                    "sasl.oauthbearer.extensions".to_string(),
                    extensions.join(","),
                ));
            }
            if option("clientId").is_some() {
                out.push(("sasl.oauthbearer.method".to_string(), "oidc".to_string()));
            }
        }
        "IAMLoginModule" => {
            return Err(
                "sasl.jaas.config: MSK IAM authentication is not supported (librdkafka \
                        has no AWS_MSK_IAM mechanism); use SASL/SCRAM or mutual TLS on MSK"
                    .to_string(),
            )
        }
        "Krb5LoginModule" => {
            return Err(
                "sasl.jaas.config: Kerberos (GSSAPI) is not built in; use SCRAM, \
                        OAUTHBEARER or mutual TLS"
                    .to_string(),
            )
        }
        other => return Err(format!("sasl.jaas.config: unknown login module {other}")),
    }
    Ok(out)
}

/// `name="value"` or `name=value` options of a JAAS line (the flag `required` and friends are
/// skipped).
fn jaas_options(text: &str) -> Vec<(String, String)> {
    let mut options = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq]
            .split_whitespace()
            .last()
            .unwrap_or("")
            .to_string();
        let after = rest[eq + 1..].trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        options.push((name, value));
        rest = next.trim_start();
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_java_client_properties_file_keeps_commas_and_equals_in_values() {
        let text = "# Confluent Cloud\n\
            ! also a comment\n\
            \n\
            bootstrap.servers=pkc-1.aws.confluent.cloud:9092,pkc-2:9092\n\
              security.protocol = SASL_SSL\n\
            sasl.mechanism: PLAIN\n\
            sasl.oauthbearer.extensions=logicalCluster=lkc-1,identityPoolId=pool-2\n\
            ssl.ca.location=/etc/ssl/a \\\n    b.pem\n";
        let pairs = parse_file_text(text).unwrap();
        assert_eq!(
            pairs,
            vec![
                (
                    "bootstrap.servers".into(),
                    "pkc-1.aws.confluent.cloud:9092,pkc-2:9092".into()
                ),
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into()),
                (
                    "sasl.oauthbearer.extensions".into(),
                    "logicalCluster=lkc-1,identityPoolId=pool-2".into()
                ),
                ("ssl.ca.location".into(), "/etc/ssl/a b.pem".into()),
            ]
        );
    }

    #[test]
    fn a_setting_under_its_alias_replaces_the_earlier_name() {
        // The file says sasl.mechanism, the environment sasl.mechanisms: librdkafka's config
        // is a map, so with both kept the file's value won about half the time.
        let mut properties = KafkaProperties::from(vec![
            ("sasl.mechanism".to_string(), "PLAIN".to_string()),
            ("linger.ms".to_string(), "5".to_string()),
        ]);
        properties.extend([("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string())]);
        assert_eq!(
            properties.iter().cloned().collect::<Vec<_>>(),
            vec![
                ("linger.ms".to_string(), "5".to_string()),
                ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
            ]
        );
        assert_eq!(alias_of("acks"), Some("request.required.acks"));
        assert_eq!(alias_of("request.required.acks"), Some("acks"));
        assert_eq!(alias_of("security.protocol"), None);
    }

    #[test]
    fn a_bad_line_is_named_by_number_never_by_content() {
        let error = parse_file_text("a=1\nhunter2\n").unwrap_err();
        assert_eq!(error, "line 2 is not key=value");
    }

    #[test]
    fn the_environment_list_splits_at_commas() {
        assert_eq!(
            parse_list("security.protocol=ssl, linger.ms=10").unwrap(),
            vec![
                ("security.protocol".into(), "ssl".into()),
                ("linger.ms".into(), "10".into())
            ]
        );
        assert!(parse_list("=x").is_err());
        let error = parse_list("linger.ms=1,sasl.password:hunter2").unwrap_err();
        assert!(
            error.contains("entry 2") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let properties = KafkaProperties::from(vec![
            ("sasl.username".to_string(), "svc".to_string()),
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("ssl.key.password".to_string(), "keypass1".to_string()),
            (
                "ssl.keystore.password".to_string(),
                "storepass1".to_string(),
            ),
            (
                "sasl.oauthbearer.client.secret".to_string(),
                "oidc-s3cret".to_string(),
            ),
            (
                "ssl.key.pem".to_string(),
                "-----BEGIN PRIVATE KEY-----x".to_string(),
            ),
            (
                "sasl.jaas.config".to_string(),
                "x password=\"jaaspass\";".to_string(),
            ),
        ]);
        let shown = format!("{properties:?}");
        for secret in [
            "hunter2",
            "keypass1",
            "storepass1",
            "oidc-s3cret",
            "BEGIN",
            "jaaspass",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("svc"), "{shown}");
        assert_eq!(
            properties.redact("bad value hunter2 for x"),
            "bad value <redacted> for x"
        );
    }

    #[test]
    fn later_settings_replace_earlier_ones() {
        let mut properties = KafkaProperties::from(vec![("acks".into(), "1".into())]);
        properties.extend([("acks".to_string(), "all".to_string())]);
        assert_eq!(properties.get("acks"), Some("all"));
        assert_eq!(properties.iter().count(), 1);
    }

    #[test]
    fn jaas_lines_become_librdkafka_settings() {
        let plain = "org.apache.kafka.common.security.plain.PlainLoginModule required \
                     username=\"KEY\" password=\"p=a,s s\";";
        let (out, dropped) = translate_java(vec![
            ("sasl.jaas.config".into(), plain.into()),
            ("client.dns.lookup".into(), "use_all_dns_ips".into()),
            ("basic.auth.user.info".into(), "u:p".into()),
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ("sasl.username".into(), "KEY".into()),
                ("sasl.password".into(), "p=a,s s".into())
            ]
        );
        assert_eq!(dropped, ["client.dns.lookup", "basic.auth.user.info"]);

        let oauth = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required \
                     clientId=\"app\" clientSecret=\"s3\" scope=\"kafka\" \
                     extension_logicalCluster=\"lkc-1\" extension_identityPoolId=\"pool-2\";";
        let (out, _) = translate_java(vec![("sasl.jaas.config".into(), oauth.into())]).unwrap();
        let get = |k: &str| {
            out.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("sasl.oauthbearer.client.id"), Some("app"));
        assert_eq!(get("sasl.oauthbearer.client.secret"), Some("s3"));
        assert_eq!(
            get("sasl.oauthbearer.extensions"),
            Some("logicalCluster=lkc-1,identityPoolId=pool-2")
        );
        assert_eq!(get("sasl.oauthbearer.method"), Some("oidc"));
    }

    #[test]
    fn file_references_read_secrets_mounted_beside_the_properties() {
        let dir = std::env::temp_dir().join(format!("aftercart-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("password"), "s3cret=,x\n").unwrap();
        std::fs::write(dir.join("user.properties"), "# strimzi\nusername=svc\n").unwrap();
        let pairs = resolve_files(vec![
            (
                "sasl.password".into(),
                format!("${{file:{}}}", dir.join("password").display()),
            ),
            (
                "sasl.username".into(),
                format!(
                    "${{file:{}:username}}",
                    dir.join("user.properties").display()
                ),
            ),
            ("acks".into(), "all".into()),
        ])
        .unwrap();
        assert_eq!(pairs[0].1, "s3cret=,x");
        assert_eq!(pairs[1].1, "svc");
        assert_eq!(pairs[2].1, "all");
        let error = resolve_files(vec![(
            "sasl.password".into(),
            "${file:/nonexistent/p}".into(),
        )])
        .unwrap_err();
        assert!(
            error.starts_with("sasl.password: cannot read /nonexistent/p"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unsupported_java_settings_are_refused_without_their_values() {
        let iam = "software.amazon.msk.auth.iam.IAMLoginModule required;";
        let error = translate_java(vec![("sasl.jaas.config".into(), iam.into())]).unwrap_err();
        assert!(error.contains("MSK IAM"), "{error}");
        let error = translate_java(vec![("ssl.truststore.password".into(), "trustpass".into())])
            .unwrap_err();
        assert!(error.contains("ssl.ca.location") && !error.contains("trustpass"));
    }
}
