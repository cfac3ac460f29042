//! A drone process that starts and finds backends that outlived its predecessor (containers do)
//! asks which the cluster still wants, before its first heartbeat. The answer reconciles the
//! drone with the cluster state instead of ending everything the earlier process ran: what is
//! still live on that drone is adopted, what another live drone runs is left to it, and the rest
//! (unknown, ended, given up on, a lost drone's) the drone removes. What the earlier process ran
//! and nothing survived of is ended here, as lost.

use super::Controller;
use crate::state::StateError;
use plane_bus::Message;
use plane_protocol::error_chain;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{Adoption, Recovery, RecoveryAnswer, TerminationReason};
use std::collections::HashSet;
use tracing::{debug, info, warn};

impl Controller {
    pub(super) async fn on_recovery(&self, msg: Message) {
        let recovery = match msg.decode::<Recovery>() {
            Ok(recovery) if self.sent_by(&msg, &recovery.drone) => recovery,
            Ok(recovery) => {
                warn!(subject = %msg.subject, drone = %recovery.drone, "ignoring a recovery sent under another drone's subject");
                return;
            }
            Err(error) => {
                warn!(error = %error_chain(&error), "ignoring a malformed recovery request");
                return;
            }
        };
        match self.recover(&recovery).await {
            Ok(answer) => {
                if let Err(error) = self.inner.bus.respond_json(&msg, &answer).await {
                    debug!(error = %error_chain(&error), "could not answer a recovery request");
                }
            }
            // Not answered: the drone asks again.
            Err(error) => {
                warn!(error = %error_chain(&error), drone = %recovery.drone, "could not decide on a drone's survivors")
            }
        }
    }

    /// Decides on what a starting drone found (see the module docs). Reads the store, not the
    /// view, for the backends found: a decision to remove must not rest on a view that lags.
    pub async fn recover(&self, recovery: &Recovery) -> Result<RecoveryAnswer, StateError> {
        let drone = &recovery.drone;
        let mut answer = RecoveryAnswer::default();
        let mut survived: HashSet<&BackendId> = HashSet::new();
        for found in &recovery.found {
            if &found.drone != drone {
                let live = self
                    .view()
                    .drone(&found.drone)
                    .is_some_and(|d| !d.record.lost);
                if live {
                    answer.leave.push(found.backend.clone());
                }
                continue;
            }
            survived.insert(&found.backend);
            match self.inner.state.backend(&found.backend).await? {
                Some(held) if !held.record.is_terminated() && &held.record.drone == drone => {
                    let record = &held.record;
                    answer.adopt.push(Adoption {
                        backend: record.id.clone(),
                        spec: record.spec.clone(),
                        state: record.state,
                        last_seq: record.last_seq,
                    });
                }
                _ => {}
            }
        }
        for record in self.view().live_backends_of(drone) {
            let earlier = record
                .drone_started_at
                .is_some_and(|p| p != recovery.started_at);
            if earlier && !survived.contains(&record.id) {
                warn!(backend = %record.id, %drone, "nothing of the backend survived its drone's restart; ending it");
                self.end_here(&record.id, TerminationReason::Lost, "its drone restarted")
                    .await?;
            }
        }
        info!(%drone, found = recovery.found.len(), adopt = answer.adopt.len(), leave = answer.leave.len(),
            "drone recovered what outlived its earlier process");
        Ok(answer)
    }
}
