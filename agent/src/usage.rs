//! Resource use per backend. The executor reads each backend's cumulative counters every
//! interval; CPU use is the CPU time between two readings over the wall time between them, so a
//! backend's first figure comes one interval after its first reading. Each sample goes to the
//! controller once, with the next heartbeat (the controller keeps the latest).

use crate::executor::{Executor, UsageReading};
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{now_millis, Usage};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples waiting for the next heartbeat.
#[derive(Default)]
pub(crate) struct UsageSamples {
    fresh: Mutex<BTreeMap<BackendId, Usage>>,
}

impl UsageSamples {
    /// Takes the samples not sent yet.
    pub(crate) fn take(&self) -> BTreeMap<BackendId, Usage> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put(&self, samples: impl IntoIterator<Item = (BackendId, Usage)>) {
        self.fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(samples);
    }
}

/// The previous reading of each backend, to take rates against.
#[derive(Default)]
pub(crate) struct Sampler {
    previous: HashMap<BackendId, (Instant, Duration)>,
}

impl Sampler {
    /// Reads `backends` once and leaves in `samples` what two readings now make.
    pub(crate) async fn sample(
        &mut self,
        executor: &dyn Executor,
        backends: Vec<BackendId>,
        samples: &UsageSamples,
    ) {
        let readings = executor.read_usage(backends).await;
        let now = Instant::now();
        let at = now_millis();
        let mut seen = HashMap::with_capacity(readings.len());
        let mut fresh = Vec::with_capacity(readings.len());
        for (backend, reading) in readings {
            if let Some(&(then, cpu_then)) = self.previous.get(&backend) {
                if let Some(cpu_millis) = cpu_millis(then, cpu_then, now, reading) {
                    let usage = Usage {
                        cpu_millis,
                        memory_bytes: reading.memory_bytes,
                        at,
                    };
                    fresh.push((backend.clone(), usage));
                }
            }
            seen.insert(backend, (now, reading.cpu));
        }
        // Backends that ended are forgotten with their last reading.
        self.previous = seen;
        samples.put(fresh);
    }
}

/// Thousandths of a core used between two readings; `None` when no time passed between them.
fn cpu_millis(
    then: Instant,
    cpu_then: Duration,
    now: Instant,
    reading: UsageReading,
) -> Option<u64> {
    let wall = now.checked_duration_since(then)?.as_nanos();
    if wall == 0 {
        return None;
    }
    // A counter that went back (the container restarted under the same name) counts from zero.
    let used = reading
        .cpu
        .checked_sub(cpu_then)
        .unwrap_or(reading.cpu)
        .as_nanos();
    u64::try_from(used * 1000 / wall).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{Launch, LaunchError, Running};
    use crate::readiness::ReadyCheck;
    use futures::future::BoxFuture;
    use plane_protocol::messages::ExecutorKind;

    fn reading(cpu_ms: u64, memory_bytes: u64) -> UsageReading {
        UsageReading {
            cpu: Duration::from_millis(cpu_ms),
            memory_bytes,
        }
    }

    #[test]
    fn cpu_is_the_rate_between_two_readings() {
        let then = Instant::now();
        let now = then + Duration::from_secs(2);
        // 1 s of CPU in 2 s: half a core.
        let half = cpu_millis(then, Duration::ZERO, now, reading(1000, 0));
        assert_eq!(half, Some(500));
        // Two cores busy for 2 s.
        let two = cpu_millis(then, Duration::from_secs(1), now, reading(5000, 0));
        assert_eq!(two, Some(2000));
        // A counter that went back, and no time passed.
        assert_eq!(
            cpu_millis(then, Duration::from_secs(9), now, reading(1000, 0)),
            Some(500)
        );
        assert_eq!(cpu_millis(then, Duration::ZERO, then, reading(1, 0)), None);
    }

    /// An executor whose backends each use 1 ms of CPU more per reading.
    struct Counting {
        reads: std::sync::atomic::AtomicU64,
    }

    impl Executor for Counting {
        fn kind(&self) -> ExecutorKind {
            ExecutorKind::Docker
        }
        fn port(&self) -> std::io::Result<u16> {
            Ok(1)
        }
        fn default_ready_check(&self) -> ReadyCheck {
            ReadyCheck::Accepts
        }
        fn launch(&self, _: Launch) -> BoxFuture<'_, Result<Box<dyn Running>, LaunchError>> {
            Box::pin(async { Err(LaunchError::NoImage) })
        }
        fn read_usage(
            &self,
            backends: Vec<BackendId>,
        ) -> BoxFuture<'_, Vec<(BackendId, UsageReading)>> {
            let n = self
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                backends
                    .into_iter()
                    .map(|b| (b, reading(n, 4096 + n)))
                    .collect()
            })
        }
    }

    #[tokio::test]
    async fn a_sample_needs_two_readings_and_is_sent_once() {
        let executor = Counting {
            reads: Default::default(),
        };
        let samples = UsageSamples::default();
        let mut sampler = Sampler::default();
        let b = BackendId::new("b1").expect("valid id");
        sampler.sample(&executor, vec![b.clone()], &samples).await;
        assert!(samples.take().is_empty(), "one reading makes no rate");
        tokio::time::sleep(Duration::from_millis(5)).await;
        sampler.sample(&executor, vec![b.clone()], &samples).await;
        let taken = samples.take();
        let usage = taken.get(&b).expect("a sample");
        assert_eq!(usage.memory_bytes, 4097);
        assert!(usage.at > 0);
        assert!(samples.take().is_empty(), "each sample is sent once");
        // An ended backend is forgotten: coming back, it starts over.
        sampler.sample(&executor, vec![], &samples).await;
        sampler.sample(&executor, vec![b.clone()], &samples).await;
        assert!(samples.take().is_empty());
    }
}
