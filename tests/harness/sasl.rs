//! A broker front that checks SASL credentials: it speaks just enough of the Kafka protocol
//! (ApiVersions, SaslHandshake, SaslAuthenticate) to verify PLAIN and SCRAM-SHA-256/512 exactly
//! as a Kafka broker does (SCRAM with a salted password and the client's proof checked), then
//! hands an authenticated connection to a real broker behind it. Neither librdkafka's mock
//! cluster nor Tansu checks SASL, so this is what proves the client side here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_VERSION: i16 = 35;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const SCRAM_ITERATIONS: u32 = 4096;

/// Counts of what the front decided.
#[derive(Default)]
pub struct SaslCounts {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

/// A SASL-checking front on a loopback port; the broker behind it must advertise its address.
pub struct SaslFront {
    pub addr: SocketAddr,
    pub counts: Arc<SaslCounts>,
    stop: CancellationToken,
}

impl SaslFront {
    /// Listens on `addr` for `mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) with one user.
    pub async fn start(
        addr: SocketAddr,
        backend: SocketAddr,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> SaslFront {
        let listener = TcpListener::bind(addr).await.expect("bind sasl front");
        let addr = listener.local_addr().expect("front addr");
        let counts = Arc::new(SaslCounts::default());
        let stop = CancellationToken::new();
        let config = Arc::new(Config {
            mechanism: mechanism.to_string(),
            user: user.to_string(),
            password: password.to_string(),
        });
        let counts_task = Arc::clone(&counts);
        crate::front::serve_until(listener, stop.clone(), move |stream| {
            let (config, counts) = (Arc::clone(&config), Arc::clone(&counts_task));
            async move { serve(stream, backend, &config, &counts).await }
        });
        SaslFront { addr, counts, stop }
    }

    pub fn accepted(&self) -> u64 {
        self.counts.accepted.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }
}

impl Drop for SaslFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Config {
    mechanism: String,
    user: String,
    password: String,
}

/// One connection: the SASL exchange, then (authenticated) a byte pipe to the broker.
async fn serve(mut client: TcpStream, backend: SocketAddr, config: &Config, counts: &SaslCounts) {
    let mut scram: Option<ScramServer> = None;
    loop {
        let Some((api_key, api_version, correlation, body)) = read_request(&mut client).await
        else {
            return;
        };
        let mut out = Vec::new();
        match api_key {
            API_VERSIONS => {
                // The v0 answer to any version (a broker answers an unsupported one the same
                // way): librdkafka retries with v0 and then sees only what this front serves.
                let error = if api_version > 0 {
                    UNSUPPORTED_VERSION
                } else {
                    0
                };
                out.extend(error.to_be_bytes());
                let apis: [(i16, i16, i16); 3] = [
                    (API_VERSIONS, 0, 0),
                    (SASL_HANDSHAKE, 0, 1),
                    (SASL_AUTHENTICATE, 0, 1),
                ];
                out.extend((apis.len() as i32).to_be_bytes());
                for (key, min, max) in apis {
                    out.extend(key.to_be_bytes());
                    out.extend(min.to_be_bytes());
                    out.extend(max.to_be_bytes());
                }
            }
            SASL_HANDSHAKE => {
                let mut reader = Reader(&body);
                let wanted = reader.string().unwrap_or_default();
                let error = if wanted == config.mechanism {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                out.extend(error.to_be_bytes());
                out.extend(1i32.to_be_bytes());
                put_string(&mut out, &config.mechanism);
            }
            SASL_AUTHENTICATE => {
                let mut reader = Reader(&body);
                let auth = reader.bytes().unwrap_or_default();
                let step = if config.mechanism == "PLAIN" {
                    plain(&auth, config)
                } else {
                    let server = scram.get_or_insert_with(|| ScramServer::new(config));
                    server.step(&auth)
                };
                let (error, message, reply, done) = match step {
                    Step::Continue(reply) => (0i16, None, reply, false),
                    Step::Done(reply) => (0, None, reply, true),
                    Step::Refused(why) => {
                        (SASL_AUTHENTICATION_FAILED, Some(why), Vec::new(), false)
                    }
                };
                out.extend(error.to_be_bytes());
                match &message {
                    Some(text) => put_string(&mut out, text),
                    None => out.extend((-1i16).to_be_bytes()),
                }
                out.extend((reply.len() as i32).to_be_bytes());
                out.extend(&reply);
                if api_version >= 1 {
                    out.extend(0i64.to_be_bytes());
                }
                write_response(&mut client, correlation, &out).await;
                if message.is_some() {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if done {
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut broker) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    return;
                }
                continue;
            }
            // Anything before authentication is a protocol violation: a broker closes.
            _ => return,
        }
        write_response(&mut client, correlation, &out).await;
    }
}

enum Step {
    Continue(Vec<u8>),
    Done(Vec<u8>),
    Refused(String),
}

/// PLAIN: `authzid \0 user \0 password`.
fn plain(auth: &[u8], config: &Config) -> Step {
    let parts: Vec<&[u8]> = auth.split(|b| *b == 0).collect();
    match parts.as_slice() {
        [_, user, password]
            if *user == config.user.as_bytes() && *password == config.password.as_bytes() =>
        {
            Step::Done(Vec::new())
        }
        _ => Step::Refused("Authentication failed: Invalid username or password".into()),
    }
}

/// The server side of SCRAM (RFC 5802) for SHA-256 or SHA-512.
struct ScramServer {
    sha512: bool,
    user: String,
    password: String,
    salt: Vec<u8>,
    /// client-first-bare, server-first, combined nonce: set after the first message.
    first: Option<(String, String, String)>,
}

impl ScramServer {
    fn new(config: &Config) -> ScramServer {
        ScramServer {
            sha512: config.mechanism == "SCRAM-SHA-512",
            user: config.user.clone(),
            password: config.password.clone(),
            salt: uuid::Uuid::new_v4().as_bytes().to_vec(),
            first: None,
        }
    }

    fn step(&mut self, message: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(message) else {
            return Step::Refused("not UTF-8".into());
        };
        match self.first.take() {
            None => {
                // client-first: gs2 header "n,," then "n=user,r=nonce".
                let Some(bare) = text.strip_prefix("n,,") else {
                    return Step::Refused("bad gs2 header".into());
                };
                let user = attribute(bare, "n").unwrap_or_default();
                let nonce = attribute(bare, "r").unwrap_or_default();
                if user != self.user {
                    return Step::Refused("Authentication failed: unknown user".into());
                }
                let combined = format!("{nonce}{}", uuid::Uuid::new_v4().simple());
                let server_first = format!(
                    "r={combined},s={},i={SCRAM_ITERATIONS}",
                    base64::engine::general_purpose::STANDARD.encode(&self.salt)
                );
                self.first = Some((bare.to_string(), server_first.clone(), combined));
                Step::Continue(server_first.into_bytes())
            }
            Some((client_first_bare, server_first, combined)) => {
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return Step::Refused("no proof".into());
                };
                if attribute(without_proof, "r") != Some(combined.as_str()) {
                    return Step::Refused("nonce mismatch".into());
                }
                let Ok(proof) = base64::engine::general_purpose::STANDARD.decode(proof) else {
                    return Step::Refused("bad proof".into());
                };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let salted = self.salted_password();
                let client_key = self.hmac(&salted, b"Client Key");
                let stored_key = self.hash(&client_key);
                let signature = self.hmac(&stored_key, auth_message.as_bytes());
                let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                if proof.len() != signature.len() || self.hash(&recovered) != stored_key {
                    return Step::Refused("Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM".into());
                }
                let server_key = self.hmac(&salted, b"Server Key");
                let verifier = self.hmac(&server_key, auth_message.as_bytes());
                Step::Done(
                    format!(
                        "v={}",
                        base64::engine::general_purpose::STANDARD.encode(verifier)
                    )
                    .into_bytes(),
                )
            }
        }
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        if self.sha512 {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        } else {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }

    fn hash(&self, data: &[u8]) -> Vec<u8> {
        if self.sha512 {
            Sha512::digest(data).to_vec()
        } else {
            Sha256::digest(data).to_vec()
        }
    }

    /// PBKDF2 with HMAC: Hi(password, salt, i) of RFC 5802.
    fn salted_password(&self) -> Vec<u8> {
        let mut block = self.salt.clone();
        block.extend(1u32.to_be_bytes());
        let mut u = self.hmac(self.password.as_bytes(), &block);
        let mut result = u.clone();
        for _ in 1..SCRAM_ITERATIONS {
            u = self.hmac(self.password.as_bytes(), &u);
            for (r, b) in result.iter_mut().zip(&u) {
                *r ^= b;
            }
        }
        result
    }
}

/// The value of `name=` in a comma-separated SCRAM message.
fn attribute<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split(',').find_map(|part| {
        part.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// Reads one request: (api key, api version, correlation id, body after the header).
async fn read_request(stream: &mut TcpStream) -> Option<(i16, i16, i32, Vec<u8>)> {
    let size = stream.read_i32().await.ok()?;
    if !(8..=1 << 20).contains(&size) {
        return None;
    }
    let mut frame = vec![0u8; size as usize];
    stream.read_exact(&mut frame).await.ok()?;
    let mut reader = Reader(&frame);
    let api_key = reader.i16()?;
    let api_version = reader.i16()?;
    let correlation = reader.i32()?;
    let _client_id = reader.nullable_string()?;
    // The request headers used here are v1 (no tagged fields): ApiVersions v0 and the SASL
    // requests at the versions this front serves. A newer ApiVersions gets the v0 answer.
    Some((api_key, api_version, correlation, reader.0.to_vec()))
}

async fn write_response(stream: &mut TcpStream, correlation: i32, body: &[u8]) {
    let mut frame = Vec::with_capacity(body.len() + 8);
    frame.extend(((body.len() + 4) as i32).to_be_bytes());
    frame.extend(correlation.to_be_bytes());
    frame.extend(body);
    let _ = stream.write_all(&frame).await;
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    out.extend((value.len() as i16).to_be_bytes());
    out.extend(value.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn nullable_string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        Some(Some(
            String::from_utf8_lossy(self.take(len as usize)?).into_owned(),
        ))
    }

    fn string(&mut self) -> Option<String> {
        self.nullable_string()?
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.i32()?;
        Some(self.take(len.max(0) as usize)?.to_vec())
    }
}
