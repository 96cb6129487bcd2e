//! A real `aftercart` executable as a child process for the fault tests: a clean environment plus
//! the given `AFTERCART_*` variables, its output in a log file (printed when a test fails), its
//! admin `/readyz` awaited, POSIX signals to freeze, kill or stop it, and restarts with the same
//! environment.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::free_port;
use crate::Broker;

/// Sends `signal` (a name such as `STOP` or `KILL`) to `pid` with kill(1), so the tests need no
/// unsafe code; panics if it cannot be delivered.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The Kafka variables of a consumer service on `broker` under `prefix`: the broker's own
/// client properties (one record per batch on Tansu) and short sessions, so a group notices a
/// killed member within seconds.
pub fn kafka_env(broker: &Broker, prefix: &str, partitions: u32) -> Vec<(String, String)> {
    kafka_env_with(
        broker,
        prefix,
        partitions,
        &["session.timeout.ms=6000", "heartbeat.interval.ms=500"],
    )
}

/// The Kafka variables with `extra` client properties (`name=value`) after the broker's own.
pub fn kafka_env_with(
    broker: &Broker,
    prefix: &str,
    partitions: u32,
    extra: &[&str],
) -> Vec<(String, String)> {
    let properties = broker
        .client_properties()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(extra.iter().map(|p| p.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("AFTERCART_KAFKA_BROKERS".into(), broker.bootstrap()),
        ("AFTERCART_TOPIC_PREFIX".into(), prefix.to_string()),
        ("AFTERCART_TOPIC_PARTITIONS".into(), partitions.to_string()),
        ("AFTERCART_KAFKA_PROPERTIES".into(), properties),
    ]
}

/// The variables of an `aftercart ingress` on `broker` under `prefix` (3 partitions) accepting
/// deliveries signed with `secret`, and the webhook address it will listen on.
pub fn ingress_env(
    broker: &Broker,
    prefix: &str,
    secret: &str,
) -> (Vec<(String, String)>, SocketAddr) {
    let listen = free_addr();
    // A producer only: consumer session settings would just draw librdkafka warnings.
    let mut env = kafka_env_with(broker, prefix, 3, &[]);
    env.push(("AFTERCART_SHOPIFY_SECRETS".into(), secret.to_string()));
    env.push(("AFTERCART_INGRESS_LISTEN".into(), listen.to_string()));
    // Its own spool, kept across its restarts: the default directory is shared by every
    // ingress on the machine, so one test's leftovers (events for another run's topics, which
    // no broker here has) would queue every later event behind them, and two ingresses would
    // contend for its lock.
    let spool = crate::scratch(&format!("spool-{prefix}-{}", listen.port()));
    env.push((
        "AFTERCART_INGRESS_SPOOL_DIR".into(),
        spool.to_string_lossy().into_owned(),
    ));
    (env, listen)
}

/// One service run by the real binary. Killed on drop; its log is printed if the test failed.
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The admin listener (`AFTERCART_ADMIN_LISTEN`), kept across restarts.
    pub admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    /// How many times the process was started (1 before any restart).
    pub starts: u32,
}

impl ServiceProcess {
    /// Spawns `binary args` with only `env` (plus a chosen admin address and JSON logs) and
    /// waits until `/readyz` answers 200.
    pub async fn start(
        name: &str,
        binary: impl AsRef<Path>,
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> ServiceProcess {
        let mut process = ServiceProcess::spawn(name, binary, args, env);
        process.wait_ready(Duration::from_secs(60)).await;
        process
    }

    /// Spawns without waiting for readiness (for processes expected to fail).
    pub fn spawn(
        name: &str,
        binary: impl AsRef<Path>,
        args: &[&str],
        mut env: Vec<(String, String)>,
    ) -> ServiceProcess {
        let admin = match env.iter().find(|(k, _)| k == "AFTERCART_ADMIN_LISTEN") {
            Some((_, value)) => value.parse().expect("AFTERCART_ADMIN_LISTEN is an address"),
            None => {
                let admin = free_addr();
                env.push(("AFTERCART_ADMIN_LISTEN".into(), admin.to_string()));
                admin
            }
        };
        if !env.iter().any(|(k, _)| k == "AFTERCART_LOG_FORMAT") {
            env.push(("AFTERCART_LOG_FORMAT".into(), "json".into()));
        }
        let dir = crate::scratch("logs");
        std::fs::create_dir_all(&dir).expect("log directory");
        let log = dir.join(format!(
            "{}-{}-{}.log",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let mut process = ServiceProcess {
            name: name.to_string(),
            binary: binary.as_ref().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            admin,
            log,
            child: None,
            starts: 0,
        };
        process.launch();
        process
    }

    fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.name));
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current process id (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// One environment variable as given at start.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Everything the process (every start of it) wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Freezes the process: it keeps its sockets but answers nothing.
    pub fn sigstop(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn sigcont(&self) {
        signal(self.pid(), "CONT");
    }

    /// A crash: nothing in flight is finished, nothing is flushed. Returns once it is reaped.
    pub async fn sigkill(&mut self) {
        signal(self.pid(), "KILL");
        let code = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            code, None,
            "{} killed by SIGKILL has no exit code",
            self.name
        );
    }

    /// A graceful stop; returns the exit code (`None` if a signal ended it).
    pub async fn sigterm(&mut self, timeout: Duration) -> Option<i32> {
        signal(self.pid(), "TERM");
        self.wait_exit(timeout).await
    }

    /// Waits for the process to end; panics (with its log) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("wait").is_none())
    }

    /// Starts the process again with the same arguments and environment (the same ports and
    /// topics) after it ended, and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "{} is still running: kill or stop it before restarting",
            self.name
        );
        self.launch();
        self.wait_ready(Duration::from_secs(60)).await;
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process exits first or
    /// `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(body) = admin_get(self.admin, "/readyz").await {
                if body.0 == 200 {
                    return;
                }
            }
            if !self.is_running() {
                panic!(
                    "{} exited before ready; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not ready within {timeout:?}; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process's peak resident memory so far (`VmHWM` in /proc), in bytes: what a pod's
    /// memory limit would have been measured against.
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// The process's resident memory now (`VmRSS` in /proc), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// The Prometheus text of `/metrics` (empty if the admin port does not answer).
    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One series (`name{labels}` exactly as exposed), 0 when absent or unreachable.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric_value(&self.metrics().await, series)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A frozen process ignores everything but SIGKILL and SIGCONT.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                self.logs(),
                self.name
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// GET on an admin port with a short timeout: (status, body), or `None` when nothing answers
/// (not yet listening, frozen, or gone).
async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let response = crate::http::client().request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await;
    answer.ok().flatten()
}

/// One `kB` field of /proc/<pid>/status (Linux only, as the fault suite is).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
