//! One backend's life on the drone, as one task:
//!
//! ```text
//! loading ──launch fails──────────────────────────────▶ terminated/error_loading
//!    │
//! starting ─exits──────────────────────────────────────▶ terminated/error_starting
//!    │     ─no connection within the ready timeout─────▶ terminating ▶ terminated/timed_out
//! ready ───exits (0 / non-zero)────────────────────────▶ terminated/exited | failed
//!    │     ─stop requested (API, sweeper, controller)──▶ terminating ▶ terminated/{reason}
//! ```
//! A backend a restarted drone takes over (a container that outlived the drone process) enters
//! at `starting`, with its readiness proven again before it is routed.
//!
//! A stop request is honoured in every state, and the task returns only once nothing of the
//! backend runs any more and its route is gone.

use crate::executor::{Executor, Exit, Launch, Running};
use crate::logs::BackendLog;
use crate::readiness::ReadyCheck;
use crate::reporter::BackendReports;
use plane_dataplane::{Route, RouteTable, TokenDigest};
use plane_protocol::error_chain;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{BackendSpec, BackendState, TerminationReason};
use plane_protocol::registry::RegistryCredentials;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info};

/// What the drone keeps of a running backend: how to stop it and what the sweeper reads.
pub(crate) struct BackendHandle {
    stop: watch::Sender<Option<TerminationReason>>,
    /// Set once the backend is ready and routed.
    route: Mutex<Option<Arc<Route>>>,
    max_idle_secs: AtomicU64,
}

impl BackendHandle {
    pub(crate) fn new(
        max_idle_secs: u64,
    ) -> (Arc<Self>, watch::Receiver<Option<TerminationReason>>) {
        let (stop, stopped) = watch::channel(None);
        let handle = BackendHandle {
            stop,
            route: Mutex::new(None),
            max_idle_secs: AtomicU64::new(max_idle_secs),
        };
        (Arc::new(handle), stopped)
    }

    /// Asks the backend to stop; the first reason given wins. Whether this was the first.
    pub(crate) fn request_stop(&self, reason: TerminationReason) -> bool {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        })
    }

    pub(crate) fn route(&self) -> Option<Arc<Route>> {
        self.route.lock().ok().and_then(|r| r.clone())
    }

    fn set_route(&self, route: Arc<Route>) {
        if let Ok(mut slot) = self.route.lock() {
            *slot = Some(route);
        }
    }

    pub(crate) fn max_idle(&self) -> Duration {
        Duration::from_secs(self.max_idle_secs.load(Ordering::Relaxed))
    }

    /// A new idle timeout, which the sweeper's next pass uses.
    pub(crate) fn set_max_idle(&self, secs: u64) {
        self.max_idle_secs.store(secs, Ordering::Relaxed);
    }
}

/// What a lifecycle needs from its drone.
pub(crate) struct Context {
    pub executor: Arc<dyn Executor>,
    pub table: RouteTable,
    pub cluster: String,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
}

/// What a new backend is started with beside its spec, for this drone only.
pub(crate) struct Secrets {
    pub credentials: Option<RegistryCredentials>,
    pub token: Option<TokenDigest>,
    /// Not a secret, but the backend's own: where its output goes.
    pub log: BackendLog,
}

/// Drives one backend from `loading` to `terminated`. The caller has already put it in the
/// route table as starting; it is removed before this returns.
pub(crate) async fn run(
    ctx: &Context,
    backend: BackendId,
    spec: BackendSpec,
    secrets: Secrets,
    handle: Arc<BackendHandle>,
    mut stop: watch::Receiver<Option<TerminationReason>>,
    mut reports: BackendReports,
) {
    reports.state(BackendState::Loading);
    let outcome = drive(
        ctx,
        &backend,
        spec,
        secrets,
        &handle,
        &mut stop,
        &mut reports,
    )
    .await;
    finish(ctx, &backend, outcome, &mut reports);
}

/// A backend a new drone process took over.
pub(crate) struct TakenOver {
    pub spec: BackendSpec,
    /// It had been ready (and routed) under the earlier process.
    pub was_ready: bool,
    pub running: Box<dyn Running>,
}

/// Drives a backend a new drone process took over from `starting` on: its readiness is proven
/// again before it is routed, then it lives as any other. The caller has already put it in the
/// route table as starting.
pub(crate) async fn run_adopted(
    ctx: &Context,
    backend: BackendId,
    taken: TakenOver,
    handle: Arc<BackendHandle>,
    mut stop: watch::Receiver<Option<TerminationReason>>,
    mut reports: BackendReports,
) {
    if !taken.was_ready && stop.borrow().is_none() {
        reports.state(BackendState::Starting);
    }
    let check = ctx.executor.ready_check(&taken.spec);
    let outcome = serve(
        ctx,
        &backend,
        &check,
        taken.running,
        &handle,
        &mut stop,
        &mut reports,
    )
    .await;
    finish(ctx, &backend, outcome, &mut reports);
}

fn finish(ctx: &Context, backend: &BackendId, outcome: Outcome, reports: &mut BackendReports) {
    ctx.table.remove(backend.as_str());
    info!(backend = %backend, reason = %outcome.reason, exit = ?outcome.exit_code, "backend terminated");
    reports.say(&outcome.describe());
    reports.terminated(
        outcome.reason,
        outcome.exit_code,
        outcome.oom_killed,
        outcome.message,
    );
}

struct Outcome {
    reason: TerminationReason,
    exit_code: Option<i32>,
    /// Killed for going over its memory limit.
    oom_killed: bool,
    message: Option<String>,
}

impl Outcome {
    /// Plane's line about the end, for the backend's log.
    fn describe(&self) -> String {
        let mut text = format!("terminated: {}", self.reason);
        if let Some(code) = self.exit_code {
            text.push_str(&format!(", exit code {code}"));
        }
        if self.oom_killed {
            text.push_str(", killed for going over its memory limit");
        }
        if let Some(message) = &self.message {
            text.push_str(&format!(" ({message})"));
        }
        text
    }

    fn new(reason: TerminationReason, exit: Option<Exit>, message: Option<String>) -> Self {
        Outcome {
            reason,
            exit_code: exit.and_then(|e| e.code),
            oom_killed: exit.is_some_and(|e| e.oom_killed),
            message,
        }
    }
}

async fn drive(
    ctx: &Context,
    backend: &BackendId,
    spec: BackendSpec,
    secrets: Secrets,
    handle: &BackendHandle,
    stop: &mut watch::Receiver<Option<TerminationReason>>,
    reports: &mut BackendReports,
) -> Outcome {
    let port = match ctx.executor.port() {
        Ok(port) => port,
        Err(e) => {
            return Outcome::new(
                TerminationReason::ErrorLoading,
                None,
                Some(format!("no free port for the backend: {e}")),
            )
        }
    };
    let check = ctx.executor.ready_check(&spec);
    let (pull_sink, mut pulled) = watch::channel(None);
    let launch = Launch {
        env: environment(backend, &ctx.cluster, port, &spec),
        backend: backend.clone(),
        spec,
        port,
        credentials: secrets.credentials,
        pull_progress: Some(pull_sink),
        token: secrets.token,
        log: secrets.log,
    };
    // A stop while loading (a long pull, say) cuts the launch short; the executor removes
    // whatever it had created.
    let launching = ctx.executor.launch(launch);
    tokio::pin!(launching);
    let launched = loop {
        tokio::select! {
            launched = &mut launching => break launched,
            Ok(()) = pulled.changed() => {
                let progress = *pulled.borrow_and_update();
                if let Some(progress) = progress {
                    reports.pull(progress);
                }
            }
            reason = stop_requested(stop) => {
                reports.state(BackendState::Terminating);
                return Outcome::new(reason, None, Some("stopped while loading".to_string()));
            }
        }
    };
    // The figures a pull gave just as it ended.
    if pulled.has_changed().unwrap_or(false) {
        if let Some(progress) = *pulled.borrow_and_update() {
            reports.pull(progress);
        }
    }
    let running = match launched {
        Ok(running) => running,
        Err(e) => {
            return Outcome::new(TerminationReason::ErrorLoading, None, Some(error_chain(&e)))
        }
    };
    if stop.borrow().is_none() {
        reports.state(BackendState::Starting);
    }
    serve(ctx, backend, &check, running, handle, stop, reports).await
}

/// From `starting`: waits for the backend to prove ready, routes it, and lives with it until it
/// exits or is stopped.
async fn serve(
    ctx: &Context,
    backend: &BackendId,
    check: &ReadyCheck,
    mut running: Box<dyn Running>,
    handle: &BackendHandle,
    stop: &mut watch::Receiver<Option<TerminationReason>>,
    reports: &mut BackendReports,
) -> Outcome {
    let stopped_early = *stop.borrow();
    if let Some(reason) = stopped_early {
        return stop_now(ctx, backend, running.as_mut(), reason, reports).await;
    }
    let address = running.address();
    let ready = tokio::select! {
        () = check.passed(address) => true,
        () = tokio::time::sleep(ctx.ready_timeout) => false,
        exit = running.wait() => {
            return Outcome::new(
                TerminationReason::ErrorStarting,
                Some(exit),
                Some(format!("exited before accepting connections ({})", exit.describe())),
            );
        }
        reason = stop_requested(stop) => return stop_now(ctx, backend, running.as_mut(), reason, reports).await,
    };
    if !ready {
        let message = format!(
            "did not {} on port {} within {:?}",
            check.describe(),
            address.port(),
            ctx.ready_timeout
        );
        let mut outcome = stop_now(
            ctx,
            backend,
            running.as_mut(),
            TerminationReason::TimedOut,
            reports,
        )
        .await;
        outcome.message = Some(message);
        return outcome;
    }
    if let Err(problem) = running.verify_listener().await {
        let mut outcome = stop_now(
            ctx,
            backend,
            running.as_mut(),
            TerminationReason::ErrorStarting,
            reports,
        )
        .await;
        outcome.message = Some(problem);
        return outcome;
    }
    handle.set_route(ctx.table.set_ready(backend.as_str(), address));
    reports.state(BackendState::Ready);
    info!(backend = %backend, %address, "backend ready");
    tokio::select! {
        exit = running.wait() => {
            let reason = if exit.success() { TerminationReason::Exited } else { TerminationReason::Failed };
            Outcome::new(reason, Some(exit), (!exit.success()).then(|| exit.describe()))
        }
        reason = stop_requested(stop) => stop_now(ctx, backend, running.as_mut(), reason, reports).await,
    }
}

/// Takes the backend out of the proxy, then stops it.
async fn stop_now(
    ctx: &Context,
    backend: &BackendId,
    running: &mut dyn Running,
    reason: TerminationReason,
    reports: &mut BackendReports,
) -> Outcome {
    reports.state(BackendState::Terminating);
    ctx.table.remove(backend.as_str());
    let exit = running.stop(ctx.stop_grace).await;
    debug!(%reason, exit = %exit.describe(), "backend stopped");
    Outcome::new(reason, Some(exit), None)
}

/// Resolves with the first stop reason. Cancel safe.
async fn stop_requested(
    stop: &mut watch::Receiver<Option<TerminationReason>>,
) -> TerminationReason {
    loop {
        if let Some(reason) = *stop.borrow_and_update() {
            return reason;
        }
        if stop.changed().await.is_err() {
            // The drone dropped the handle: it is going away.
            return TerminationReason::Terminated;
        }
    }
}

/// The backend's environment (**contract**): `PORT`, `PLANE_BACKEND_ID`, `PLANE_CLUSTER`, then
/// the spawn's own variables (which may not override these; the API refuses that).
fn environment(
    backend: &BackendId,
    cluster: &str,
    port: u16,
    spec: &BackendSpec,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PORT".to_string(), port.to_string()),
        ("PLANE_BACKEND_ID".to_string(), backend.to_string()),
        ("PLANE_CLUSTER".to_string(), cluster.to_string()),
    ];
    env.extend(
        spec.env
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "PORT" | "PLANE_BACKEND_ID" | "PLANE_CLUSTER"))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plane_protocol::messages::Executable;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    /// A handle whose backend is ready and routed in `table` (as the lifecycle leaves it), with
    /// the receiving end of its stop channel.
    pub(crate) fn ready_handle(
        table: &RouteTable,
        backend: &str,
        max_idle_secs: u64,
    ) -> (
        Arc<BackendHandle>,
        Arc<Route>,
        watch::Receiver<Option<TerminationReason>>,
    ) {
        let (handle, stop) = BackendHandle::new(max_idle_secs);
        let route = table.set_ready(backend, SocketAddr::from(([127, 0, 0, 1], 1)));
        handle.set_route(Arc::clone(&route));
        (handle, route, stop)
    }

    #[test]
    fn the_first_stop_reason_wins() {
        let (handle, mut stop) = BackendHandle::new(30);
        assert_eq!(*stop.borrow_and_update(), None);
        handle.request_stop(TerminationReason::Terminated);
        assert!(stop.has_changed().expect("handle alive"));
        assert_eq!(
            *stop.borrow_and_update(),
            Some(TerminationReason::Terminated)
        );
        handle.request_stop(TerminationReason::Swept);
        handle.request_stop(TerminationReason::Lost);
        // A later reason neither replaces the first nor wakes the lifecycle again.
        assert!(!stop.has_changed().expect("handle alive"));
        assert_eq!(*stop.borrow(), Some(TerminationReason::Terminated));
    }

    #[test]
    fn a_handle_has_no_route_until_ready() {
        let table = RouteTable::new("plane.test");
        let (handle, _stop) = BackendHandle::new(7);
        assert!(handle.route().is_none());
        assert_eq!(handle.max_idle(), Duration::from_secs(7));
        let (handle, route, _stop) = ready_handle(&table, "b1", 7);
        let held = handle.route().expect("routed");
        assert!(Arc::ptr_eq(&held, &route));
        assert!(Arc::ptr_eq(&held, &table.get("b1").expect("in the table")));
    }

    #[test]
    fn the_environment_puts_plane_variables_first_and_keeps_them() {
        let backend = BackendId::new("b1").expect("valid id");
        let spec = BackendSpec {
            executable: Executable::process(vec!["x".into()]),
            max_idle_secs: 5,
            env: BTreeMap::from([
                ("A".to_string(), "1".to_string()),
                ("PORT".to_string(), "1".to_string()),
                ("PLANE_BACKEND_ID".to_string(), "other".to_string()),
                ("PLANE_CLUSTER".to_string(), "other".to_string()),
            ]),
            require_token: false,
            resources: Default::default(),
            ready_path: None,
        };
        let env = environment(&backend, "plane.test", 4242, &spec);
        let expected = [
            ("PORT", "4242"),
            ("PLANE_BACKEND_ID", "b1"),
            ("PLANE_CLUSTER", "plane.test"),
            ("A", "1"),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, expected);
    }
}
