//! The latest resource use of each backend, as its drone's heartbeats bring it. Kept in memory
//! only, by every controller (each hears every heartbeat): a sample every few seconds per backend
//! is not worth a store write, and a restarted controller has it again within one interval.

use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::Usage;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct UsageBook {
    latest: Mutex<HashMap<BackendId, Usage>>,
}

impl UsageBook {
    fn lock(&self) -> MutexGuard<'_, HashMap<BackendId, Usage>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what `drone` sampled of the backends that `runs_on` says it runs (a drone speaks
    /// for its own backends only), newer samples over older.
    pub fn record(
        &self,
        drone: &DroneId,
        samples: &BTreeMap<BackendId, Usage>,
        runs_on: impl Fn(&BackendId, &DroneId) -> bool,
    ) {
        if samples.is_empty() {
            return;
        }
        let mut latest = self.lock();
        for (backend, usage) in samples {
            if !runs_on(backend, drone) {
                continue;
            }
            let newer = latest.get(backend).is_none_or(|held| held.at <= usage.at);
            if newer {
                latest.insert(backend.clone(), *usage);
            }
        }
    }

    pub fn of(&self, backend: &BackendId) -> Option<Usage> {
        self.lock().get(backend).copied()
    }

    /// Forgets the backends `keep` refuses (those that ended).
    pub fn retain(&self, keep: impl Fn(&BackendId) -> bool) {
        self.lock().retain(|backend, _| keep(backend));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_millis: u64, at: u64) -> Usage {
        Usage {
            cpu_millis,
            memory_bytes: 1 << 20,
            at,
        }
    }

    #[test]
    fn keeps_the_newest_sample_of_a_drones_own_backends() {
        let book = UsageBook::default();
        let (d1, d2) = (DroneId::new("d1").unwrap(), DroneId::new("d2").unwrap());
        let (mine, theirs) = (BackendId::new("b1").unwrap(), BackendId::new("b2").unwrap());
        let on = |b: &BackendId, d: &DroneId| (b == &mine) == (d == &d1);
        book.record(&d1, &BTreeMap::from([(mine.clone(), usage(10, 5))]), on);
        // d1 speaking for d2's backend is not believed.
        book.record(&d1, &BTreeMap::from([(theirs.clone(), usage(1, 5))]), on);
        assert_eq!(book.of(&theirs), None);
        // An older sample arriving late does not replace a newer one.
        book.record(&d1, &BTreeMap::from([(mine.clone(), usage(99, 4))]), on);
        assert_eq!(book.of(&mine), Some(usage(10, 5)));
        book.record(&d2, &BTreeMap::from([(theirs.clone(), usage(7, 6))]), on);
        assert_eq!(book.of(&theirs), Some(usage(7, 6)));
        book.retain(|b| b != &mine);
        assert_eq!(book.of(&mine), None);
        assert!(book.of(&theirs).is_some());
    }
}
