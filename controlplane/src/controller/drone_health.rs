//! Keeping the cluster's picture of its drones true: heartbeats, drones that go silent, restart
//! or come back, and forgetting what ended long ago.
//!
//! A heartbeat is handled in the controller's loop from the view alone (no store access), and
//! only what needs a write or a command goes on in a task of its own. Each heartbeat also lists
//! what the drone runs (or still has to report on), and is reconciled with the cluster state:
//! a listed backend the cluster holds ended (or does not know) is stopped on the drone; a backend
//! the cluster holds live on the drone that a later heartbeat no longer lists is ended. Together
//! with compare-and-set on drone records, that makes a heartbeat racing a loss decision harmless:
//! whichever lands first, no backend stays running that the cluster holds lost.

use super::Controller;
use crate::limits::UNREPORTED_GRACE_PERIODS;
use crate::state::{Change, StateError};
use plane_bus::Message;
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendState, DroneCommand, Heartbeat, TerminationReason,
};
use plane_protocol::records::DroneRecord;
use std::collections::HashSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a heartbeat says must change in the drone's record.
#[derive(Debug, PartialEq, Eq)]
enum RecordChange {
    None,
    /// First heard of.
    Register,
    /// A new process under the same id: whatever the earlier one ran and it did not take over
    /// is gone.
    Restarted,
    /// Declared lost, and beating again (the same process).
    Returned,
    /// Capacity, executor, draining, the proxy's address or the advertised IP changed.
    Updated,
}

/// What a heartbeat's list of backends disagrees with in the cluster state.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Disagreement {
    /// Listed, but ended in the cluster, or given to another drone: the drone must stop them.
    pub(crate) stop: Vec<BackendId>,
    /// Listed, and not in the view: stopped unless the store has them live on this drone.
    pub(crate) unknown: Vec<BackendId>,
    /// Live on this drone in the cluster, reported by this drone process before the heartbeat
    /// was sent, and not listed: the drone no longer runs them and has nothing left to report.
    pub(crate) gone: Vec<BackendId>,
}

impl Disagreement {
    fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.unknown.is_empty() && self.gone.is_empty()
    }
}

impl Controller {
    pub(super) fn on_heartbeat(&self, msg: &Message) {
        match msg.decode::<Heartbeat>() {
            Ok(heartbeat) if self.sent_by(msg, &heartbeat.drone) => {
                self.handle_heartbeat(heartbeat)
            }
            Ok(heartbeat) => {
                warn!(subject = %msg.subject, drone = %heartbeat.drone, "dropping a heartbeat sent under another drone's subject")
            }
            Err(error) => warn!(error = %error_chain(&error), "dropping malformed heartbeat"),
        }
    }

    /// Whether `msg` came in under `drone`'s own subject: the only claim to be that drone that
    /// NATS permissions can vouch for.
    pub(super) fn sent_by(&self, msg: &Message, drone: &DroneId) -> bool {
        self.inner.subjects.drone_of(&msg.subject) == Some(drone.as_str())
    }

    /// Records that the drone was heard, and starts whatever the heartbeat calls for.
    pub fn handle_heartbeat(&self, heartbeat: Heartbeat) {
        self.inner.hearing.heard(&heartbeat, Instant::now());
        let view = self.view();
        self.inner
            .usage
            .record(&heartbeat.drone, &heartbeat.usage, |backend, drone| {
                view.backend(backend)
                    .is_some_and(|held| &held.record.drone == drone)
            });
        let change = match self.view().drone(&heartbeat.drone) {
            None => RecordChange::Register,
            Some(held) => record_change(&held.record, &heartbeat),
        };
        let disagreement = self.disagreement(&heartbeat);
        if change == RecordChange::None && disagreement.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.update_drone_record(&heartbeat, change).await {
                warn!(error = %error_chain(&error), drone = %heartbeat.drone, "could not record heartbeat");
            }
            this.settle(&heartbeat, disagreement).await;
        });
    }

    /// Compares what the heartbeat lists with what the view holds for its drone.
    pub(crate) fn disagreement(&self, heartbeat: &Heartbeat) -> Disagreement {
        let view = self.view();
        let mut out = Disagreement::default();
        for id in &heartbeat.backends {
            match view.backend(id) {
                None => out.unknown.push(id.clone()),
                Some(held)
                    if held.record.is_terminated() || held.record.drone != heartbeat.drone =>
                {
                    out.stop.push(id.clone())
                }
                Some(_) => {}
            }
        }
        let held = view.live_backends_of(&heartbeat.drone);
        if !held.is_empty() {
            let listed: HashSet<&BackendId> = heartbeat.backends.iter().collect();
            for record in held {
                let reported_by_this_process_before = record.last_seq > 0
                    && record.drone_started_at == Some(heartbeat.started_at)
                    && record.reported_at.is_some_and(|at| at < heartbeat.at);
                if reported_by_this_process_before && !listed.contains(&record.id) {
                    out.gone.push(record.id.clone());
                }
            }
        }
        out
    }

    /// Acts on a disagreement: stops on the drone what the cluster holds ended, ends in the
    /// cluster what the drone no longer runs.
    async fn settle(&self, heartbeat: &Heartbeat, disagreement: Disagreement) {
        let drone = &heartbeat.drone;
        let mut stop = disagreement.stop;
        for id in disagreement.unknown {
            // Perhaps created by another controller a moment ago: ask the store.
            match self.inner.state.backend(&id).await {
                Ok(Some(held)) if !held.record.is_terminated() && &held.record.drone == drone => {}
                Ok(_) => stop.push(id),
                Err(error) => {
                    warn!(error = %error_chain(&error), backend = %id, "cannot read backend record")
                }
            }
        }
        for id in stop {
            self.tell_drone_to_stop(drone, &id).await;
        }
        for id in disagreement.gone {
            warn!(backend = %id, %drone, "drone no longer runs backend; ending it");
            if let Err(error) = self
                .end_here(&id, TerminationReason::Lost, "its drone no longer runs it")
                .await
            {
                warn!(error = %error_chain(&error), backend = %id, "could not end backend");
            }
        }
    }

    /// Writes what the heartbeat changes in the drone's record (compare-and-set), and ends the
    /// backends of an earlier process of a restarted drone.
    async fn update_drone_record(
        &self,
        heartbeat: &Heartbeat,
        change: RecordChange,
    ) -> Result<(), StateError> {
        let state = &self.inner.state;
        let drone = &heartbeat.drone;
        let fresh = DroneRecord::from_heartbeat(heartbeat, now_millis());
        let mut restarted = change == RecordChange::Restarted;
        match change {
            RecordChange::None => return Ok(()),
            RecordChange::Register => match state.create_drone(fresh.clone()).await {
                Ok(()) => info!(%drone, "drone registered"),
                // Another controller registered it first: compare with that record instead.
                Err(StateError::Kv(plane_bus::KvError::AlreadyExists { .. })) => {}
                Err(error) => return Err(error),
            },
            _ => {}
        }
        let outcome = state
            .update_drone(drone, |record| {
                let change = record_change(record, heartbeat);
                if change == RecordChange::None {
                    return Change::Keep(change);
                }
                *record = fresh.clone();
                Change::Write(change)
            })
            .await?;
        match outcome {
            Some(RecordChange::Restarted) => {
                warn!(%drone, "drone restarted; ending the earlier backends it did not take over");
                restarted = true;
            }
            Some(RecordChange::Returned) => {
                warn!(%drone, "a lost drone is back; stopping the backends given up on")
            }
            _ => {}
        }
        if restarted {
            self.end_earlier_process(heartbeat).await?;
        }
        Ok(())
    }

    /// Ends the backends a restarted drone's earlier process reported and the new one does not
    /// list: it took over those it lists (see `recovery`); its own, and those not reported yet,
    /// are not affected.
    async fn end_earlier_process(&self, heartbeat: &Heartbeat) -> Result<(), StateError> {
        let (drone, current) = (&heartbeat.drone, heartbeat.started_at);
        for backend in self.view().live_backends_of(drone) {
            if backend.drone_started_at.is_some_and(|p| p != current)
                && !heartbeat.backends.contains(&backend.id)
            {
                self.end_here(&backend.id, TerminationReason::Lost, "its drone restarted")
                    .await?;
            }
        }
        Ok(())
    }

    /// Best effort: the drone may be gone again.
    pub(super) async fn tell_drone_to_stop(&self, drone: &DroneId, backend: &BackendId) {
        let command = DroneCommand::Terminate {
            backend: backend.clone(),
        };
        match self.command_drone(drone, &command).await {
            Ok(Ack::Accepted) => {
                info!(%drone, %backend, "asked drone to stop a backend the cluster holds ended")
            }
            Ok(Ack::Rejected { error }) => {
                warn!(%drone, %backend, %error, "drone refused to stop a backend")
            }
            Err(error) => {
                debug!(%drone, %backend, error = %error_chain(&error), "drone did not answer")
            }
        }
    }

    /// Forgets terminated backends and lost drones past retention, and ends backends whose
    /// drone never reported them. Reads the view; writes only what it changes.
    pub(super) async fn collect_garbage(&self) -> Result<(), StateError> {
        let now = now_millis();
        let retention = self.inner.config.retention.as_millis() as u64;
        let unreported =
            (self.inner.config.drone_grace * UNREPORTED_GRACE_PERIODS).as_millis() as u64;
        let state = &self.inner.state;
        self.view().prune_deleted();
        for backend in self.view().backends() {
            if backend.is_terminated() && now.saturating_sub(backend.updated_at) > retention {
                debug!(backend = %backend.id, "forgetting terminated backend");
                state.delete_backend(&backend.id).await?;
            } else if backend.state == BackendState::Scheduled
                && backend.last_seq == 0
                && now.saturating_sub(backend.created_at) > unreported
            {
                warn!(backend = %backend.id, drone = %backend.drone, "drone never reported backend; ending it");
                self.end_here(
                    &backend.id,
                    TerminationReason::Lost,
                    "its drone never reported it",
                )
                .await?;
            }
        }
        self.touch_running_keys().await;
        let view = self.view();
        self.inner.usage.retain(|backend| {
            view.backend(backend)
                .is_some_and(|held| !held.record.is_terminated())
        });
        for held in self.view().drones() {
            let drone = &held.record;
            if drone.lost && now.saturating_sub(drone.lost_at.unwrap_or(0)) > retention {
                debug!(drone = %drone.id, "forgetting lost drone");
                state.delete_drone(&drone.id).await?;
                self.inner.hearing.forget(&drone.id);
            }
        }
        Ok(())
    }

    /// Marks drones silent past the grace as lost, and ends the live backends of lost drones:
    /// [`Controller::silent_drones`], then [`Controller::declare_lost`].
    pub async fn declare_lost_drones(&self) -> Result<(), StateError> {
        let silent = self.silent_drones();
        self.declare_lost(&silent).await
    }

    /// The drones not yet marked lost that have been silent past the grace (none while the bus
    /// connection is down: that silence is the controller's own), plus those marked lost that
    /// still have live backends (a controller died between marking one and ending them).
    pub fn silent_drones(&self) -> Vec<DroneId> {
        let hearing = &self.inner.hearing;
        if !hearing.can_judge() {
            return Vec::new();
        }
        let now = Instant::now();
        self.view()
            .drones()
            .into_iter()
            .filter(|held| {
                let drone = &held.record;
                if drone.lost {
                    !self.view().live_backends_of(&drone.id).is_empty()
                } else {
                    !hearing.status(drone, now).live
                }
            })
            .map(|held| held.record.id.clone())
            .collect()
    }

    /// Marks `drones` lost and ends their live backends. Each is judged again on the record it
    /// writes (compare-and-set) at the moment of writing: one heard from since it was found
    /// silent is left alone.
    pub async fn declare_lost(&self, drones: &[DroneId]) -> Result<(), StateError> {
        let hearing = &self.inner.hearing;
        let state = &self.inner.state;
        for id in drones {
            let marked = state
                .update_drone(id, |d| {
                    if d.lost {
                        Change::Keep(true)
                    } else if !hearing.can_judge() || hearing.status(d, Instant::now()).live {
                        Change::Keep(false)
                    } else {
                        d.lost = true;
                        d.lost_at = Some(now_millis());
                        Change::Write(true)
                    }
                })
                .await?;
            if marked != Some(true) {
                continue;
            }
            warn!(drone = %id, "drone lost: silent past the grace; ending its backends");
            for backend in self.view().live_backends_of(id) {
                warn!(drone = %id, backend = %backend.id, "drone stopped beating; its backend is lost");
                self.end_here(
                    &backend.id,
                    TerminationReason::Lost,
                    "its drone stopped beating",
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// What `heartbeat` changes in `record`.
fn record_change(record: &DroneRecord, heartbeat: &Heartbeat) -> RecordChange {
    if record.started_at != heartbeat.started_at {
        RecordChange::Restarted
    } else if record.lost {
        RecordChange::Returned
    } else if record.capacity != heartbeat.capacity
        || record.executor != heartbeat.executor
        || record.draining != heartbeat.draining
        || record.drain_deadline != heartbeat.drain_deadline
        || record.proxy_scheme != heartbeat.proxy_scheme
        || record.proxy_port != heartbeat.proxy_port
        || record.ip != heartbeat.ip
        || record.certificate != heartbeat.certificate
    {
        RecordChange::Updated
    } else {
        RecordChange::None
    }
}
