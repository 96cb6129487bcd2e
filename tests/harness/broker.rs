//! Real Kafka-protocol brokers for tests: librdkafka's in-process mock cluster, or a Tansu broker
//! process started on a free loopback port (when the `tansu` binary is on PATH).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;

/// Set to 1 (CI does) to make a missing `tansu` binary a test failure instead of a skip.
pub const REQUIRE_TANSU: &str = "AFTERCART_REQUIRE_TANSU";

pub enum Broker {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(TansuProcess),
}

impl Broker {
    pub fn mock() -> Broker {
        Broker::Mock(MockCluster::new(1).expect("mock cluster starts"))
    }

    /// A Tansu broker process, or `None` (with a note) when `tansu` is not installed and
    /// AFTERCART_REQUIRE_TANSU is not set.
    pub async fn tansu() -> Option<Broker> {
        Self::tansu_advertising(None).await
    }

    /// A Tansu broker that advertises `advertised` (host port of a proxy in front of it)
    /// instead of its own port; `None` when Tansu is missing (see [`Broker::tansu`]).
    pub async fn tansu_advertising(advertised: Option<(u16, u16)>) -> Option<Broker> {
        let Some(binary) = find_tansu() else {
            if std::env::var(REQUIRE_TANSU).is_ok_and(|v| v == "1") {
                panic!("tansu is not on PATH but {REQUIRE_TANSU}=1: install it with `cargo install tansu --version 0.6.0 --features dynostore`");
            }
            eprintln!("note: tansu not on PATH; skipping the Tansu variant of this test");
            return None;
        };
        let process = tokio::task::spawn_blocking(move || match advertised {
            Some((port, proxy)) => TansuProcess::start_advertising(&binary, port, Some(proxy)),
            None => TansuProcess::start(&binary),
        })
        .await
        .expect("tansu start does not panic");
        Some(Broker::Tansu(process))
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
            Broker::Tansu(process) => process.bootstrap.clone(),
        }
    }

    pub fn is_mock(&self) -> bool {
        matches!(self, Broker::Mock(_))
    }

    /// Creates topics that services would create themselves on a real cluster. librdkafka's mock
    /// cluster has no CreateTopics handler, so there they are made through its own API; on Tansu
    /// this does nothing and the services' admin calls create them.
    pub fn precreate_for_mock(&self, specs: &[aftercart_kafka::TopicSpec]) {
        if let Broker::Mock(cluster) = self {
            for spec in specs {
                // Services share topics: one made already is fine.
                if let Err(error) =
                    cluster.create_topic(&spec.name, spec.partitions, spec.replication)
                {
                    assert!(
                        error.to_string().contains("already exists"),
                        "mock topic {}: {error}",
                        spec.name
                    );
                }
            }
        }
    }

    /// Client properties a broker needs in tests. Tansu 0.6 exposes only the first record of a
    /// multi-record batch (three records acknowledged at offsets 0, 1, 2; the high watermark
    /// says 1 and only offset 0 can be read back), so against it producers send one record per
    /// batch. Apache Kafka needs no such setting, and production code sets none.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        match self {
            Broker::Mock(_) => Vec::new(),
            Broker::Tansu(_) => vec![("batch.num.messages".to_string(), "1".to_string())],
        }
    }

    /// The Tansu broker process (fault tests freeze it); `None` on the in-process mock cluster.
    pub fn process(&self) -> Option<&TansuProcess> {
        match self {
            Broker::Mock(_) => None,
            Broker::Tansu(process) => Some(process),
        }
    }

    /// Makes every broker answer `delay` late (mock cluster only), to simulate a slow cluster.
    pub fn slow_down(&self, delay: Duration) {
        match self {
            Broker::Mock(cluster) => cluster.broker_round_trip_time(1, delay).expect("mock rtt"),
            Broker::Tansu(_) => panic!("slow_down is only available on the mock cluster"),
        }
    }
}

impl Broker {
    /// Takes the (mock) broker down: connections are refused until `up`.
    pub fn down(&self) {
        match self {
            Broker::Mock(cluster) => cluster.broker_down(1).expect("mock broker down"),
            Broker::Tansu(_) => panic!("down is only available on the mock cluster"),
        }
    }

    pub fn up(&self) {
        match self {
            Broker::Mock(cluster) => cluster.broker_up(1).expect("mock broker up"),
            Broker::Tansu(_) => panic!("up is only available on the mock cluster"),
        }
    }

    /// Answers the next `count` produce requests with `error` (mock cluster only): a broker
    /// refusing records, e.g. a topic whose `max.message.bytes` is below a record's size.
    pub fn refuse_produce(&self, error: rdkafka::types::RDKafkaRespErr, count: usize) {
        match self {
            Broker::Mock(cluster) => {
                cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &vec![error; count])
            }
            Broker::Tansu(_) => panic!("refuse_produce is only available on the mock cluster"),
        }
    }

    /// Drops the produce refusals [`Broker::refuse_produce`] queued and not yet used.
    pub fn accept_produce(&self) {
        match self {
            Broker::Mock(cluster) => {
                cluster.clear_request_errors(rdkafka::types::RDKafkaApiKey::Produce)
            }
            Broker::Tansu(_) => panic!("accept_produce is only available on the mock cluster"),
        }
    }
}

fn find_tansu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
}

/// A Tansu broker child process with in-memory storage; killed on drop (a frozen one too).
pub struct TansuProcess {
    child: Child,
    pub bootstrap: String,
}

impl TansuProcess {
    fn start(binary: &PathBuf) -> TansuProcess {
        Self::start_advertising(binary, free_port(), None)
    }

    /// Listens on `port` and advertises `advertised` (a TLS proxy in front of it) to clients
    /// when given: metadata then sends every client through the proxy.
    fn start_advertising(binary: &PathBuf, port: u16, advertised: Option<u16>) -> TansuProcess {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let log = crate::scratch(&format!("tansu-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("tansu log file");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("tansu starts");
        let process = TansuProcess {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        process.wait_until_answering(&log, advertised.is_none());
        process
    }

    /// Waits until the broker answers: a metadata request with `full`; else (behind a proxy,
    /// whose advertised address a plaintext client cannot use) an ApiVersions request on its
    /// own port.
    fn wait_until_answering(&self, log: &std::path::Path, full: bool) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "0")
            .create()
            .expect("probe client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let answered = if full {
                consumer
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok()
            } else {
                answers_api_versions(&self.bootstrap)
            };
            if answered {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = std::fs::read_to_string(log).unwrap_or_default();
        panic!("tansu did not answer within 30 s; its log:\n{output}");
    }
}

impl TansuProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the broker (SIGSTOP): its sockets stay open, but it answers nothing, as a broker
    /// stuck in a long GC pause or on a dead disk.
    pub fn sigstop(&self) {
        crate::process::signal(self.pid(), "STOP");
    }

    /// Thaws a broker frozen by [`TansuProcess::sigstop`].
    pub fn sigcont(&self) {
        crate::process::signal(self.pid(), "CONT");
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `addr` answers a Kafka ApiVersions v0 request (raw bytes, no client library: a
/// librdkafka client would move on to the advertised address).
fn answers_api_versions(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    // size 10: api key 18, version 0, correlation id 1, null client id.
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    let mut answer = [0u8; 8];
    stream.write_all(&request).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer[4..8] == [0, 0, 0, 1]
}

/// A loopback port that was free a moment ago, and never handed out before in this test
/// process. The kernel may give a port it just gave again once its listener is dropped: two
/// calls for one process (an ingress's webhook and admin addresses) once returned the same
/// port, and the process refused to start (a fault-suite run on 2026-12-07).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind port 0")
            .local_addr()
            .expect("addr")
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::free_port;

    /// Before ports were remembered, 2,000 calls repeated dozens of ports (the kernel reuses a
    /// released one readily), and two addresses of one process could collide.
    #[test]
    fn no_port_is_handed_out_twice() {
        let ports: Vec<u16> = (0..2_000).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
