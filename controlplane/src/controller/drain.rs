//! Draining a drone for an upgrade or removal: it takes no new backends and keeps serving the
//! ones it runs until they are swept, or until an optional deadline, after which its drone
//! terminates the rest. The drone holds the drain (its heartbeat says so, and the scheduler
//! skips it); the controller answers once its view shows what the drone's heartbeat says. A drain is cancelled cleanly: the drone
//! takes backends again and terminates nothing more. A drone restarted while draining comes back
//! live.

use super::{ControlError, Controller, DroneNow};
use crate::limits::{DRAIN_SHOWN_POLL, DRAIN_SHOWN_TIMEOUT};
use plane_protocol::ids::DroneId;
use plane_protocol::messages::{Ack, DroneCommand};
use tracing::{info, warn};

impl Controller {
    /// Starts (or, sent again, re-times) a drain of `drone`; `deadline_secs` from now on, what
    /// still runs is terminated.
    pub async fn drain(
        &self,
        drone: &DroneId,
        deadline_secs: Option<u64>,
    ) -> Result<DroneNow, ControlError> {
        self.tell_drain(drone, DroneCommand::Drain { deadline_secs }, true)
            .await?;
        info!(%drone, ?deadline_secs, "drone draining");
        self.drone_now(drone)
    }

    /// Cancels a drain of `drone` (a drone that does not drain is left as it is).
    pub async fn undrain(&self, drone: &DroneId) -> Result<DroneNow, ControlError> {
        self.tell_drain(drone, DroneCommand::Undrain, false).await?;
        info!(%drone, "drain cancelled");
        self.drone_now(drone)
    }

    /// Tells the drone, then waits (bounded) until this controller's view shows what the drone
    /// now does. The drone's heartbeats are the one source of its drain state: a record written
    /// here could be overwritten by a heartbeat sent just before the drone got the command.
    async fn tell_drain(
        &self,
        drone: &DroneId,
        command: DroneCommand,
        draining: bool,
    ) -> Result<(), ControlError> {
        let now = self.drone_now(drone)?;
        if !now.status.live {
            return Err(ControlError::DroneLost(drone.clone()));
        }
        match self.command_drone(drone, &command).await {
            Ok(Ack::Accepted) => {}
            Ok(Ack::Rejected { error }) => {
                return Err(ControlError::DroneRefused {
                    drone: drone.clone(),
                    error,
                })
            }
            Err(source) => {
                return Err(ControlError::DroneUnreachable {
                    drone: drone.clone(),
                    source,
                })
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_SHOWN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let shown = self
                .view()
                .drone(drone)
                .is_some_and(|held| held.record.draining == draining);
            if shown {
                return Ok(());
            }
            tokio::time::sleep(DRAIN_SHOWN_POLL).await;
        }
        warn!(%drone, draining, "the drone took the command but its heartbeat does not say so yet");
        Ok(())
    }

    /// One drone as heard now; [`ControlError::NoSuchDrone`] if the cluster does not know it.
    pub fn drone_now(&self, drone: &DroneId) -> Result<DroneNow, ControlError> {
        let held = self
            .view()
            .drone(drone)
            .ok_or_else(|| ControlError::NoSuchDrone(drone.clone()))?;
        Ok(DroneNow {
            status: self
                .inner
                .hearing
                .status(&held.record, tokio::time::Instant::now()),
            record: held.record,
        })
    }
}
