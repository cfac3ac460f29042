//! Faults of the bus, end to end over a real nats-server: an outage of the server, a controller
//! cut off from it while the drone is not, and a drone working through an outage on its own.
//! Each outage lasts twice the drone grace (2 s in these clusters): long enough that judging
//! liveness on anything but what the controller could hear would end every session.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, id_of, no_process_left, Cluster, STATE_TIMEOUT};
use futures::{SinkExt, StreamExt};
use plane_test_support::eventually;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Twice the clusters' drone grace ([`common::DRONE_GRACE_SECS`]).
const OUTAGE: Duration = Duration::from_secs(4);

type WebSocket = WebSocketStream<TcpStream>;

/// A WebSocket to the test backend's echo endpoint through the drone's proxy.
async fn open_websocket(c: &Cluster, id: &str) -> anyhow::Result<WebSocket> {
    let url = format!("ws://{}:{}/ws", c.host(id), c.proxy_port);
    let tcp = TcpStream::connect(("127.0.0.1", c.proxy_port)).await?;
    let (ws, response) = tokio_tungstenite::client_async(url.as_str().into_client_request()?, tcp)
        .await
        .context("WebSocket handshake through the proxy")?;
    ensure!(response.status() == 101, "handshake: {response:?}");
    Ok(ws)
}

async fn echo(ws: &mut WebSocket, text: &str) -> anyhow::Result<()> {
    ws.send(Message::text(text)).await?;
    let answer = tokio::time::timeout(STATE_TIMEOUT, ws.next())
        .await
        .context("no echo")?
        .context("WebSocket closed")??;
    ensure!(answer == Message::text(text), "echo: {answer:?}");
    Ok(())
}

/// Two live sessions: one idle for up to a minute, one with a 1 s idle timeout kept alive only
/// by the WebSocket open on it (so it must go on being counted through the fault).
struct Sessions {
    idle: String,
    held: String,
    ws: WebSocket,
}

impl Sessions {
    async fn start(c: &Cluster) -> anyhow::Result<Sessions> {
        let idle = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let held = id_of(&c.spawn_ready("", &["--idle", "1"]).await?)?;
        let mut ws = open_websocket(c, &held).await?;
        echo(&mut ws, "before").await?;
        Ok(Sessions { idle, held, ws })
    }

    /// Once the controller hears the drone again (a new backend can be spawned and reached),
    /// and a whole grace later: both sessions are still ready, reachable and counted, and the
    /// drone was never declared lost.
    async fn survived(mut self, c: &Cluster) -> anyhow::Result<()> {
        let fresh = eventually(STATE_TIMEOUT, "a spawn after the fault", || async {
            c.spawn_ready("", &["--idle", "60"]).await.map(Some)
        })
        .await?;
        let fresh = id_of(&fresh)?;
        ensure!(c.get(&c.host(&fresh), "/", &[])?.status == 200);
        // A grace and more after the controller could hear again: no drone may be judged lost.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for id in [&self.idle, &self.held] {
            let status = c.status(id).await?;
            ensure!(status["state"] == "ready", "{id} after the fault: {status}");
        }
        let hello = c.get(&c.host(&self.idle), "/", &[])?;
        ensure!(hello.status == 200, "{hello:?}");
        echo(&mut self.ws, "after").await?;
        let drones = c.plane_json(&["drones"]).await?;
        let drone = &drones[0];
        ensure!(drone["live"] == true && drone["lost"] == false, "{drones}");
        // Still counted: closing the WebSocket lets the 1 s backend be swept.
        self.ws.close(None).await?;
        drop(self.ws);
        let events = c.watch_until_terminated(&self.held).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "swept", "{last}");
        Ok(())
    }
}

/// nats-server stops for twice the drone grace and comes back on the same port and store:
/// every session survives, and no drone is declared lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_ends_no_session() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let sessions = Sessions::start(&cluster).await?;
        cluster.stop_nats()?;
        tokio::time::sleep(OUTAGE).await;
        cluster.start_nats()?;
        sessions.survived(&cluster).await
    })
    .await
}

/// Only the controller loses NATS (its relay is cut) while the drone keeps beating: the
/// controller, which could not hear, declares nothing lost once it hears again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_cut_off_from_nats_ends_no_session() -> anyhow::Result<()> {
    bounded(async {
        let cluster = Cluster::over_nats_with_relay().await?;
        let sessions = Sessions::start(&cluster).await?;
        cluster.cut_controller()?;
        tokio::time::sleep(OUTAGE).await;
        cluster.restore_controller()?;
        sessions.survived(&cluster).await
    })
    .await
}

/// Through an outage the drone goes on by itself: its sweeper stops an idle backend, and the
/// report of that reaches the controller once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_sweeps_through_an_outage_and_reports_after() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let id = id_of(&cluster.spawn_ready("", &["--idle", "1"]).await?)?;
        cluster.stop_nats()?;
        no_process_left(&id).await?;
        let gone = cluster.get(&cluster.host(&id), "/", &[])?;
        ensure!(
            gone.status == 404,
            "swept backends are not routed: {gone:?}"
        );
        cluster.start_nats()?;
        let events = cluster.watch_until_terminated(&id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "swept", "{last}");
        Ok(())
    })
    .await
}

/// The controller is killed and a new one starts twice the drone grace later: it rebuilds its
/// view from the KV buckets, takes none of the drones for silent, and every session survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_ends_no_session() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let sessions = Sessions::start(&cluster).await?;
        cluster.kill_controller();
        tokio::time::sleep(OUTAGE).await;
        cluster.start_controller()?;
        sessions.survived(&cluster).await
    })
    .await
}

/// Two controllers serve one cluster: each hears every heartbeat (liveness is not split by the
/// queue group that shares the reports), so neither takes the drone for silent, and both show
/// the same backends, changes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_one_view() -> anyhow::Result<()> {
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let first_api = cluster.api.clone();
        let (_second, second_api) = cluster.second_controller()?;
        let sessions = Sessions::start(&cluster).await?;
        // Longer than the grace: each controller must have heard the drone on its own.
        tokio::time::sleep(OUTAGE).await;
        for api in [&first_api, &second_api] {
            cluster.api = api.clone();
            let drones = cluster.plane_json(&["drones"]).await?;
            ensure!(
                drones[0]["live"] == true && drones[0]["lost"] == false,
                "{api}: {drones}"
            );
            for id in [&sessions.idle, &sessions.held] {
                let status = cluster.status(id).await?;
                ensure!(status["state"] == "ready", "{api}: {status}");
            }
        }
        // A change made through one is seen, as an event, through the other.
        cluster.api = first_api;
        cluster.plane_json(&["terminate", &sessions.idle]).await?;
        cluster.api = second_api;
        let events = cluster.watch_until_terminated(&sessions.idle).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "terminated", "{last}");
        Ok(())
    })
    .await
}

/// Two controllers on one NATS: a spawn one answered is shown by the other at once; killing one
/// while spawns are in flight loses nothing: every spawn it answered becomes ready, each backend
/// runs exactly once, and whatever it left half-placed ends with a clear state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_spawn_loses_no_backend() -> anyhow::Result<()> {
    use plane_test_support::processes_with_env;
    bounded(async {
        let mut cluster = Cluster::over_nats().await?;
        let first_api = cluster.api.clone();
        let (_second, second_api) = cluster.second_controller()?;

        let record = cluster
            .plane_json(&["spawn", "--command", &common::backend_bin(), "--idle", "60"])
            .await?;
        let first = id_of(&record)?;
        let seen = plane_test_support::curl(&[&format!("{second_api}/v1/backends/{first}")])?;
        ensure!(
            seen.status == 200,
            "answered by one, shown by the other: {seen:?}"
        );

        let mut spawns = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let mut command = tokio::process::Command::new(common::plane_bin());
            command
                .args(["spawn", "--command", &common::backend_bin(), "--idle", "60"])
                .args(["--json", "--api", &first_api])
                .kill_on_drop(true);
            spawns.spawn(async move { command.output().await });
        }
        let mut answered = vec![first];
        let mut killed = false;
        while let Some(output) = spawns.join_next().await {
            let output = output??;
            if output.status.success() {
                let record: serde_json::Value = serde_json::from_slice(&output.stdout)?;
                answered.push(id_of(&record)?);
            }
            if !killed && answered.len() >= 6 {
                cluster.kill_controller();
                killed = true;
            }
        }
        ensure!(
            killed && answered.len() < 25,
            "the controller was killed while spawns were in flight ({} answered)",
            answered.len()
        );
        eprintln!(
            "{} of 25 spawns answered before the controller died",
            answered.len()
        );

        cluster.api = second_api;
        let listed = eventually(STATE_TIMEOUT, "every backend ready or ended", || async {
            let listed = cluster.plane_json(&["list"]).await?;
            let all = listed.as_array().context("a list")?.clone();
            let settled = all
                .iter()
                .all(|b| b["state"] == "ready" || b["state"] == "terminated");
            Ok(settled.then_some(all))
        })
        .await?;
        for id in &answered {
            let record = listed
                .iter()
                .find(|b| b["id"] == id.as_str())
                .with_context(|| format!("answered spawn {id} is known"))?;
            ensure!(record["state"] == "ready", "answered spawn: {record}");
        }
        for record in &listed {
            let id = id_of(record)?;
            let running = processes_with_env("PLANE_BACKEND_ID", &id).len();
            if record["state"] == "ready" {
                ensure!(running == 1, "{id} runs {running} times: {record}");
            } else {
                ensure!(record["reason"] == "lost", "left half-placed: {record}");
                ensure!(running == 0, "{id} ended but runs: {record}");
            }
        }
        Ok(())
    })
    .await
}
