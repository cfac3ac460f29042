//! End-to-end over a real nats-server: `plane controller` and `plane drone` as separate
//! processes, driven by the `plane` CLI, curl and a WebSocket client.

mod common;

use common::flows;
use common::{bounded, id_of, no_process_left, Cluster};

macro_rules! flow_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> anyhow::Result<()> {
            bounded(async {
                let cluster = Cluster::over_nats().await?;
                flows::run(stringify!($name), flows::$name(&cluster)).await
            })
            .await
        }
    };
}

flow_test!(route_headers_env_and_delete);
flow_test!(websocket_keeps_backend_alive);
flow_test!(streaming_response_keeps_backend_alive);
flow_test!(idle_backend_is_swept);
flow_test!(idle_timeout_changes_live);
flow_test!(drain_waits_for_backends_and_can_be_cancelled);
flow_test!(metrics_follow_the_cluster);
flow_test!(drone_metrics_follow_traffic);
flow_test!(exit_code_is_reported);
flow_test!(missing_command_is_error_loading);
flow_test!(unknown_hosts_are_refused);
flow_test!(bad_api_input_is_refused);
flow_test!(requests_wait_for_a_starting_backend);
flow_test!(logs_are_kept_and_followed);
flow_test!(dns_answers_for_backends_and_the_zone);
flow_test!(a_backend_that_never_listens_times_out);
flow_test!(token_guards_a_backend);
flow_test!(connect_by_key);
flow_test!(idempotent_retries);
flow_test!(wake_on_request);

/// Killing the drone outright (SIGKILL) leaves no backend process running, and the controller
/// declares its backends lost once its heartbeats stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_drone_leaves_no_backend_behind() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let a = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
        let b = id_of(
            &cluster
                .spawn_ready("--ignore-sigterm", &["--idle", "60"])
                .await?,
        )?;
        // A backend that starts a process of its own: PR_SET_PDEATHSIG does not reach that one.
        let command = format!("sh -c 'sleep 300 & exec {}'", common::backend_bin());
        let spawned = cluster
            .plane_json(&["spawn", "--wait", "--idle", "60", "--command", &command])
            .await?;
        let c = id_of(&spawned)?;
        plane_test_support::eventually(
            common::STATE_TIMEOUT,
            &format!("backend {c} to run two processes"),
            || async {
                let pids = plane_test_support::processes_with_env("PLANE_BACKEND_ID", &c);
                Ok((pids.len() == 2).then_some(()))
            },
        )
        .await?;
        for id in [&a, &b, &c] {
            anyhow::ensure!(
                !plane_test_support::processes_with_env("PLANE_BACKEND_ID", id).is_empty(),
                "backend {id} runs before the drone is killed"
            );
        }
        let drone = cluster.drone.take().expect("the cluster has a drone");
        drone.signal(libc::SIGKILL)?;
        for id in [&a, &b, &c] {
            no_process_left(id).await?;
        }
        for id in [&a, &b, &c] {
            let events = cluster.watch_until_terminated(id).await?;
            let last = events
                .last()
                .expect("watch returns at least the final event");
            anyhow::ensure!(last["reason"] == "lost", "{last}");
        }
        Ok(())
    })
    .await
}

/// A drone stopped politely (SIGTERM) stops its backends and reports them terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_drone_terminates_its_backends() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let id = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
        let drone = cluster.drone.take().expect("the cluster has a drone");
        drone.signal(libc::SIGTERM)?;
        let status =
            tokio::task::spawn_blocking(move || drone.wait_exit(common::STATE_TIMEOUT)).await??;
        anyhow::ensure!(status.success(), "drone exit: {status}");
        no_process_left(&id).await?;
        let record = cluster.status(&id).await?;
        anyhow::ensure!(record["state"] == "terminated", "{record}");
        anyhow::ensure!(record["reason"] == "terminated", "{record}");
        Ok(())
    })
    .await
}

/// A drone that restarts under the same id (faster than the drone grace) has lost what it ran:
/// the controller notices the new instance and ends the old backends as `lost`, while the
/// restarted drone takes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_drone_loses_its_old_backends() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let old = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
        let drone = cluster.drone.take().expect("the cluster has a drone");
        drone.signal(libc::SIGKILL)?;
        drop(drone);
        cluster.restart_drone().await?;
        let events = cluster.watch_until_terminated(&old).await?;
        let last = events
            .last()
            .expect("watch returns at least the final event");
        anyhow::ensure!(last["reason"] == "lost", "{last}");
        anyhow::ensure!(
            last["message"]
                .as_str()
                .is_some_and(|m| m.contains("restarted")),
            "noticed through the restart, not the heartbeat grace: {last}"
        );
        let new = cluster.spawn_ready("", &["--idle", "60"]).await?;
        anyhow::ensure!(new["drone"] == "drone-1", "{new}");
        let hello = cluster.get(&cluster.host(&id_of(&new)?), "/", &[])?;
        anyhow::ensure!(hello.status == 200, "{hello:?}");
        Ok(())
    })
    .await
}

/// State reports are re-sent until a controller acknowledges them: a backend that exits while
/// no controller runs is recorded as `terminated/exited` once a new controller starts, which
/// rebuilds everything else from the KV buckets and does not take the outage for lost drones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_survive_a_controller_restart() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let id = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
        cluster.kill_controller();
        let exit = cluster.get(&cluster.host(&id), "/exit?code=0", &[])?;
        anyhow::ensure!(exit.status == 200, "{exit:?}");
        no_process_left(&id).await?;
        // An outage longer than the drone grace (2 s): the new controller finds every drone's
        // last heartbeat old, and must not take that for drones gone silent.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        cluster.start_controller()?;
        let events = cluster.watch_until_terminated(&id).await?;
        let last = events
            .last()
            .expect("watch returns at least the final event");
        anyhow::ensure!(last["reason"] == "exited", "{last}");
        let next = cluster.spawn_ready("", &["--idle", "60"]).await?;
        anyhow::ensure!(
            next["drone"] == "drone-1",
            "the drone is still known: {next}"
        );
        Ok(())
    })
    .await
}

/// A drone that stalls past the grace period has its backends declared lost; when it comes
/// back, the controller has it stop them, so nothing runs that the cluster thinks has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_drone_stops_the_backends_declared_lost() -> anyhow::Result<()> {
    bounded(async {
        let cluster = Cluster::over_nats().await?;
        let id = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
        let drone = cluster.drone.as_ref().expect("the cluster has a drone");
        drone.signal(libc::SIGSTOP)?;
        let events = cluster.watch_until_terminated(&id).await;
        drone.signal(libc::SIGCONT)?;
        let events = events?;
        let last = events
            .last()
            .expect("watch returns at least the final event");
        anyhow::ensure!(last["reason"] == "lost", "{last}");
        no_process_left(&id).await?;
        let gone = cluster.get(&cluster.host(&id), "/", &[])?;
        anyhow::ensure!(gone.status == 404, "{gone:?}");
        Ok(())
    })
    .await
}
