//! Draining a drone for an upgrade or removal: it takes no new backends and keeps serving the
//! ones it runs until they are swept, or until an optional deadline, after which its drone
//! terminates the rest. The drone holds the drain (its heartbeat says so, and the scheduler
//! skips it); the controller records it at once so that the answer and every controller's
//! view show it without waiting for the next heartbeat. A drain is cancelled cleanly: the drone
//! takes backends again and terminates nothing more. A drone restarted while draining comes back
//! live.

use super::{ControlError, Controller, DroneNow};
use crate::state::Change;
use plane_protocol::ids::DroneId;
use plane_protocol::messages::{now_millis, Ack, DroneCommand, UnixMillis};
use tracing::info;

impl Controller {
    /// Starts (or, sent again, re-times) a drain of `drone`; `deadline_secs` from now on, what
    /// still runs is terminated.
    pub async fn drain(
        &self,
        drone: &DroneId,
        deadline_secs: Option<u64>,
    ) -> Result<DroneNow, ControlError> {
        let deadline = deadline_secs.map(|secs| now_millis() + secs.saturating_mul(1000));
        self.tell_drain(drone, DroneCommand::Drain { deadline_secs }, true, deadline)
            .await?;
        info!(%drone, ?deadline_secs, "drone draining");
        self.drone_now(drone)
    }

    /// Cancels a drain of `drone` (a drone that does not drain is left as it is).
    pub async fn undrain(&self, drone: &DroneId) -> Result<DroneNow, ControlError> {
        self.tell_drain(drone, DroneCommand::Undrain, false, None)
            .await?;
        info!(%drone, "drain cancelled");
        self.drone_now(drone)
    }

    /// Tells the drone, then records what it now does.
    async fn tell_drain(
        &self,
        drone: &DroneId,
        command: DroneCommand,
        draining: bool,
        deadline: Option<UnixMillis>,
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
        self.inner
            .state
            .update_drone(drone, |record| {
                if record.draining == draining && record.drain_deadline == deadline {
                    return Change::Keep(());
                }
                record.draining = draining;
                record.drain_deadline = deadline;
                Change::Write(())
            })
            .await?;
        Ok(())
    }

    /// One drone as heard now; [`ControlError::NoSuchDrone`] if the cluster does not know it.
    pub fn drone_now(&self, drone: &DroneId) -> Result<DroneNow, ControlError> {
        self.drones_now()
            .into_iter()
            .find(|d| &d.record.id == drone)
            .ok_or_else(|| ControlError::NoSuchDrone(drone.clone()))
    }
}
