//! Google OAuth access tokens for the exporters: the token request of each credential kind (a
//! refresh token, a service account's RS256-signed JWT assertion, or the metadata server of
//! Workload Identity / application default credentials) and the answer's token and lifetime.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use crate::config::GoogleAuth;

/// The scope of the Data Manager API.
pub const DATAMANAGER_SCOPE: &str = "https://www.googleapis.com/auth/datamanager";
/// A JWT assertion is valid this long (Google's maximum).
const ASSERTION_SECONDS: u64 = 3600;

/// An RSA key from a PEM PKCS#8 `-----BEGIN PRIVATE KEY-----` block (a service account key).
pub fn rsa_key(pem: &str) -> Option<RsaKeyPair> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----") && !line.is_empty())
        .collect();
    let der = STANDARD.decode(body).ok()?;
    RsaKeyPair::from_pkcs8(&der).ok()
}

/// A signed JWT asking `token_url` for an access token with `scope` on behalf of `email`.
pub fn assertion(
    key: &RsaKeyPair,
    email: &str,
    token_url: &str,
    scope: &str,
    now_secs: u64,
) -> Option<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": email,
        "scope": scope,
        "aud": token_url,
        "iat": now_secs,
        "exp": now_secs + ASSERTION_SECONDS,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .ok()?;
    Some(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// `application/x-www-form-urlencoded` value encoding.
pub fn form_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request that yields an access token for `auth` (`None` for a fixed token, or a key
/// that cannot sign). `scope` applies to the service account and metadata kinds.
pub fn token_request(
    auth: &GoogleAuth,
    scope: &str,
    now_secs: u64,
) -> Option<http::Request<Full<Bytes>>> {
    let form = |url: &str, body: String| {
        http::Request::post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(
                http::header::USER_AGENT,
                aftercart_delivery::sink::USER_AGENT_VALUE,
            )
            .body(Full::new(Bytes::from(body)))
            .ok()
    };
    match auth {
        GoogleAuth::Fixed => None,
        GoogleAuth::Refresh {
            token_url,
            client_id,
            client_secret,
            refresh_token,
        } => form(
            token_url,
            format!(
                "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                form_value(client_id),
                form_value(client_secret.expose()),
                form_value(refresh_token.expose())
            ),
        ),
        GoogleAuth::ServiceAccount {
            token_url,
            client_email,
            key,
        } => {
            let jwt = assertion(&key.0, client_email, token_url, scope, now_secs)?;
            form(
                token_url,
                format!(
                    "grant_type={}&assertion={jwt}",
                    form_value("urn:ietf:params:oauth:grant-type:jwt-bearer")
                ),
            )
        }
        GoogleAuth::Metadata { url } => {
            let separator = if url.contains('?') { '&' } else { '?' };
            http::Request::get(format!("{url}{separator}scopes={}", form_value(scope)))
                .header("Metadata-Flavor", "Google")
                .header(
                    http::header::USER_AGENT,
                    aftercart_delivery::sink::USER_AGENT_VALUE,
                )
                .body(Full::new(Bytes::new()))
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit test key made for this test only (`openssl genpkey -algorithm RSA`).
    const TEST_KEY: &str = include_str!("testdata/service-account-key.pem");

    #[test]
    fn a_service_account_assertion_is_a_verifiable_rs256_jwt() {
        let key = rsa_key(TEST_KEY).expect("test key parses");
        let jwt = assertion(
            &key,
            "sa@p.iam.gserviceaccount.com",
            "https://oauth2.googleapis.com/token",
            DATAMANAGER_SCOPE,
            1_800_000_000,
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], DATAMANAGER_SCOPE);
        assert_eq!(claims["exp"], 1_800_003_600u64);
        use ring::signature::KeyPair as _;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public_key().as_ref(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies");
        assert!(
            rsa_key("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----").is_none()
        );
    }

    #[test]
    fn the_metadata_server_is_asked_with_its_header_and_the_scope() {
        let auth = GoogleAuth::Metadata {
            url: "http://127.0.0.1:1/token".into(),
        };
        let request = token_request(&auth, DATAMANAGER_SCOPE, 0).unwrap();
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.headers()["metadata-flavor"], "Google");
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:1/token?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdatamanager"
        );
    }
}
