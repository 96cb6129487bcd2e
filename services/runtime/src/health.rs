//! Readiness shared between a process's components and its admin listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Ready when every registered component is ready and the process is not draining.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    components: Mutex<Vec<(String, Arc<AtomicBool>)>>,
}

/// One component's readiness switch, e.g. "kafka metadata answered".
#[derive(Clone)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
}

impl Readiness {
    /// A switch no [`Health`] reports: one input of a readiness computed from several (the
    /// ingress is ready when Kafka *or* its spool can make a webhook safe).
    pub fn detached() -> Readiness {
        Readiness {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.flag.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component that starts not ready.
    pub fn component(&self, name: &str) -> Readiness {
        let flag = Arc::new(AtomicBool::new(false));
        self.inner
            .components
            .lock()
            .expect("health lock")
            .push((name.to_string(), flag.clone()));
        Readiness { flag }
    }

    /// Flips readiness to false for good: the first step of a graceful shutdown.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// `Ok` when ready, else the reason (names of components, never data).
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".to_string());
        }
        let components = self.inner.components.lock().expect("health lock");
        // Nothing registered yet means the services have not started: not ready (a probe in
        // the instant between binding the admin port and the first registration said 200).
        if components.is_empty() {
            return Err("starting".to_string());
        }
        let waiting: Vec<&str> = components
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| name.as_str())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("waiting for {}", waiting.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let health = Health::new();
        let kafka = health.component("kafka");
        let topics = health.component("topics");
        assert_eq!(health.readiness(), Err("waiting for kafka, topics".into()));
        kafka.set_ready(true);
        assert_eq!(health.readiness(), Err("waiting for topics".into()));
        topics.set_ready(true);
        assert_eq!(health.readiness(), Ok(()));
    }

    #[test]
    fn nothing_registered_yet_is_not_ready() {
        let health = Health::new();
        assert_eq!(health.readiness(), Err("starting".into()));
        health.component("kafka").set_ready(true);
        assert_eq!(health.readiness(), Ok(()));
    }

    #[test]
    fn draining_overrides_readiness() {
        let health = Health::new();
        health.start_draining();
        assert_eq!(health.readiness(), Err("draining".into()));
    }
}
