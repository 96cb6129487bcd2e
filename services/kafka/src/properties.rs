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

/// librdkafka's aliases (rdkafka_conf.c `_RK_C_ALIAS`), each group naming one setting.
const ALIASES: &[&[&str]] = &[
    &["bootstrap.servers", "metadata.broker.list"],
    &["max.in.flight", "max.in.flight.requests.per.connection"],
    &["sasl.mechanism", "sasl.mechanisms"],
    &[
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ],
    &[
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ],
    &["max.partition.fetch.bytes", "fetch.message.max.bytes"],
    &["linger.ms", "queue.buffering.max.ms"],
    &["retries", "message.send.max.retries"],
    &["compression.type", "compression.codec"],
    &["acks", "request.required.acks"],
    &["delivery.timeout.ms", "message.timeout.ms"],
    &["enable.auto.commit", "auto.commit.enable"],
];

/// Every spelling of the setting `key` names, `key` included.
pub fn aliases_of(key: &str) -> Vec<&str> {
    ALIASES
        .iter()
        .find(|group| group.contains(&key))
        .map_or_else(|| vec![key], |group| group.to_vec())
}

/// Which kind of librdkafka client a configuration is for. Each kind ignores the other's
/// settings with a `CONFWARN` line, so an operator's one property list (consumer settings such
/// as `session.timeout.ms` among producer ones) is handed to each client without the other's.
/// Admin clients are producers to librdkafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    Producer,
    Consumer,
}

/// Settings only consumers read (librdkafka 2.12's CONFIGURATION.md, scope `C`).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// Settings only producers read (librdkafka 2.12's CONFIGURATION.md, scope `P`).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// Whether a client of `kind` reads the setting `key` (every setting of both kinds, and any
/// librdkafka does not scope, is read by both).
pub fn is_read_by(key: &str, kind: ClientKind) -> bool {
    match kind {
        ClientKind::Producer => !CONSUMER_ONLY.contains(&key),
        ClientKind::Consumer => !PRODUCER_ONLY.contains(&key),
    }
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

    /// Sets `key`, replacing an earlier value under any of its spellings.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let names = aliases_of(&key);
        self.pairs.retain(|(k, _)| !names.contains(&k.as_str()));
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

/// Parses a Java `client.properties` file as `java.util.Properties.load` does: the key ends at
/// the first unescaped `=`, `:` or whitespace, so values keep their commas and `=`; blank lines
/// and lines starting with `#` or `!` are skipped; a line ending in an odd number of `\`
/// continues on the next, whose indentation is dropped; `\=`, `\:`, `\ `, `\\`, `\t`, `\n` and
/// `\uXXXX` are unescaped. Values are trimmed, as Kafka's own config parsing does. A key
/// without a value is refused (a stray word is more likely a pasted secret than a setting).
pub fn parse_file_text(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut logical = String::new();
    let mut first_line = 0;
    let mut continuing = false;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start_matches(is_space);
        if !continuing {
            first_line = index + 1;
            if line.is_empty() || line.starts_with(['#', '!']) {
                continue;
            }
        }
        let trailing = line.len() - line.trim_end_matches('\\').len();
        continuing = trailing % 2 == 1;
        if continuing {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        pairs.push(split_line(&logical, first_line)?);
        logical.clear();
    }
    if continuing && !logical.is_empty() {
        pairs.push(split_line(&logical, first_line)?);
    }
    Ok(pairs)
}

/// Whitespace as `java.util.Properties` counts it.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Splits one logical line into its unescaped key and value.
fn split_line(line: &str, number: usize) -> Result<(String, String), String> {
    let mut key_end = None;
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || is_space(c) {
            key_end = Some(at);
            break;
        }
    }
    // The line number only: the line may hold a password.
    let not_pair = || format!("line {number} is not key=value");
    let key_end = key_end.ok_or_else(not_pair)?;
    let mut rest = line[key_end..].trim_start_matches(is_space);
    if let Some(after) = rest.strip_prefix(['=', ':']) {
        rest = after.trim_start_matches(is_space);
    } else if rest.is_empty() {
        // A word and trailing blanks.
        return Err(not_pair());
    }
    let malformed = || format!("line {number} has a malformed \\uXXXX escape");
    let key = unescape(&line[..key_end]).ok_or_else(malformed)?;
    if key.trim().is_empty() {
        return Err(not_pair());
    }
    let value = unescape(rest).ok_or_else(malformed)?;
    Ok((key, value.trim().to_string()))
}

/// Java properties escapes; `None` for a malformed `\uXXXX` (or a lone surrogate).
fn unescape(text: &str) -> Option<String> {
    let mut units: Vec<u16> = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    if hex.len() != 4 {
                        return None;
                    }
                    units.push(u16::from_str_radix(&hex, 16).ok()?);
                    continue;
                }
                Some('t') => '\t',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('f') => '\x0c',
                Some(other) => other,
                None => continue,
            },
            other => other,
        };
        let mut buffer = [0u16; 2];
        units.extend_from_slice(c.encode_utf16(&mut buffer));
    }
    String::from_utf16(&units).ok()
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
/// mode, callback classes; `sasl.login.*` too, below): skipped, so a Confluent or MSK `client.properties` works as
/// downloaded.
const JAVA_ONLY: &[&str] = &[
    "key.serializer",
    "value.serializer",
    "key.deserializer",
    "value.deserializer",
    "client.dns.lookup",
    "sasl.client.callback.handler.class",
    "ssl.keystore.type",
    "ssl.truststore.type",
];

/// Turns Java client settings into librdkafka's: `sasl.jaas.config` becomes `sasl.username`
/// and `sasl.password` (PLAIN, SCRAM) or the OIDC client credentials (OAUTHBEARER); Java-only
/// settings are dropped and named in the returned list. Errors name the setting, never a value.
pub fn translate_java(properties: Vec<(String, String)>) -> Result<(Pairs, Vec<String>), String> {
    let typed_pem = |store: &str| {
        properties
            .iter()
            .any(|(k, v)| k == store && v.trim().eq_ignore_ascii_case("PEM"))
    };
    // Java reads PEM stores too (KIP-651): a CA file librdkafka can use as it is.
    let pem_truststore = typed_pem("ssl.truststore.type")
        || properties
            .iter()
            .any(|(k, v)| k == "ssl.truststore.location" && is_pem_file(v));
    let pem_keystore = typed_pem("ssl.keystore.type");
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    for (key, value) in properties {
        if JAVA_ONLY.contains(&key.as_str())
            || key.starts_with("schema.registry.")
            || key.starts_with("basic.auth.")
            // The Java login's class and tuning (timeouts, refresh); librdkafka has none of it.
            || key.starts_with("sasl.login.")
        {
            dropped.push(key);
            continue;
        }
        match key.as_str() {
            "sasl.jaas.config" => out.extend(translate_jaas(&value)?),
            // Java turns host name checks off with an empty value, librdkafka with `none`.
            "ssl.endpoint.identification.algorithm" if value.trim().is_empty() => {
                out.push((key, "none".to_string()))
            }
            "ssl.truststore.location" if pem_truststore => {
                out.push(("ssl.ca.location".to_string(), value))
            }
            "ssl.truststore.certificates" => {
                out.push(("ssl.ca.pem".to_string(), pem_lines(&value)))
            }
            // A PEM keystore file holds the key and its certificate chain; OpenSSL takes each
            // from the same file.
            "ssl.keystore.location" if pem_keystore => {
                out.push(("ssl.certificate.location".to_string(), value.clone()));
                out.push(("ssl.key.location".to_string(), value));
            }
            "ssl.keystore.key" => out.push(("ssl.key.pem".to_string(), pem_lines(&value))),
            "ssl.keystore.certificate.chain" => {
                out.push(("ssl.certificate.pem".to_string(), pem_lines(&value)))
            }
            // PEM stores have no store password (the key's is ssl.key.password).
            "ssl.truststore.password" if pem_truststore => dropped.push(key),
            "ssl.keystore.password" if pem_keystore => dropped.push(key),
            "ssl.truststore.location" | "ssl.truststore.password" => {
                return Err(format!(
                    "{key}: librdkafka cannot read JKS or PKCS12 truststores; export the CA as \
                     PEM and set ssl.ca.location (or ssl.truststore.type=PEM) instead"
                ))
            }
            _ => out.push((key, value)),
        }
    }
    Ok((out, dropped))
}

/// True when `path` is a readable file that starts like PEM.
fn is_pem_file(path: &str) -> bool {
    std::fs::read(path.trim()).is_ok_and(|bytes| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
            .trim_start()
            .starts_with("-----BEGIN")
    })
}

/// PEM blocks with their line breaks back: a Java properties value written over continuation
/// lines has them joined by blanks, which Java's PEM reader accepts and OpenSSL's does not.
fn pem_lines(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after_begin = &rest[begin + 11..];
        let Some(label_end) = after_begin.find("-----") else {
            break;
        };
        let label = &after_begin[..label_end];
        let body_start = &after_begin[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            break;
        };
        let body: String = body_start[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        for chunk in body.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str(&end_marker);
        out.push('\n');
        rest = &body_start[end + end_marker.len()..];
    }
    if out.is_empty() {
        value.to_string()
    } else {
        out
    }
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
                // Java sends no scope when it is blank; librdkafka would send `scope=`.
                if let Some(v) = option(option_name).filter(|v| !v.trim().is_empty()) {
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
        // Named only when it reads as a login module class: a bare password put here by
        // mistake (a `${file:}` to the wrong Secret key) must not be printed.
        _ if module.ends_with("LoginModule") && !module.contains(['"', '\'', '=']) => {
            return Err(format!("sasl.jaas.config: unknown login module {module}"))
        }
        _ => {
            return Err(
                "sasl.jaas.config: no known login module (expected PlainLoginModule, \
                        ScramLoginModule or OAuthBearerLoginModule; the value is not shown)"
                    .to_string(),
            )
        }
    }
    Ok(out)
}

/// `name="value"`, `name='value'` or `name=value` options of a JAAS line, as Kafka's JAAS
/// parser (a `StreamTokenizer`) reads them: either quote, `\` escapes inside quotes (the flag
/// `required` and friends are skipped).
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
        let (value, next) = match after.chars().next() {
            Some(quote @ ('"' | '\'')) => quoted(&after[1..], quote),
            _ => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        options.push((name, value));
        rest = next.trim_start();
    }
    options
}

/// The value of a quoted JAAS string (its opening quote already taken) and what follows it.
fn quoted(text: &str, quote: char) -> (String, &str) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            c if c == quote => return (value, &text[at + c.len_utf8()..]),
            c => value.push(c),
        }
    }
    (value, "")
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
    fn java_escapes_and_separators_read_as_java_reads_them() {
        // As java.util.Properties.load: `\:` `\=` `\\` and `\uXXXX` escapes, a key ended by
        // whitespace alone, continuation lines losing their indentation, the last duplicate wins
        // (in KafkaProperties).
        let text = "ssl.ca.location=C\\:\\\\certs\\\\ca.pem\n\
            sasl.password=p\\=a\\:s\\\\s\\u00e9\\uD83D\\uDE00\n\
            security.protocol SASL_SSL\n\
            sasl.mechanism   :   PLAIN\n\
            my\\=odd\\ key=v\n\
            sasl.username = first\n\
            sasl.username = last\\\n\
            \x20   ing\n\
            tabs=a\\tb\n";
        let pairs = parse_file_text(text).unwrap();
        let properties = KafkaProperties::from(pairs.clone());
        assert_eq!(properties.get("ssl.ca.location"), Some("C:\\certs\\ca.pem"));
        assert_eq!(
            properties.get("sasl.password"),
            Some("p=a:s\\s\u{e9}\u{1F600}")
        );
        assert_eq!(properties.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(properties.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(properties.get("my=odd key"), Some("v"));
        assert_eq!(properties.get("sasl.username"), Some("lasting"));
        assert_eq!(properties.get("tabs"), Some("a\tb"));
        let error = parse_file_text("a=1\nb=\\u00zz\n").unwrap_err();
        assert_eq!(error, "line 2 has a malformed \\uXXXX escape");
    }

    #[test]
    fn confluent_single_quoted_jaas_credentials_lose_their_quotes() {
        // Confluent Cloud's downloaded Java client.properties quotes with single quotes, which
        // Kafka's JAAS parser (a StreamTokenizer) accepts as it does double quotes.
        let plain = "org.apache.kafka.common.security.plain.PlainLoginModule required \
                     username='KEY' password='p\"a s\\\\w';";
        let (out, _) = translate_java(vec![("sasl.jaas.config".into(), plain.into())]).unwrap();
        assert_eq!(
            out,
            vec![
                ("sasl.username".into(), "KEY".into()),
                ("sasl.password".into(), "p\"a s\\w".into())
            ]
        );
        let escaped = "org.apache.kafka.common.security.scram.ScramLoginModule required \
                       username=\"svc\" password=\"a\\\"b\";";
        let (out, _) = translate_java(vec![("sasl.jaas.config".into(), escaped.into())]).unwrap();
        assert_eq!(out[1], ("sasl.password".into(), "a\"b".into()));
    }

    #[test]
    fn a_bad_line_is_named_by_number_never_by_content() {
        let error = parse_file_text("a=1\nhunter2\n").unwrap_err();
        assert_eq!(error, "line 2 is not key=value");
        let error = parse_file_text("a=1\n\n  hunter2 \t\n").unwrap_err();
        assert_eq!(error, "line 3 is not key=value");
        assert_eq!(
            parse_file_text("empty=\n").unwrap(),
            vec![("empty".into(), String::new())]
        );
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
    fn a_later_alias_replaces_an_earlier_spelling() {
        // The file's Java spelling and the environment's librdkafka one name one setting:
        // librdkafka applies a hash map's entries in no fixed order, so both must not survive.
        let mut properties = KafkaProperties::from(vec![
            ("sasl.mechanism".into(), "PLAIN".into()),
            ("linger.ms".into(), "5".into()),
        ]);
        properties.extend([
            ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
            ("queue.buffering.max.ms".to_string(), "50".to_string()),
        ]);
        let pairs: Vec<_> = properties.iter().cloned().collect();
        assert_eq!(
            pairs,
            vec![
                ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
                ("queue.buffering.max.ms".to_string(), "50".to_string()),
            ]
        );
        assert_eq!(aliases_of("acks"), ["acks", "request.required.acks"]);
        assert_eq!(aliases_of("client.id"), ["client.id"]);
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
    fn confluent_oauth_client_properties_translate_as_downloaded() {
        // Confluent Cloud's OAuth client.properties, as its docs give it: login tuning that only
        // the Java client has, an empty scope (Java then sends none), and Java's empty
        // ssl.endpoint.identification.algorithm (host name checks off).
        let text = "sasl.mechanism=OAUTHBEARER\n\
            security.protocol=SASL_SSL\n\
            sasl.login.callback.handler.class=org.apache.kafka.common.security.oauthbearer.secured.OAuthBearerLoginCallbackHandler\n\
            sasl.login.connect.timeout.ms=15000\n\
            sasl.login.read.timeout.ms=15000\n\
            sasl.oauthbearer.token.endpoint.url=https://idp.example/oauth2/token\n\
            ssl.endpoint.identification.algorithm=\n\
            sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule \\\n\
              required clientId='app' clientSecret='s3' scope='' \\\n\
              extension_logicalCluster='lkc-1' extension_identityPoolId='pool-2';\n";
        let (out, dropped) = translate_java(parse_file_text(text).unwrap()).unwrap();
        let properties = KafkaProperties::from(out);
        assert_eq!(properties.get("sasl.oauthbearer.scope"), None);
        assert_eq!(properties.get("sasl.oauthbearer.client.id"), Some("app"));
        assert_eq!(
            properties.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        assert_eq!(
            dropped,
            [
                "sasl.login.callback.handler.class",
                "sasl.login.connect.timeout.ms",
                "sasl.login.read.timeout.ms"
            ]
        );
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in &properties {
            config.set(key, value);
        }
        let created: Result<rdkafka::producer::BaseProducer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    /// A self-signed CA (P-256, valid until 2126), for settings librdkafka parses at creation.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBjzCCATWgAwIBAgIUWxjnJYePE3dxPfL45r1zgqB+OOgwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRYWZ0ZXJjYXJ0LXRlc3QtY2EwIBcNMjYxMjA2MTY0NDQ0WhgP\nMjEyNjExMTIxNjQ0NDRaMBwxGjAYBgNVBAMMEWFmdGVyY2FydC10ZXN0LWNhMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiFYaeeWZ4Buf7z0YIwAgOajxElFvi6Jr\nlXISwDkNQ6HmkkX26OGHoFA0Y8i03sk2KnQsgHdDz+lQmhq2QyJJA6NTMFEwHQYD\nVR0OBBYEFNunK7brxJkPH4ffx5mC4WezT0a4MB8GA1UdIwQYMBaAFNunK7brxJkP\nH4ffx5mC4WezT0a4MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg\nAOIC4fGfT3TZR3zCTJCCcpkUXg/4l5hCpEdkFBLje5UCIQDPdFl7ygyoh4F4OjDE\nevewxOrXgFyfFzLQJ/pH3jHo5g==\n-----END CERTIFICATE-----";

    #[test]
    fn java_pem_truststores_and_keystores_become_librdkafka_pem_settings() {
        let dir = std::env::temp_dir().join(format!("aftercart-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, TEST_CA_PEM).unwrap();
        // A PEM truststore is recognised by its type or by its content.
        for typed in [true, false] {
            let mut input = vec![
                (
                    "ssl.truststore.location".to_string(),
                    ca.display().to_string(),
                ),
                ("ssl.truststore.password".to_string(), "unused".to_string()),
            ];
            if typed {
                input.insert(0, ("ssl.truststore.type".into(), "PEM".into()));
            }
            let (out, _) = translate_java(input).unwrap();
            assert_eq!(
                out,
                vec![("ssl.ca.location".to_string(), ca.display().to_string())],
                "typed: {typed}"
            );
        }
        // Inline certificates as a Java client.properties writes them: continuation lines, so
        // no line breaks are left in the value.
        let text = "ssl.truststore.type=PEM\nssl.truststore.certificates=-----BEGIN CERTIFICATE----- \\\n    MIIBjzCCATWgAwIBAgIUWxjnJYePE3dxPfL45r1zgqB+OOgwCgYIKoZIzj0EAwIw \\\n    HDEaMBgGA1UEAwwRYWZ0ZXJjYXJ0LXRlc3QtY2EwIBcNMjYxMjA2MTY0NDQ0WhgP \\\n    MjEyNjExMTIxNjQ0NDRaMBwxGjAYBgNVBAMMEWFmdGVyY2FydC10ZXN0LWNhMFkw \\\n    EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiFYaeeWZ4Buf7z0YIwAgOajxElFvi6Jr \\\n    lXISwDkNQ6HmkkX26OGHoFA0Y8i03sk2KnQsgHdDz+lQmhq2QyJJA6NTMFEwHQYD \\\n    VR0OBBYEFNunK7brxJkPH4ffx5mC4WezT0a4MB8GA1UdIwQYMBaAFNunK7brxJkP \\\n    H4ffx5mC4WezT0a4MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg \\\n    AOIC4fGfT3TZR3zCTJCCcpkUXg/4l5hCpEdkFBLje5UCIQDPdFl7ygyoh4F4OjDE \\\n    evewxOrXgFyfFzLQJ/pH3jHo5g== \\\n    -----END CERTIFICATE-----\n\
             ssl.keystore.type=PEM\nssl.keystore.location=/etc/kafka/client.pem\n";
        let (out, _) = translate_java(parse_file_text(text).unwrap()).unwrap();
        let properties = KafkaProperties::from(out);
        assert_eq!(
            properties.get("ssl.certificate.location"),
            Some("/etc/kafka/client.pem")
        );
        assert_eq!(
            properties.get("ssl.key.location"),
            Some("/etc/kafka/client.pem")
        );
        let pem = properties.get("ssl.ca.pem").expect("ssl.ca.pem");
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("security.protocol", "ssl")
            .set("ssl.ca.pem", pem);
        let created: Result<rdkafka::producer::BaseProducer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
        // A JKS or PKCS12 truststore is still refused, by name.
        let jks = dir.join("truststore.jks");
        std::fs::write(&jks, [0xfe, 0xed, 0xfe, 0xed]).unwrap();
        let error = translate_java(vec![(
            "ssl.truststore.location".into(),
            jks.display().to_string(),
        )])
        .unwrap_err();
        assert!(error.starts_with("ssl.truststore.location:"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
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
        // A Strimzi user Secret holds both `password` and `sasl.jaas.config`: a reference to the
        // wrong one puts the bare password where the login module belongs.
        let error =
            translate_java(vec![("sasl.jaas.config".into(), "Zx9.hunter2".into())]).unwrap_err();
        assert!(
            error.starts_with("sasl.jaas.config:") && !error.contains("hunter2"),
            "{error}"
        );
        let error = translate_java(vec![(
            "sasl.jaas.config".into(),
            "com.example.CustomLoginModule required;".into(),
        )])
        .unwrap_err();
        assert!(error.contains("com.example.CustomLoginModule"), "{error}");
    }
}
