//! Container exits, from the engine's events stream rather than by polling: one stream per
//! executor, filtered to this drone's containers, each `die` event delivered to whoever waits
//! for that container. The stream starts `since` the executor started, so nothing that happened
//! between connecting and subscribing is missed; when it breaks (the engine restarted) it is
//! opened again from the last event seen, and every awaited container is inspected once, for
//! exits that fell in the gap.

use crate::docker::{labels, Engine};
use crate::executor::Exit;
use crate::limits::DOCKER_EVENTS_RETRY;
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

/// Where exits are delivered; the watching task ends when this is dropped.
pub(crate) struct Exits {
    waiting: Arc<Mutex<HashMap<String, watch::Sender<Option<Exit>>>>>,
    _stop: DropGuard,
}

type Waiting = Arc<Mutex<HashMap<String, watch::Sender<Option<Exit>>>>>;

fn lock(waiting: &Waiting) -> MutexGuard<'_, HashMap<String, watch::Sender<Option<Exit>>>> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exits {
    pub(crate) fn start(engine: Arc<Engine>) -> Exits {
        let waiting: Waiting = Arc::default();
        let stop = CancellationToken::new();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tokio::spawn(watch_events(engine, waiting.clone(), stop.clone(), since));
        Exits {
            waiting,
            _stop: stop.drop_guard(),
        }
    }

    /// Starts waiting for the container `name`; must come before it is started.
    pub(crate) fn register(&self, name: &str) -> watch::Receiver<Option<Exit>> {
        let (tx, rx) = watch::channel(None);
        lock(&self.waiting).insert(name.to_string(), tx);
        rx
    }

    pub(crate) fn forget(&self, name: &str) {
        lock(&self.waiting).remove(name);
    }
}

async fn watch_events(
    engine: Arc<Engine>,
    waiting: Waiting,
    stop: CancellationToken,
    mut since: i64,
) {
    let drone_filter = format!("{}={}", labels::DRONE, engine.drone);
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["die"]),
        ("label", vec![drone_filter.as_str()]),
    ]);
    loop {
        let options = EventsOptionsBuilder::default()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let mut events = engine.docker.events(Some(options));
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = stop.cancelled() => return,
            };
            match event {
                Some(Ok(event)) => {
                    since = event.time.unwrap_or(since).max(since);
                    let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                    if let Some(name) = attributes.get("name") {
                        let code = attributes.get("exitCode").and_then(|c| c.parse().ok());
                        died(&engine, &waiting, name, code).await;
                    }
                }
                Some(Err(error)) => {
                    warn!(%error, "Docker events stream failed; opening it again");
                    break;
                }
                None => {
                    warn!("Docker events stream ended; opening it again");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DOCKER_EVENTS_RETRY) => {}
            () = stop.cancelled() => return,
        }
        // Exits that happened while the stream was down.
        let names: Vec<String> = lock(&waiting).keys().cloned().collect();
        for name in names {
            if let Some(exit) = engine.exit_of(&name).await {
                deliver(&waiting, &name, exit);
            }
        }
    }
}

/// A `die` event: the container's exit as the engine recorded it (code, OOM kill).
async fn died(engine: &Engine, waiting: &Waiting, name: &str, code: Option<i32>) {
    if !lock(waiting).contains_key(name) {
        return;
    }
    let exit = engine.exit_of(name).await.unwrap_or(Exit {
        code,
        signal: None,
        oom_killed: false,
    });
    debug!(container = name, exit = %exit.describe(), "container died");
    deliver(waiting, name, exit);
}

fn deliver(waiting: &Waiting, name: &str, exit: Exit) {
    if let Some(tx) = lock(waiting).get(name) {
        tx.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit);
                true
            } else {
                false
            }
        });
    }
}
