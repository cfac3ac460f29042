//! The drone's half of waking on request: when its proxy gets a request for a key's host
//! (`k-{label}.{cluster}`) that nothing routes, it asks a controller to wake the key here, and
//! routes the key's host to the backend the controller names (started on this drone, whose
//! loopback port only this proxy can reach). Concurrent requests for one key share one ask, so
//! a burst starts one backend. Only a backend this drone runs is ever routed: the controller
//! names it, and the alias is made to a route the drone itself created.

use crate::limits::WAKE_TIMEOUT;
use futures::future::{BoxFuture, FutureExt, Shared};
use plane_bus::Bus;
use plane_dataplane::{RouteTable, TokenDigest, Wake, WakeRefusal, Waking};
use plane_protocol::error_chain;
use plane_protocol::ids::DroneId;
use plane_protocol::keys::{is_label, WakeAnswer, WakeRequest, KEY_HOST_PREFIX};
use plane_protocol::subjects::Subjects;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

type Ask = Shared<BoxFuture<'static, Result<(), WakeRefusal>>>;

/// Wakes keys for the drone's proxy; installed in its route table.
pub struct KeyWaker {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    subject: String,
    table: RouteTable,
    /// The asks in flight, by host label and the token's digest.
    asking: Mutex<HashMap<(String, Option<String>), Ask>>,
}

impl KeyWaker {
    pub fn new(bus: Bus, subjects: &Subjects, drone: &DroneId, table: RouteTable) -> Self {
        KeyWaker {
            inner: Arc::new(Inner {
                bus,
                subject: subjects.wake(drone),
                table,
                asking: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Wake for KeyWaker {
    fn wake<'a>(&'a self, host_label: &'a str, token: Option<TokenDigest>) -> Waking<'a> {
        let Some(label) = host_label
            .strip_prefix(KEY_HOST_PREFIX)
            .filter(|label| is_label(label))
        else {
            return Box::pin(std::future::ready(Err(WakeRefusal::Unknown)));
        };
        let host_label = host_label.to_string();
        let token = token.map(|digest| digest.to_hex());
        // One ask per key and token: a request with a wrong token fails no one else's.
        let asked = (host_label.clone(), token.clone());
        let ask = {
            let mut asking = self.inner.asking.lock().unwrap_or_else(|p| p.into_inner());
            asking
                .entry(asked.clone())
                .or_insert_with(|| {
                    let inner = Arc::clone(&self.inner);
                    let label = label.to_string();
                    // On a task of its own: the ask completes (and leaves the map) even when
                    // every request waiting for it is gone.
                    let ask = tokio::spawn(async move {
                        let (host_label, token) = &asked;
                        let result = inner.ask(&label, host_label, token.clone()).await;
                        inner
                            .asking
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&asked);
                        result
                    });
                    async move {
                        ask.await.unwrap_or_else(|error| {
                            Err(WakeRefusal::Unavailable(format!(
                                "the wake failed: {error}"
                            )))
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        Box::pin(ask)
    }
}

impl Inner {
    /// Asks a controller to wake the key, and routes its host to the backend named.
    async fn ask(
        &self,
        label: &str,
        host_label: &str,
        token_sha256: Option<String>,
    ) -> Result<(), WakeRefusal> {
        let request = WakeRequest {
            label: label.to_string(),
            token_sha256,
        };
        let answer = self
            .bus
            .request_json::<_, WakeAnswer>(&self.subject, &request, WAKE_TIMEOUT)
            .await
            .map_err(|error| {
                warn!(key = %host_label, error = %error_chain(&error), "no controller answered a wake");
                WakeRefusal::Unavailable("the cluster did not answer; retry".into())
            })?;
        match answer {
            WakeAnswer::Here { backend } => {
                if self.table.alias(host_label, backend.as_str()) {
                    info!(key = %host_label, %backend, "key woken here");
                    Ok(())
                } else {
                    debug!(key = %host_label, %backend, "the woken backend ended at once");
                    Err(WakeRefusal::Unavailable(
                        "it ended as it was woken; retry".into(),
                    ))
                }
            }
            WakeAnswer::Elsewhere { drone } => {
                debug!(key = %host_label, %drone, "key runs on another drone");
                Err(WakeRefusal::Unavailable(
                    "it runs behind another address; its DNS name leads there".into(),
                ))
            }
            WakeAnswer::NoRoom { error } => {
                // The details (drone names, loads) are the operator's, not the client's.
                info!(key = %host_label, %error, "no room to wake a key here");
                Err(WakeRefusal::Unavailable(
                    "no room to wake it here now".into(),
                ))
            }
            WakeAnswer::Unknown => Err(WakeRefusal::Unknown),
            WakeAnswer::TokenRequired => Err(WakeRefusal::TokenRequired),
            WakeAnswer::TokenRefused => Err(WakeRefusal::TokenRefused),
        }
    }
}

/// The host label a backend is also reached at: `k-{label}` of the key it was connected by
/// (its `KEY_ENV`, which only the controller sets), if any.
pub fn key_host_label(
    spec: &plane_protocol::messages::BackendSpec,
    cluster: &str,
) -> Option<String> {
    let key = spec.env.get(plane_protocol::keys::KEY_ENV)?;
    let key = plane_protocol::keys::BackendKey::new(key.clone()).ok()?;
    Some(key.host_label(cluster))
}
