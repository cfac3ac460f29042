//! An in-memory KV bucket with JetStream's semantics: one revision counter per bucket (like a
//! stream sequence, starting at 1) shared by puts and deletes, delete markers that keep a key's
//! last revision (so compare-and-set sees them, and `create` may reuse a deleted key), and
//! watchers that see changes made after they started. A bucket opened with a maximum age
//! drops a value that old as JetStream does: it reads as never written, with no watch event.

use super::kv::{KvChange, KvEntry};
use super::{subject, KvError};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A bucket with a maximum age drops its aged-out values once per this many writes.
const PRUNE_EVERY: u64 = 1024;

/// One named bucket, shared by every clone of the in-memory bus that opened it.
pub(crate) struct MemoryBucket {
    name: String,
    /// Values older than this read as never written.
    max_age: Option<Duration>,
    state: Mutex<BucketState>,
}

#[derive(Default)]
struct BucketState {
    closed: bool,
    /// The last revision handed out in this bucket; 0 before the first write.
    revision: u64,
    slots: BTreeMap<String, Slot>,
    next_watcher: u64,
    watchers: Vec<Watcher>,
}

/// The latest state of a key: a value, or a delete marker (`None`).
struct Slot {
    value: Option<Bytes>,
    revision: u64,
    written: Instant,
}

struct Watcher {
    id: u64,
    pattern: String,
    // Unbounded like a JetStream consumer with flow control: a watcher never misses a change.
    tx: mpsc::UnboundedSender<KvChange>,
}

/// What a write requires of the key's current state.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    /// Anything (put, delete).
    Any,
    /// No live value: absent or deleted (create).
    NotLive,
    /// The key's latest revision, delete markers included, is this one; 0 means never written
    /// (update; NATS' expected-last-subject-sequence).
    Revision(u64),
}

impl MemoryBucket {
    pub(crate) fn new(name: &str, max_age: Option<Duration>) -> Self {
        Self {
            name: name.to_owned(),
            max_age,
            state: Mutex::default(),
        }
    }

    /// The key's slot, unless it has aged out.
    fn slot<'s>(&self, state: &'s BucketState, key: &str) -> Option<&'s Slot> {
        state.slots.get(key).filter(|slot| self.fresh(slot))
    }

    fn fresh(&self, slot: &Slot) -> bool {
        self.max_age
            .is_none_or(|max_age| slot.written.elapsed() < max_age)
    }

    fn lock(&self) -> Result<MutexGuard<'_, BucketState>, KvError> {
        // Nothing under this lock can panic, so a poisoned lock still holds a consistent state.
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Err(KvError::Closed {
                bucket: self.name.clone(),
            });
        }
        Ok(state)
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let state = self.lock()?;
        Ok(self.slot(&state, key).and_then(|slot| live(key, slot)))
    }

    /// Writes `value` (`None`: a delete marker) if `expect` holds, and returns the new revision.
    pub(crate) fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        expect: Expect,
    ) -> Result<u64, KvError> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let current = self.slot(state, key);
        match expect {
            Expect::Any => {}
            Expect::NotLive => {
                if current.is_some_and(|slot| slot.value.is_some()) {
                    return Err(KvError::AlreadyExists {
                        key: key.to_owned(),
                    });
                }
            }
            Expect::Revision(revision) => {
                if current.map_or(0, |slot| slot.revision) != revision {
                    return Err(KvError::WrongRevision {
                        key: key.to_owned(),
                    });
                }
            }
        }
        state.revision += 1;
        let revision = state.revision;
        let change = match &value {
            Some(value) => KvChange::Put(KvEntry {
                key: key.to_owned(),
                value: value.clone(),
                revision,
            }),
            None => KvChange::Delete {
                key: key.to_owned(),
                revision,
            },
        };
        state.slots.insert(
            key.to_owned(),
            Slot {
                value,
                revision,
                written: Instant::now(),
            },
        );
        if let Some(max_age) = self.max_age.filter(|_| revision % PRUNE_EVERY == 0) {
            // Aged-out values are dropped every so many writes: the bucket holds about what one
            // age's writes left, at a cost spread over the writes.
            state
                .slots
                .retain(|_, slot| slot.written.elapsed() < max_age);
        }
        state
            .watchers
            .retain(|w| !subject::matches(&w.pattern, key) || w.tx.send(change.clone()).is_ok());
        Ok(revision)
    }

    pub(crate) fn entries(&self) -> Result<Vec<KvEntry>, KvError> {
        let state = self.lock()?;
        Ok(state
            .slots
            .iter()
            .filter(|(_, slot)| self.fresh(slot))
            .filter_map(|(key, slot)| live(key, slot))
            .collect())
    }

    pub(crate) fn watch(self: &Arc<Self>, pattern: &str) -> Result<MemoryWatch, KvError> {
        let mut state = self.lock()?;
        state.next_watcher += 1;
        let id = state.next_watcher;
        let (tx, rx) = mpsc::unbounded_channel();
        state.watchers.push(Watcher {
            id,
            pattern: pattern.to_owned(),
            tx,
        });
        Ok(MemoryWatch {
            rx,
            id,
            bucket: Arc::downgrade(self),
        })
    }

    /// Ends every watch (after the changes it already holds) and fails later operations.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        state.watchers.clear();
    }
}

fn live(key: &str, slot: &Slot) -> Option<KvEntry> {
    slot.value.as_ref().map(|value| KvEntry {
        key: key.to_owned(),
        value: value.clone(),
        revision: slot.revision,
    })
}

/// The changes seen by one watch; stops watching when dropped.
pub(crate) struct MemoryWatch {
    rx: mpsc::UnboundedReceiver<KvChange>,
    id: u64,
    bucket: Weak<MemoryBucket>,
}

impl MemoryWatch {
    pub(crate) async fn next(&mut self) -> Option<KvChange> {
        self.rx.recv().await
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket.upgrade() {
            let mut state = bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.watchers.retain(|w| w.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_watches_are_removed() {
        let bucket = Arc::new(MemoryBucket::new("b", None));
        let watch = bucket.watch(">").unwrap();
        assert_eq!(bucket.state.lock().unwrap().watchers.len(), 1);
        drop(watch);
        assert_eq!(bucket.state.lock().unwrap().watchers.len(), 0);
    }

    #[test]
    fn revisions_count_per_bucket_and_include_deletes() {
        let bucket = MemoryBucket::new("b", None);
        assert_eq!(bucket.write("a", Some("1".into()), Expect::Any).unwrap(), 1);
        assert_eq!(bucket.write("b", Some("2".into()), Expect::Any).unwrap(), 2);
        assert_eq!(bucket.write("a", None, Expect::Any).unwrap(), 3);
        // Compare-and-set sees the delete marker's revision.
        assert!(matches!(
            bucket.write("a", Some("x".into()), Expect::Revision(1)),
            Err(KvError::WrongRevision { .. })
        ));
        assert_eq!(
            bucket
                .write("a", Some("x".into()), Expect::Revision(3))
                .unwrap(),
            4
        );
        // Revision 0 means "never written".
        assert_eq!(
            bucket
                .write("c", Some("y".into()), Expect::Revision(0))
                .unwrap(),
            5
        );
    }
}
