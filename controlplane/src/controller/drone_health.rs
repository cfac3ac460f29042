//! Keeping the cluster's picture of its drones true: heartbeats, drones that go silent, restart
//! or come back, and forgetting what ended long ago. Every path ends backends in the cluster
//! state only where the drone cannot be asked, and asks the drone wherever it can.

use super::Controller;
use crate::limits::UNREPORTED_GRACE_PERIODS;
use crate::state::{Change, StateError};
use plane_bus::Message;
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendState, DroneCommand, Heartbeat, TerminationReason, UnixMillis,
};
use plane_protocol::records::DroneRecord;
use tracing::{debug, info, warn};

impl Controller {
    pub(super) async fn on_heartbeat(&self, msg: &Message) {
        let heartbeat: Heartbeat = match msg.decode() {
            Ok(hb) => hb,
            Err(error) => {
                warn!(error = %error_chain(&error), "dropping malformed heartbeat");
                return;
            }
        };
        let record = DroneRecord::from_heartbeat(&heartbeat, now_millis());
        let previous = self.inner.state.drone(&heartbeat.drone).await;
        if let Err(error) = self.inner.state.put_drone(&record).await {
            warn!(error = %error_chain(&error), drone = %heartbeat.drone, "could not record heartbeat");
            return;
        }
        match previous {
            Ok(Some(previous)) if previous.lost && previous.started_at == heartbeat.started_at => {
                warn!(drone = %heartbeat.drone, "a lost drone is back; stopping the backends given up on");
                self.stop_abandoned(&heartbeat).await;
            }
            Ok(Some(previous)) if previous.started_at != heartbeat.started_at => {
                warn!(drone = %heartbeat.drone, "drone restarted; its earlier backends are gone");
                if let Err(error) = self
                    .end_backends_of(
                        &heartbeat.drone,
                        Some(heartbeat.started_at),
                        "its drone restarted",
                    )
                    .await
                {
                    warn!(error = %error_chain(&error), drone = %heartbeat.drone, "could not end a restarted drone's backends");
                }
            }
            Ok(_) => {}
            Err(error) => {
                warn!(error = %error_chain(&error), drone = %heartbeat.drone, "could not read drone record")
            }
        }
    }

    /// Tells a drone that came back to stop what it runs that the cluster no longer knows as
    /// running on it (ended while the drone was lost, or never recorded).
    pub(super) async fn stop_abandoned(&self, heartbeat: &Heartbeat) {
        for backend in &heartbeat.backends {
            let abandoned = match self.inner.state.backend(backend).await {
                Ok(Some(record)) => record.is_terminated() || record.drone != heartbeat.drone,
                Ok(None) => true,
                Err(error) => {
                    warn!(error = %error_chain(&error), %backend, "cannot read backend record");
                    continue;
                }
            };
            if abandoned {
                self.tell_drone_to_stop(&heartbeat.drone, backend).await;
            }
        }
    }

    /// Best effort: the drone may be gone again.
    pub(super) async fn tell_drone_to_stop(&self, drone: &DroneId, backend: &BackendId) {
        let command = DroneCommand::Terminate {
            backend: backend.clone(),
        };
        match self.command_drone(drone, &command).await {
            Ok(Ack::Accepted) => {
                info!(%drone, %backend, "asked drone to stop an abandoned backend")
            }
            Ok(Ack::Rejected { error }) => {
                warn!(%drone, %backend, %error, "drone refused to stop a backend")
            }
            Err(error) => {
                debug!(%drone, %backend, error = %error_chain(&error), "drone did not answer")
            }
        }
    }

    /// Marks the drone's unterminated backends `terminated/lost`. With `except_process`, only
    /// those an earlier process of the drone reported (a restarted drone's new backends, and
    /// those not reported yet, are not affected).
    pub(super) async fn end_backends_of(
        &self,
        drone: &DroneId,
        except_process: Option<UnixMillis>,
        why: &str,
    ) -> Result<(), StateError> {
        for backend in self.inner.state.backends().await? {
            let earlier_process = match except_process {
                None => true,
                Some(current) => backend.drone_started_at.is_some_and(|p| p != current),
            };
            if &backend.drone == drone && !backend.is_terminated() && earlier_process {
                self.end_here(&backend.id, TerminationReason::Lost, why)
                    .await?;
            }
        }
        Ok(())
    }

    /// Forgets terminated backends and lost drones past retention, and ends backends whose
    /// drone never reported them.
    pub(super) async fn collect_garbage(&self) -> Result<(), StateError> {
        let now = now_millis();
        let retention = self.inner.config.retention.as_millis() as u64;
        let unreported =
            (self.inner.config.drone_grace * UNREPORTED_GRACE_PERIODS).as_millis() as u64;
        let state = &self.inner.state;
        for backend in state.backends().await? {
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
        for drone in state.drones().await? {
            if drone.lost && now.saturating_sub(drone.last_heartbeat) > retention {
                debug!(drone = %drone.id, "forgetting lost drone");
                state.delete_drone(&drone.id).await?;
            }
        }
        Ok(())
    }

    /// Marks drones that stopped beating as lost, and their backends `terminated/lost`.
    pub(super) async fn declare_lost_drones(&self, recheck_lost: bool) -> Result<(), StateError> {
        let liveness = self.liveness();
        let state = &self.inner.state;
        let mut newly_lost = Vec::new();
        for drone in state.drones().await? {
            if drone.lost {
                // A controller that died (or failed) between marking a drone and ending its
                // backends left work behind: the first check after a start, or after a
                // failure, finishes it.
                if recheck_lost {
                    newly_lost.push(drone.id);
                }
                continue;
            }
            if drone.is_live(&liveness) {
                continue;
            }
            let marked = state
                .update_drone(&drone.id, |d| {
                    if d.lost || d.is_live(&liveness) {
                        Change::Keep(false)
                    } else {
                        d.lost = true;
                        Change::Write(true)
                    }
                })
                .await?;
            if marked == Some(true) {
                warn!(drone = %drone.id, "drone stopped beating; declaring it lost");
                newly_lost.push(drone.id);
            }
        }
        for drone in &newly_lost {
            self.end_backends_of(drone, None, "its drone stopped beating")
                .await?;
        }
        Ok(())
    }
}
