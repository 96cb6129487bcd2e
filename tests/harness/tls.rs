//! TLS in front of a test broker: a CA and certificates made by the test (rcgen), and a rustls
//! proxy that terminates TLS (requiring a client certificate for mutual TLS) and forwards the
//! bytes to the broker's plaintext port. The broker advertises the proxy's address, so every
//! client connection, bootstrap and partition leaders alike, goes through TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A certificate authority that signs certificates for `127.0.0.1`.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its key, as DER (for rustls) and as PEM files (for librdkafka).
pub struct Issued {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("aftercart test CA {name}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca certificate");
        TestCa { cert, key }
    }

    /// The CA certificate as a PEM file in `dir`.
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).expect("write ca");
        path
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `127.0.0.1` signed by this CA, valid from yesterday for a year, or
    /// expired since yesterday.
    pub fn issue(&self, dir: &Path, name: &str, expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        if expired {
            params.not_before = now - day * 30;
            params.not_after = now - day;
        } else {
            params.not_before = now - day;
            params.not_after = now + day * 365;
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        let cert_pem = dir.join(format!("{name}.crt"));
        let key_pem = dir.join(format!("{name}.key"));
        std::fs::write(&cert_pem, cert.pem()).expect("write cert");
        std::fs::write(&key_pem, key.serialize_pem()).expect("write key");
        Issued {
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem,
            key_pem,
        }
    }
}

/// A fresh directory for one test's certificates.
pub fn cert_dir() -> PathBuf {
    let dir = crate::scratch(&format!("tls-{}", crate::unique_prefix()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    dir
}

/// A running TLS terminator on `addr`, forwarding to a plaintext backend.
pub struct TlsProxy {
    pub addr: SocketAddr,
    handshakes_failed: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl TlsProxy {
    /// Listens on `addr` (a port chosen before the broker starts, so the broker can advertise
    /// it) with `server` as its certificate; `client_ca` makes a client certificate signed by
    /// that CA mandatory (mutual TLS).
    pub async fn start(
        addr: SocketAddr,
        backend: SocketAddr,
        server: &Issued,
        client_ca: Option<&TestCa>,
    ) -> TlsProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der()).expect("client ca");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(vec![server.cert_der.clone()], server.key_der.clone_key())
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.expect("bind tls proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let handshakes_failed = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let failed = Arc::clone(&handshakes_failed);
        crate::front::serve_until(listener, stop.clone(), move |stream| {
            let (acceptor, failed) = (acceptor.clone(), Arc::clone(&failed));
            async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            }
        });
        TlsProxy {
            addr,
            handshakes_failed,
            stop,
        }
    }

    /// TLS handshakes the proxy refused or that the client gave up on.
    pub fn handshakes_failed(&self) -> u64 {
        self.handshakes_failed.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How the TLS front of a [`TlsBroker`] is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsOptions {
    /// Require a client certificate signed by the test CA.
    pub mutual: bool,
    /// Serve a certificate that expired yesterday.
    pub expired_server: bool,
}

/// A Tansu broker reachable only through a TLS proxy, with the test's own CA.
pub struct TlsBroker {
    pub broker: crate::Broker,
    pub proxy: TlsProxy,
    pub ca: TestCa,
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
}

impl TlsBroker {
    /// `None` when Tansu is not installed (and not required).
    pub async fn tansu(options: TlsOptions) -> Option<TlsBroker> {
        let dir = cert_dir();
        let ca = TestCa::new("broker");
        let ca_pem = ca.write_pem(&dir, "ca.pem");
        let server = ca.issue(&dir, "broker", options.expired_server);
        let (plain_port, tls_port) = (crate::broker::free_port(), crate::broker::free_port());
        let proxy = TlsProxy::start(
            SocketAddr::from(([127, 0, 0, 1], tls_port)),
            SocketAddr::from(([127, 0, 0, 1], plain_port)),
            &server,
            options.mutual.then_some(&ca),
        )
        .await;
        let broker = crate::Broker::tansu_advertising(Some((plain_port, tls_port))).await?;
        Some(TlsBroker {
            broker,
            proxy,
            ca,
            dir,
            ca_pem,
        })
    }

    /// The only address clients get: the TLS proxy.
    pub fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// librdkafka properties for TLS with `ca_pem` as the trusted CA and, for mutual TLS, a
    /// client certificate; plus what Tansu needs in tests.
    pub fn client_properties(
        &self,
        ca_pem: &Path,
        client: Option<&Issued>,
    ) -> Vec<(String, String)> {
        let mut properties = self.broker.client_properties();
        properties.push(("security.protocol".into(), "ssl".into()));
        properties.push(("ssl.ca.location".into(), ca_pem.display().to_string()));
        if let Some(client) = client {
            properties.push((
                "ssl.certificate.location".into(),
                client.cert_pem.display().to_string(),
            ));
            properties.push((
                "ssl.key.location".into(),
                client.key_pem.display().to_string(),
            ));
        }
        properties
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
