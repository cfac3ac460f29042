//! The end-to-end flows, each against any [`Cluster`]: the NATS cluster runs each as its own
//! test, `plane dev` runs them all once.

use super::{id_of, no_process_left, Cluster, STATE_TIMEOUT};
use anyhow::{ensure, Context};
use futures::{SinkExt, StreamExt};
use plane_protocol::messages::{BackendState, TerminationReason};
use plane_test_support::curl;
use plane_test_support::dig::{section, status};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Spawn → ready → a GET through the proxy reaches the backend, which sees its `Host`, the
/// forwarding headers (a client's own `X-Forwarded-For` replaced) and its environment; then
/// `DELETE` ends in `terminated/terminated` with no process left.
pub async fn route_headers_env_and_delete(c: &Cluster) -> anyhow::Result<()> {
    let record = c
        .spawn_ready("", &["--env", "GREETING=hi there", "--idle", "60"])
        .await?;
    let id = id_of(&record)?;
    ensure!(
        record["url"]
            .as_str()
            .is_some_and(|u| u.contains(&c.host(&id))),
        "url names the backend: {record}"
    );

    let hello = c.get(&c.host(&id), "/", &[])?;
    ensure!(hello.status == 200, "GET /: {hello:?}");
    ensure!(
        hello.body.trim() == format!("hello from {id}"),
        "GET /: {hello:?}"
    );

    let info = c
        .get(
            &c.host(&id).to_uppercase(),
            "/info",
            &["-H", "X-Forwarded-For: 203.0.113.9"],
        )?
        .json()?;
    ensure!(
        info["headers"]["host"] == c.host(&id).to_uppercase(),
        "Host kept as sent: {info}"
    );
    ensure!(
        info["headers"]["x-forwarded-for"] == "127.0.0.1",
        "XFF: {info}"
    );
    ensure!(
        info["headers"]["x-forwarded-proto"] == "http",
        "XFP: {info}"
    );
    let env = &info["env"];
    ensure!(env["PLANE_BACKEND_ID"] == id.as_str(), "env: {env}");
    ensure!(env["PLANE_CLUSTER"] == c.cluster.as_str(), "env: {env}");
    ensure!(env["GREETING"] == "hi there", "env: {env}");
    let port = env["PORT"].as_str().context("PORT set")?;
    ensure!(port.parse::<u16>().is_ok(), "PORT is a port: {port}");

    let terminated = c.plane_json(&["terminate", &id]).await?;
    ensure!(terminated["id"] == id.as_str(), "{terminated}");
    let events = c.watch_until_terminated(&id).await?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "terminated", "reason: {last}");
    no_process_left(&id).await?;
    let gone = c.get(&c.host(&id), "/", &[])?;
    ensure!(
        gone.status == 404,
        "a terminated backend is not routed: {gone:?}"
    );
    Ok(())
}

/// An open WebSocket keeps a backend alive past its idle timeout; once closed, it is swept.
pub async fn websocket_keeps_backend_alive(c: &Cluster) -> anyhow::Result<()> {
    let record = c.spawn_ready("", &["--idle", "1"]).await?;
    let id = id_of(&record)?;
    let url = format!("ws://{}:{}/ws", c.host(&id), c.proxy_port);
    let request = url.as_str().into_client_request()?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.proxy_port)).await?;
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .context("WebSocket handshake through the proxy")?;
    ensure!(response.status() == 101, "handshake: {response:?}");
    ws.send(Message::text("first")).await?;
    let echo = ws.next().await.context("echo")??;
    ensure!(echo == Message::text("first"), "echo: {echo:?}");

    // Three idle timeouts with the connection open and silent: nothing may sweep it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = c.status(&id).await?;
    ensure!(
        status["state"] == "ready",
        "swept while a WebSocket was open: {status}"
    );
    ws.send(Message::text("second")).await?;
    let echo = ws.next().await.context("echo")??;
    ensure!(echo == Message::text("second"), "echo: {echo:?}");

    ws.close(None).await?;
    drop(ws);
    let events = c.watch_until_terminated(&id).await?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "swept", "swept after close: {last}");
    Ok(())
}

/// A long streaming response keeps its backend alive until it ends.
pub async fn streaming_response_keeps_backend_alive(c: &Cluster) -> anyhow::Result<()> {
    let record = c.spawn_ready("", &["--idle", "1"]).await?;
    let id = id_of(&record)?;
    // 8 chunks 400 ms apart: 3.2 s of response, over three idle timeouts.
    let stream = c.get(&c.host(&id), "/stream?chunks=8&interval_ms=400", &[])?;
    ensure!(stream.status == 200, "stream: {stream:?}");
    ensure!(
        stream.body.lines().count() == 8,
        "all chunks arrived: {stream:?}"
    );
    let status = c.status(&id).await?;
    ensure!(
        status["state"] == "ready",
        "swept during a streaming response: {status}"
    );
    let events = c.watch_until_terminated(&id).await?;
    ensure!(
        events.last().is_some_and(|e| e["reason"] == "swept"),
        "{events:?}"
    );
    Ok(())
}

/// An untouched backend is swept once its idle timeout has passed, not before.
pub async fn idle_backend_is_swept(c: &Cluster) -> anyhow::Result<()> {
    let record = c.spawn_ready("", &["--idle", "1"]).await?;
    let id = id_of(&record)?;
    let events = c.watch_until_terminated(&id).await?;
    let ready = events
        .iter()
        .find(|e| e["state"] == "ready")
        .context("a ready event")?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "swept", "{last}");
    let idle_ms =
        last["updated_at"].as_u64().unwrap_or(0) - ready["updated_at"].as_u64().unwrap_or(0);
    ensure!(
        idle_ms >= 1000,
        "swept after {idle_ms} ms, before its 1 s idle timeout"
    );
    no_process_left(&id).await?;
    Ok(())
}

/// A backend that exits with code 3 ends `terminated/failed` with `exit_code: 3`.
pub async fn exit_code_is_reported(c: &Cluster) -> anyhow::Result<()> {
    let record = c.spawn_ready("", &["--idle", "60"]).await?;
    let id = id_of(&record)?;
    let exit = c.get(&c.host(&id), "/exit?code=3", &[])?;
    ensure!(exit.status == 200, "{exit:?}");
    let events = c.watch_until_terminated(&id).await?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "failed", "{last}");
    ensure!(last["exit_code"] == 3, "{last}");
    Ok(())
}

/// A command that does not exist ends `terminated/error_loading`, and `spawn --wait` says so.
pub async fn missing_command_is_error_loading(c: &Cluster) -> anyhow::Result<()> {
    let output = c
        .plane(&[
            "spawn",
            "--wait",
            "--command",
            "/nonexistent/plane-no-such-program",
        ])
        .await?;
    ensure!(!output.status.success(), "spawn --wait must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("error_loading"), "stderr: {stderr}");
    let record = c
        .last_listed(|r| {
            r["spec"]["executable"]["command"][0] == "/nonexistent/plane-no-such-program"
        })
        .await?;
    ensure!(record["state"] == "terminated", "{record}");
    ensure!(record["reason"] == "error_loading", "{record}");
    Ok(())
}

/// Unknown backends get 404, hosts outside the cluster 400: nothing is forwarded.
pub async fn unknown_hosts_are_refused(c: &Cluster) -> anyhow::Result<()> {
    let unknown = c.get(&c.host("nosuchbackend"), "/", &[])?;
    ensure!(unknown.status == 404, "{unknown:?}");
    ensure!(
        unknown.body.contains("nosuchbackend"),
        "404 names it: {unknown:?}"
    );
    let outside = c.get("example.com", "/", &[])?;
    ensure!(outside.status == 400, "{outside:?}");
    Ok(())
}

/// Bad API input gets a 4xx JSON error that names the problem.
pub async fn bad_api_input_is_refused(c: &Cluster) -> anyhow::Result<()> {
    let url = format!("{}/v1/backends", c.api);
    let bad = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"executable": {"command": []}}"#,
        &url,
    ])?;
    ensure!(bad.status == 400, "{bad:?}");
    let error = bad.json()?;
    ensure!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("executable.command")),
        "names the field: {error}"
    );
    let typed = curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"executable": {"command": ["x"]}, "max_idle_secs": "soon"}"#,
        &url,
    ])?;
    ensure!(typed.status == 400, "{typed:?}");
    ensure!(
        typed.body.contains("max_idle_secs"),
        "names the field: {typed:?}"
    );
    let garbage = curl(&["-X", "POST", "-d", "{not json", &url])?;
    ensure!(garbage.status == 400, "{garbage:?}");
    let missing = curl(&[&format!("{}/v1/backends/nosuchbackend", c.api)])?;
    ensure!(missing.status == 404, "{missing:?}");
    ensure!(missing.json()?["error"].is_string(), "{missing:?}");
    Ok(())
}

/// A request sent right after `spawn` returns, while the backend is still starting, is held
/// by the proxy and answered once the backend is ready.
pub async fn requests_wait_for_a_starting_backend(c: &Cluster) -> anyhow::Result<()> {
    let command = format!("{} --ready-delay-ms 1500", super::backend_bin());
    let record = c
        .plane_json(&["spawn", "--command", &command, "--idle", "60"])
        .await?;
    let id = id_of(&record)?;
    ensure!(
        record["state"] != "ready",
        "spawn without --wait returns early: {record}"
    );
    let hello = c.get(&c.host(&id), "/", &[])?;
    ensure!(hello.status == 200, "held until ready: {hello:?}");
    ensure!(hello.body.trim() == format!("hello from {id}"), "{hello:?}");
    Ok(())
}

/// A backend that never listens on its port ends `terminated/timed_out` after the ready
/// timeout, with nothing left running.
pub async fn a_backend_that_never_listens_times_out(c: &Cluster) -> anyhow::Result<()> {
    let record = c
        .plane_json(&["spawn", "--command", "sleep 120", "--idle", "60"])
        .await?;
    let id = id_of(&record)?;
    let events = c.watch_until_terminated(&id).await?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "timed_out", "{last}");
    ensure!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not accept connections")),
        "says why: {last}"
    );
    no_process_left(&id).await?;
    Ok(())
}

/// Runs a flow, naming it in the error.
pub async fn run(
    name: &str,
    flow: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::time::timeout(STATE_TIMEOUT * 3, flow)
        .await
        .with_context(|| format!("{name} timed out"))?
        .with_context(|| format!("flow {name}"))
}

/// A backend spawned with `--require-token`: only the spawn answer shows its token (not
/// `plane status`, `plane list` or the event stream); without it the proxy answers 401, with
/// another 403; `Authorization: Bearer` and the cookie that `/_plane_auth` sets both get
/// through, and the backend sees neither (its own cookies pass).
pub async fn token_guards_a_backend(c: &Cluster) -> anyhow::Result<()> {
    let record = c
        .spawn_ready("", &["--require-token", "--idle", "60"])
        .await?;
    let id = id_of(&record)?;
    let token = record["token"]
        .as_str()
        .context("the spawn answer carries the token")?
        .to_string();
    let host = c.host(&id);

    let none = c.get(&host, "/info", &[])?;
    ensure!(none.status == 401, "no token: {none:?}");
    let wrong = c.get(
        &host,
        "/info",
        &["-H", "Authorization: Bearer 0000wrong0000"],
    )?;
    ensure!(wrong.status == 403, "wrong token: {wrong:?}");

    let bearer = format!("Authorization: Bearer {token}");
    let info = c
        .get(&host, "/info", &["-H", &bearer, "-H", "Cookie: theme=dark"])?
        .json()?;
    ensure!(
        info["headers"]["authorization"].is_null(),
        "Authorization reached the backend: {info}"
    );
    ensure!(info["headers"]["cookie"] == "theme=dark", "cookies: {info}");

    let exchange = c.get(
        &host,
        &format!("/_plane_auth?token={token}&redirect=%2Finfo%3Fx%3D1"),
        &["-i"],
    )?;
    ensure!(exchange.status == 303, "{exchange:?}");
    let lines: Vec<String> = exchange
        .body
        .lines()
        .map(|line| line.trim().to_ascii_lowercase())
        .collect();
    ensure!(
        lines.iter().any(|l| l == "location: /info?x=1"),
        "{exchange:?}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("set-cookie: plane_token=")
                && l.contains("httponly")
                && l.contains("samesite=lax")),
        "{exchange:?}"
    );
    let offsite = c.get(
        &host,
        &format!("/_plane_auth?token={token}&redirect=https%3A%2F%2Fevil.example%2F"),
        &[],
    )?;
    ensure!(offsite.status == 400, "off-site redirect: {offsite:?}");

    // The cookie as /_plane_auth set it, sent back as a browser would.
    let set_cookie = exchange
        .body
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim())
        })
        .context("Set-Cookie")?;
    let pair = set_cookie.split(';').next().unwrap_or_default();
    ensure!(pair == format!("plane_token={token}"), "{set_cookie}");
    let cookie = format!("Cookie: theme=dark; {pair}");
    let info = c.get(&host, "/info", &["-H", &cookie])?.json()?;
    ensure!(info["headers"]["cookie"] == "theme=dark", "cookies: {info}");

    for args in [
        vec!["status", id.as_str(), "--json"],
        vec!["list", "--json"],
    ] {
        let output = c.plane(&args).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(output.status.success(), "plane {args:?}: {output:?}");
        ensure!(
            !text.contains(&token),
            "plane {args:?} shows the token: {text}"
        );
    }
    c.plane_json(&["terminate", &id]).await?;
    no_process_left(&id).await
}

/// A process backend's log: see [`logs_of_a_ready_backend`].
pub async fn logs_are_kept_and_followed(c: &Cluster) -> anyhow::Result<()> {
    let record = c.spawn_ready("", &["--idle", "60"]).await?;
    logs_of_a_ready_backend(c, &id_of(&record)?).await
}

/// `plane logs ID` of backend `id` (ready, serving the test backend): what it writes to stdout
/// and stderr is kept (and shown: escape sequences escaped in text, untouched in JSON) and
/// followed by `plane logs -f`, which ends by itself after the backend's end, with Plane's own
/// line about it; the lines never reach Plane's own log raw. Terminates the backend.
pub async fn logs_of_a_ready_backend(c: &Cluster, id: &str) -> anyhow::Result<()> {
    let mut follow = std::process::Command::new(super::plane_bin());
    follow.args(["logs", id, "--follow", "--json", "--api", &c.api]);
    let follower = plane_test_support::ChildGuard::spawn("logs -f", follow)?;
    let red = "\u{1b}[31mred\u{1b}[0m";
    for path in [
        "/print?text=hello%20stdout",
        "/print?stream=stderr&text=to%20stderr",
        "/print?text=%1b%5b31mred%1b%5b0m",
    ] {
        let printed = c.get(&c.host(id), path, &[])?;
        ensure!(printed.status == 200, "{path}: {printed:?}");
    }
    let has = |lines: &[serde_json::Value], stream: &str, line: &str| {
        lines
            .iter()
            .any(|l| l["stream"] == stream && l["line"] == line)
    };
    let kept = plane_test_support::eventually(STATE_TIMEOUT, "the lines kept", || async {
        let output = c.plane(&["logs", id, "--json"]).await?;
        ensure!(output.status.success(), "{output:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let all = has(&lines, "stdout", "hello stdout")
            && has(&lines, "stderr", "to stderr")
            && has(&lines, "stdout", red);
        Ok(all.then_some(lines))
    })
    .await?;
    let seqs: Vec<u64> = kept.iter().filter_map(|l| l["seq"].as_u64()).collect();
    ensure!(
        seqs.len() == kept.len() && seqs.windows(2).all(|w| w[0] < w[1]),
        "{kept:?}"
    );
    ensure!(kept.iter().all(|l| l["at"].as_u64().is_some()), "{kept:?}");
    // As text: escape sequences escaped, never written to the terminal raw.
    let text = c.plane(&["logs", id]).await?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(text.contains("stdout hello stdout"), "{text}");
    ensure!(
        text.contains("\\u{1b}[31mred") && !text.contains(red),
        "{text}"
    );

    let output = c.plane(&["terminate", id]).await?;
    ensure!(output.status.success(), "{output:?}");
    // The follower saw it all, then the end, and stopped by itself.
    let (status, followed) = tokio::task::spawn_blocking(move || {
        let status = follower.wait_exit(STATE_TIMEOUT);
        (status, follower.output_so_far())
    })
    .await?;
    ensure!(status?.success(), "plane logs -f: {followed}");
    let followed: Vec<serde_json::Value> = followed
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        has(&followed, "stdout", "hello stdout") && has(&followed, "stdout", red),
        "{followed:?}"
    );
    let end = followed.last().context("followed lines")?;
    ensure!(
        end["stream"] == "plane"
            && end["line"]
                .as_str()
                .is_some_and(|l| l.starts_with("terminated: terminated")),
        "the last line is Plane's about the end: {end}"
    );
    // Plane's own log has the lines only escaped.
    if let Some(drone) = &c.drone {
        let own = drone.output_so_far();
        ensure!(
            !own.contains(red),
            "a backend's line reached Plane's log raw"
        );
    }
    // Unknown backends and bad parameters are refused.
    let unknown = c.plane(&["logs", "nosuchbackend00"]).await?;
    ensure!(!unknown.status.success());
    ensure!(
        String::from_utf8_lossy(&unknown.stderr).contains("no backend"),
        "{unknown:?}"
    );
    let bad = curl(&[&format!("{}/v1/backends/{id}/logs?follow=maybe", c.api)])?;
    ensure!(bad.status == 400 && bad.body.contains("follow"), "{bad:?}");
    Ok(())
}

/// A running backend's idle timeout changes live (`plane set-idle`): the sweeper uses the new
/// one at once, and an event stream open from before sends it as one `updated` event between
/// the state events. Out-of-range values, unknown and ended backends are refused clearly.
pub async fn idle_timeout_changes_live(c: &Cluster) -> anyhow::Result<()> {
    use plane_client::BackendEvent;
    let record = c.spawn_ready("", &["--idle", "600"]).await?;
    let id = id_of(&record)?;
    let client = plane_client::ApiClient::new(&c.api)?;
    let mut events = client.events(&id).await?;
    let first = events.next_event().await.context("the first event")??;
    ensure!(
        matches!(&first, BackendEvent::State(r) if r.state == BackendState::Ready),
        "{first:?}"
    );

    // Long enough that the record is written before the sweep (the backend has been idle since
    // it got ready), short enough to be seen here.
    let updated = c.plane_json(&["set-idle", &id, "3"]).await?;
    ensure!(updated["max_idle_secs"] == 3, "{updated}");
    ensure!(updated["state"] == "ready", "{updated}");
    // Swept seconds after, not ten minutes.
    let mut kinds = Vec::new();
    loop {
        let next = tokio::time::timeout(STATE_TIMEOUT, events.next_event())
            .await
            .context("the backend was not swept with its new idle timeout")?;
        let Some(event) = next else { break };
        let event = event?;
        kinds.push(match &event {
            BackendEvent::Updated(r) => {
                ensure!(
                    r.max_idle_secs == 3 && r.state == BackendState::Ready,
                    "{r:?}"
                );
                "updated".to_owned()
            }
            BackendEvent::State(r) => {
                if r.state == BackendState::Terminated {
                    ensure!(r.reason == Some(TerminationReason::Swept), "{r:?}");
                }
                r.state.as_str().to_owned()
            }
        });
    }
    ensure!(
        kinds.first().map(String::as_str) == Some("updated")
            && kinds.iter().filter(|k| *k == "updated").count() == 1
            && kinds.last().map(String::as_str) == Some("terminated"),
        "events after the change: {kinds:?}"
    );

    let ended = c.plane(&["set-idle", &id, "5"]).await?;
    let stderr = String::from_utf8_lossy(&ended.stderr);
    ensure!(
        !ended.status.success() && stderr.contains("409") && stderr.contains("ended"),
        "{stderr}"
    );
    let unknown = c.plane(&["set-idle", "nosuchbackend00", "5"]).await?;
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    ensure!(
        !unknown.status.success() && stderr.contains("404"),
        "{stderr}"
    );
    let url = format!("{}/v1/backends/{id}", c.api);
    for body in [
        r#"{"max_idle_secs": 0}"#,
        r#"{"max_idle_secs": 1, "image": "x"}"#,
        "{}",
        "nope",
    ] {
        let refused = curl(&[
            "-X",
            "PATCH",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &url,
        ])?;
        ensure!(refused.status == 400, "{body}: {refused:?}");
        ensure!(
            refused.json()?["error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid update")),
            "{refused:?}"
        );
    }
    Ok(())
}

/// Draining the drone (`plane drain`): it takes no new backend, serves the ones it has until
/// they are swept (`--wait` returns then, the drone `drained`), takes backends again once the
/// drain is cancelled, and with a deadline terminates what still runs when it passes.
pub async fn drain_waits_for_backends_and_can_be_cancelled(c: &Cluster) -> anyhow::Result<()> {
    let drones = c.plane_json(&["drones"]).await?;
    let drone = drones[0]["id"].as_str().context("a drone")?.to_owned();
    let kept = id_of(&c.spawn_ready("", &["--idle", "600"]).await?)?;
    let draining = c.plane_json(&["drain", &drone]).await?;
    ensure!(
        draining["state"] == "draining" && draining["draining"] == true,
        "{draining}"
    );
    let listed = c.plane_json(&["drones"]).await?;
    ensure!(listed[0]["state"] == "draining", "{listed}");

    let refused = c
        .plane(&["spawn", "--command", &super::backend_bin()])
        .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("503"),
        "no new backend: {stderr}"
    );
    let served = c.get(&c.host(&kept), "/", &[])?;
    ensure!(
        served.status == 200,
        "the backend it runs is still served: {served:?}"
    );

    let mut wait = std::process::Command::new(super::plane_bin());
    wait.args(["drain", &drone, "--wait", "--api", &c.api]);
    let wait = plane_test_support::ChildGuard::spawn("drain --wait", wait)?;
    c.plane_json(&["set-idle", &kept, "1"]).await?;
    let (exit, output) = tokio::task::spawn_blocking(move || {
        let exit = wait.wait_exit(STATE_TIMEOUT);
        (exit, wait.output_so_far())
    })
    .await?;
    ensure!(exit?.success(), "plane drain --wait: {output}");
    ensure!(output.contains("drained"), "{output}");
    let swept = c.status(&kept).await?;
    ensure!(swept["reason"] == "swept", "{swept}");

    let live = c.plane_json(&["drain", &drone, "--cancel"]).await?;
    ensure!(
        live["state"] == "live" && live["draining"] == false,
        "{live}"
    );
    let doomed = id_of(&c.spawn_ready("", &["--idle", "600"]).await?)?;
    let timed = c.plane_json(&["drain", &drone, "--deadline", "1"]).await?;
    ensure!(timed["drain_deadline"].is_u64(), "{timed}");
    let events = c.watch_until_terminated(&doomed).await?;
    let last = events.last().context("events")?;
    ensure!(
        last["reason"] == "terminated",
        "terminated at the deadline: {last}"
    );
    plane_test_support::eventually(STATE_TIMEOUT, "the drone drained", || async {
        let listed = c.plane_json(&["drones"]).await?;
        Ok((listed[0]["state"] == "drained").then_some(()))
    })
    .await?;
    let live = c.plane_json(&["drain", &drone, "--cancel"]).await?;
    ensure!(live["state"] == "live", "{live}");
    c.spawn_ready("", &["--idle", "5"]).await?;

    let unknown = c.plane(&["drain", "nosuchdrone"]).await?;
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    ensure!(
        !unknown.status.success() && stderr.contains("404"),
        "{stderr}"
    );
    let url = format!("{}/v1/drones/{drone}/drain", c.api);
    for body in [r#"{"deadline_secs": -1}"#, r#"{"deadline": 5}"#, "nope"] {
        let bad = curl(&["-X", "POST", "-d", body, &url])?;
        ensure!(bad.status == 400, "{body}: {bad:?}");
        let error = bad.json()?["error"].as_str().unwrap_or_default().to_owned();
        ensure!(
            error.starts_with("invalid drain request: "),
            "{body}: {error}"
        );
    }
    let listed = c.plane_json(&["drones"]).await?;
    ensure!(
        listed[0]["state"] == "live",
        "bad requests changed nothing: {listed}"
    );
    Ok(())
}

/// `GET /metrics` of the controller, parsed as Prometheus' text format.
fn scrape(c: &Cluster) -> anyhow::Result<prometheus_parse::Scrape> {
    let response = curl(&[&format!("{}/metrics", c.api)])?;
    ensure!(response.status == 200, "{response:?}");
    Ok(prometheus_parse::Scrape::parse(
        response.body.lines().map(|line| Ok(line.to_owned())),
    )?)
}

/// The value of the sample `name{label="value"}` (a counter or gauge).
fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: (&str, &str),
) -> anyhow::Result<f64> {
    use prometheus_parse::Value;
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .with_context(|| format!("no {name}{{{}=\"{}\"}}", label.0, label.1))?;
    match found.value {
        Value::Counter(v) | Value::Gauge(v) => Ok(v),
        ref other => anyhow::bail!("{name}: not a counter or gauge: {other:?}"),
    }
}

/// How many observations the histogram `name` holds (its `+Inf` bucket).
fn observations(scrape: &prometheus_parse::Scrape, name: &str) -> anyhow::Result<f64> {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .with_context(|| format!("no histogram {name}"))?;
    match &found.value {
        prometheus_parse::Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .context("no +Inf bucket"),
        other => anyhow::bail!("{name}: not a histogram: {other:?}"),
    }
}

/// Waits until the scraped `plane_backends` gauges agree with the API's listing, state by state
/// (a backend of an earlier flow may change state between the two reads: they are retried).
async fn gauges_agree_with_listing(c: &Cluster) -> anyhow::Result<()> {
    plane_test_support::eventually(
        STATE_TIMEOUT,
        "backend gauges matching the listing",
        || async {
            let scraped = scrape(c)?;
            let listed = c.plane_json(&["list"]).await?;
            let listed = listed.as_array().context("a list")?;
            for state in BackendState::ALL {
                let count = listed
                    .iter()
                    .filter(|b| b["state"] == state.as_str())
                    .count();
                if sample(&scraped, "plane_backends", ("state", state.as_str()))? != count as f64 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// The controller's `/metrics` (parsed as Prometheus text, not searched as a string): a spawn
/// counts as placed, its readiness lands in the spawn → ready histogram, backends (before and
/// after one ends) and drones are counted by state.
pub async fn metrics_follow_the_cluster(c: &Cluster) -> anyhow::Result<()> {
    let before = scrape(c)?;
    let id = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
    let after = scrape(c)?;
    let placed = ("outcome", "placed");
    ensure!(
        sample(&after, "plane_spawns_total", placed)?
            == sample(&before, "plane_spawns_total", placed)? + 1.0
    );
    ensure!(
        observations(&after, "plane_spawn_ready_seconds")?
            == observations(&before, "plane_spawn_ready_seconds")? + 1.0
    );
    ensure!(sample(&after, "plane_backends", ("state", "ready"))? >= 1.0);
    ensure!(sample(&after, "plane_drones", ("state", "live"))? == 1.0);
    ensure!(sample(&after, "plane_drones", ("state", "lost"))? == 0.0);
    gauges_agree_with_listing(c).await?;

    let output = c.plane(&["terminate", &id]).await?;
    ensure!(output.status.success(), "{output:?}");
    c.watch_until_terminated(&id).await?;
    gauges_agree_with_listing(c).await?;
    Ok(())
}

/// `GET /metrics` of the drone, parsed as Prometheus' text format.
fn scrape_drone(c: &Cluster) -> anyhow::Result<prometheus_parse::Scrape> {
    let response = curl(&[&c.drone_metrics_url()?])?;
    ensure!(response.status == 200, "{response:?}");
    Ok(prometheus_parse::Scrape::parse(
        response.body.lines().map(|line| Ok(line.to_owned())),
    )?)
}

/// The value of the unlabelled sample `name`, 0 when absent (a counter not bumped yet).
fn plain_sample(scrape: &prometheus_parse::Scrape, name: &str) -> anyhow::Result<f64> {
    use prometheus_parse::Value;
    match scrape.samples.iter().find(|s| s.metric == name) {
        None => Ok(0.0),
        Some(found) => match found.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Ok(v),
            ref other => anyhow::bail!("{name}: not a counter or gauge: {other:?}"),
        },
    }
}

/// The drone's `/metrics` (parsed as Prometheus text): a backend's series count the requests
/// and bytes the proxy carried for it and an open WebSocket as an active connection; the
/// proxy's 404s are counted by status; once the backend is swept its series are gone and the
/// sweep is counted.
pub async fn drone_metrics_follow_traffic(c: &Cluster) -> anyhow::Result<()> {
    let id = id_of(&c.spawn_ready("", &["--idle", "1"]).await?)?;
    let backend = ("backend", id.as_str());
    let before = scrape_drone(c)?;
    ensure!(sample(&before, "plane_backend_requests_total", backend)? == 0.0);
    ensure!(sample(&before, "plane_backend_active_connections", backend)? == 0.0);
    let not_found = |s: &prometheus_parse::Scrape| {
        sample(s, "plane_proxy_errors_total", ("status", "404")).unwrap_or(0.0)
    };
    let sweeps = plain_sample(&before, "plane_sweeps_total")?;

    let upload = "x".repeat(5000);
    let posted = c.get(&c.host(&id), "/info", &["--data-binary", &upload])?;
    ensure!(posted.status == 200, "{posted:?}");
    let got = c.get(&c.host(&id), "/", &[])?;
    ensure!(got.status == 200, "{got:?}");
    let unknown = c.get(&format!("nobody.{}", c.cluster), "/", &[])?;
    ensure!(unknown.status == 404, "{unknown:?}");
    // A WebSocket is active while open.
    let url = format!("ws://{}:{}/ws", c.host(&id), c.proxy_port);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.proxy_port)).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await?;
    ws.send(Message::text("ping")).await?;
    ws.next().await.context("echo")??;
    let open = scrape_drone(c)?;
    ensure!(sample(&open, "plane_backend_active_connections", backend)? == 1.0);
    ws.close(None).await?;
    drop(ws);

    let after = scrape_drone(c)?;
    ensure!(sample(&after, "plane_backend_requests_total", backend)? == 3.0);
    let received = sample(&after, "plane_backend_received_bytes_total", backend)?;
    ensure!(received >= 5000.0, "received {received}");
    let sent = sample(&after, "plane_backend_sent_bytes_total", backend)?;
    let expected = (posted.body.len() + got.body.len()) as f64;
    ensure!(sent >= expected, "sent {sent}, bodies alone {expected}");
    ensure!(not_found(&after) == not_found(&before) + 1.0);

    c.watch_until_terminated(&id).await?;
    let gone = scrape_drone(c)?;
    ensure!(
        !gone
            .samples
            .iter()
            .any(|s| s.labels.get("backend") == Some(id.as_str())),
        "series of an ended backend"
    );
    // At least: a backend of an earlier flow may be swept meanwhile too.
    ensure!(plain_sample(&gone, "plane_sweeps_total")? >= sweeps + 1.0);
    Ok(())
}

/// `dig @the cluster's DNS server ARGS`, bounded; its whole output.
fn dig(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    plane_test_support::dig::dig(c.dns.context("this cluster serves no DNS")?, args)
}

/// The cluster's DNS server (UDP and TCP, queried with dig): a backend's name resolves to its
/// drone's address from the moment it is scheduled until it terminates; the apex has SOA and
/// NS; NXDOMAIN, NODATA and REFUSED where they belong; malformed packets are answered or
/// dropped and the server goes on.
pub async fn dns_answers_for_backends_and_the_zone(c: &Cluster) -> anyhow::Result<()> {
    let zone = &c.cluster;
    // Scheduled, not yet ready (it never listens): its name already resolves.
    let never = c.plane_json(&["spawn", "--command", "sleep 30"]).await?;
    let never = id_of(&never)?;
    let text = dig(c, &[&format!("{never}.{zone}"), "A"])?;
    ensure!(status(&text) == ("NOERROR", true), "{text}");
    ensure!(section(&text, "ANSWER") == [("A", "127.0.0.1")], "{text}");
    let output = c.plane(&["terminate", &never]).await?;
    ensure!(output.status.success(), "{output:?}");

    let record = c.spawn_ready("", &["--idle", "60"]).await?;
    let id = id_of(&record)?;
    let name = format!("{id}.{zone}");
    for transport in ["+notcp", "+tcp"] {
        let text = dig(c, &[transport, &name, "A"])?;
        ensure!(status(&text) == ("NOERROR", true), "{transport}: {text}");
        ensure!(section(&text, "ANSWER") == [("A", "127.0.0.1")], "{text}");
        let ttl_10 = text.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(format!("{name}.").as_str()) && fields.next() == Some("10")
        });
        ensure!(ttl_10, "TTL 10 s: {text}");
    }
    // The name exists, without these types: NODATA, with the SOA.
    for kind in ["AAAA", "MX", "TXT"] {
        let text = dig(c, &[&name, kind])?;
        ensure!(status(&text) == ("NOERROR", true), "{kind}: {text}");
        ensure!(section(&text, "ANSWER").is_empty(), "{kind}: {text}");
        ensure!(
            section(&text, "AUTHORITY").first().map(|r| r.0) == Some("SOA"),
            "{text}"
        );
    }
    // The apex.
    let text = dig(c, &[zone, "SOA"])?;
    ensure!(
        section(&text, "ANSWER").first().map(|r| r.0) == Some("SOA"),
        "{text}"
    );
    let text = dig(c, &["+tcp", zone, "NS"])?;
    ensure!(
        section(&text, "ANSWER") == [("NS", format!("ns.{zone}.").as_str())],
        "{text}"
    );
    // Names that do not exist, and names outside the zone.
    for missing in [format!("nosuchbackend00.{zone}"), format!("a.{id}.{zone}")] {
        let text = dig(c, &[&missing, "A"])?;
        ensure!(status(&text) == ("NXDOMAIN", true), "{missing}: {text}");
        ensure!(
            section(&text, "AUTHORITY").first().map(|r| r.0) == Some("SOA"),
            "{text}"
        );
    }
    let text = dig(c, &["example.com", "A"])?;
    ensure!(status(&text).0 == "REFUSED", "{text}");
    // EDNS or not, large buffer or small: answered.
    for edns in ["+noedns", "+bufsize=512", "+bufsize=4096"] {
        let text = dig(c, &[edns, &name, "A"])?;
        ensure!(section(&text, "ANSWER").len() == 1, "{edns}: {text}");
    }

    // Malformed packets: each answered or dropped, and the server goes on answering.
    let dns = c.dns.context("DNS")?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut oversized = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for _ in 0..5 {
        oversized.push(63);
        oversized.extend([b'a'; 63]);
    }
    oversized.extend([0, 0, 1, 0, 1]);
    let garbage: Vec<u8> = (0..512u32).map(|i| (i * 7919 % 251) as u8).collect();
    let packets: [&[u8]; 5] = [
        // A truncated header.
        &[0x12, 0x34, 0x01],
        // A question whose name points at itself (a compression loop).
        &[
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1,
        ],
        // A name over 255 bytes.
        &oversized,
        // Garbage.
        &garbage,
        // A question count that promises more than there is.
        &[0x12, 0x34, 0x01, 0x00, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0],
    ];
    for packet in packets {
        socket.send_to(packet, dns)?;
        let text = dig(c, &[&name, "A"])?;
        ensure!(
            section(&text, "ANSWER").len() == 1,
            "after {packet:?}: {text}"
        );
    }
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(dns)?;
        tcp.write_all(&[0x00, 0x03, 0x12, 0x34])?;
        tcp.write_all(&garbage)?;
    }
    let text = dig(c, &["+tcp", &name, "A"])?;
    ensure!(
        section(&text, "ANSWER").len() == 1,
        "after TCP garbage: {text}"
    );

    // Terminated: the name goes.
    let output = c.plane(&["terminate", &id]).await?;
    ensure!(output.status.success(), "{output:?}");
    c.watch_until_terminated(&id).await?;
    plane_test_support::eventually(STATE_TIMEOUT, "the name gone", || async {
        let text = dig(c, &[&name, "A"])?;
        Ok((status(&text).0 == "NXDOMAIN").then_some(()))
    })
    .await?;
    Ok(())
}

/// A spawn of the test backend through the client library, idle for a minute, with a token.
fn keyed_spawn() -> plane_protocol::spawn_request::SpawnRequest {
    plane_protocol::spawn_request::SpawnRequest {
        executable: plane_protocol::spawn_request::SpawnExecutable {
            command: vec![super::backend_bin()],
            ..Default::default()
        },
        max_idle_secs: Some(60),
        env: Default::default(),
        require_token: true,
        resources: Default::default(),
        ready_path: None,
    }
}

/// A key no other flow or run uses.
fn fresh_key(name: &str) -> anyhow::Result<plane_protocol::keys::BackendKey> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    Ok(plane_protocol::keys::BackendKey::new(format!(
        "{name} #{nanos}"
    ))?)
}

/// `POST /v1/connect`: 50 concurrent connects for one key start exactly one backend and all
/// answer with it and its token; the backend sees `PLANE_KEY`, `plane status` shows the key
/// (and no token); another key gets a backend of its own; once the key's backend has ended,
/// the next connect (here `plane connect`) starts a new one.
pub async fn connect_by_key(c: &Cluster) -> anyhow::Result<()> {
    use plane_protocol::keys::ConnectRequest;
    let client = plane_client::ApiClient::new(&c.api)?;
    let key = fresh_key("doc 42")?;
    let request = ConnectRequest {
        key: key.clone(),
        spawn: keyed_spawn(),
        wake: false,
    };
    let answers = futures::future::join_all((0..50).map(|_| client.connect(&request, None))).await;
    let answers = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let created = answers.iter().filter(|a| a.created).count();
    ensure!(
        created == 1,
        "{created} of 50 concurrent connects created a backend"
    );
    let first = &answers[0];
    let id = first.record.id.to_string();
    let token = first
        .token
        .clone()
        .context("the answer carries the token")?;
    for answer in &answers {
        ensure!(
            answer.record.id.as_str() == id,
            "two backends for one key: {answer:?}"
        );
        ensure!(
            answer.token.as_ref() == Some(&token),
            "another token: {answer:?}"
        );
        ensure!(answer.record.key.as_ref() == Some(&key), "{answer:?}");
        ensure!(
            answer.key_url.is_none(),
            "no key URL without wake: {answer:?}"
        );
    }

    // The CLI, waiting until it is ready: the same backend, not created.
    let ready = c
        .plane_json(&["connect", key.as_str(), "--wait", "--command", "unused"])
        .await?;
    ensure!(
        ready["id"] == id.as_str() && ready["created"] == false,
        "{ready}"
    );
    ensure!(ready["state"] == "ready", "{ready}");
    ensure!(ready["token"] == token.as_str(), "{ready}");

    let bearer = format!("Authorization: Bearer {}", token.as_str());
    let info = c.get(&c.host(&id), "/info", &["-H", &bearer])?.json()?;
    ensure!(info["env"]["PLANE_KEY"] == key.as_str(), "env: {info}");
    let status = c.status(&id).await?;
    ensure!(status["key"] == key.as_str(), "{status}");
    ensure!(
        status.get("token").is_none(),
        "status shows the token: {status}"
    );

    let other = client
        .connect(
            &ConnectRequest {
                key: fresh_key("doc 43")?,
                ..request.clone()
            },
            None,
        )
        .await?;
    ensure!(other.created && other.record.id.as_str() != id, "{other:?}");

    // Ended: the key is free, and the next connect starts another backend.
    c.plane_json(&["terminate", &id]).await?;
    c.watch_until_terminated(&id).await?;
    let again = c
        .plane_json(&[
            "connect",
            key.as_str(),
            "--command",
            &super::backend_bin(),
            "--idle",
            "60",
        ])
        .await?;
    ensure!(again["created"] == true, "{again}");
    ensure!(
        again["id"] != id.as_str(),
        "the ended backend again: {again}"
    );
    let again_id = id_of(&again)?;
    for id in [again_id, other.record.id.to_string()] {
        c.plane_json(&["terminate", &id]).await?;
        c.watch_until_terminated(&id).await?;
    }
    Ok(())
}

/// A spawn or connect retried with the same `Idempotency-Key` gets the first answer (token
/// included, marked `Idempotent-Replayed`) instead of a second backend, also when the retries
/// race; the same key with another body is refused (422); a malformed key is refused (400).
pub async fn idempotent_retries(c: &Cluster) -> anyhow::Result<()> {
    use plane_client::ClientError;
    use plane_protocol::keys::ConnectRequest;
    let client = plane_client::ApiClient::new(&c.api)?;
    let spawn = keyed_spawn();
    let retry_key = fresh_key("retry")?.as_str().replace(' ', "-");
    let first = client.spawn_once(&spawn, Some(&retry_key)).await?;
    let again = client.spawn_once(&spawn, Some(&retry_key)).await?;
    ensure!(first.record.id == again.record.id, "{first:?} / {again:?}");
    ensure!(
        first.token.is_some() && first.token == again.token,
        "tokens differ"
    );
    let mut ids = vec![first.record.id.to_string()];

    let racing_key = fresh_key("race")?.as_str().replace(' ', "-");
    let racing =
        futures::future::join_all((0..10).map(|_| client.spawn_once(&spawn, Some(&racing_key))))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
    ensure!(
        racing.iter().all(|a| a.record.id == racing[0].record.id),
        "racing retries made several backends"
    );
    ids.push(racing[0].record.id.to_string());

    let changed = plane_protocol::spawn_request::SpawnRequest {
        max_idle_secs: Some(61),
        ..spawn.clone()
    };
    match client.spawn_once(&changed, Some(&retry_key)).await {
        Err(ClientError::Api { status, .. }) if status.as_u16() == 422 => {}
        other => anyhow::bail!("the key reused with another body: {other:?}"),
    }
    let plain = client.spawn(&spawn).await?;
    ensure!(plain.record.id != first.record.id, "no key, no replay");
    ids.push(plain.record.id.to_string());

    let connect = ConnectRequest {
        key: fresh_key("doc")?,
        spawn: spawn.clone(),
        wake: false,
    };
    let connect_key = fresh_key("connect")?.as_str().replace(' ', "-");
    let connected = client.connect(&connect, Some(&connect_key)).await?;
    let replayed = client.connect(&connect, Some(&connect_key)).await?;
    ensure!(
        connected.created && replayed == connected,
        "{connected:?} / {replayed:?}"
    );
    ids.push(connected.record.id.to_string());

    // On the wire: the replay says so; a malformed key is the caller's error.
    let body = serde_json::to_string(&spawn)?;
    let url = format!("{}/v1/backends", c.api);
    let idempotency = format!("Idempotency-Key: {retry_key}");
    let raw = curl(&[
        "-i",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        &idempotency,
        "--data",
        &body,
        &url,
    ])?;
    ensure!(raw.status == 201, "{raw:?}");
    ensure!(
        raw.body
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{raw:?}"
    );
    let bad_key = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("Idempotency-Key: {}", "x".repeat(300)),
        "--data",
        &body,
        &url,
    ])?;
    ensure!(bad_key.status == 400, "{bad_key:?}");

    for id in ids {
        c.plane_json(&["terminate", &id]).await?;
        c.watch_until_terminated(&id).await?;
    }
    Ok(())
}

/// Wake on request: a key connected with `wake` gets a stable `key_url` (`k-{label}`), which
/// reaches its backend with the backend's token (and not without); once the backend is swept,
/// requests without the token (or with another) wake nothing, and a burst of 20 requests to that URL starts exactly one new backend with the key's spec and the
/// same token, and all 20 are served by it; after another sweep a WebSocket through the key's
/// URL wakes it too. DNS answers the key's name; a draining drone wakes nothing (503 with
/// `Retry-After`); unknown keys and keys that cannot wake are 404.
pub async fn wake_on_request(c: &Cluster) -> anyhow::Result<()> {
    use plane_protocol::keys::ConnectRequest;
    let client = plane_client::ApiClient::new(&c.api)?;
    let key = fresh_key("sleepy doc")?;
    let spawn = plane_protocol::spawn_request::SpawnRequest {
        max_idle_secs: Some(1),
        ..keyed_spawn()
    };
    let connect = ConnectRequest {
        key: key.clone(),
        spawn: spawn.clone(),
        wake: true,
    };
    let first = client.connect(&connect, None).await?;
    let token = first.token.clone().context("a token")?;
    let key_url = first.key_url.clone().context("a key URL")?;
    let host = key_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', ':']).next())
        .context("the key URL's host")?
        .to_string();
    ensure!(
        host.starts_with("k-") && host.ends_with(&format!(".{}", c.cluster)),
        "{key_url}"
    );
    ensure!(
        !host.contains(&key.as_str().replace(' ', "")),
        "the URL shows the key"
    );
    let first_id = first.record.id.to_string();
    let bearer = format!("Authorization: Bearer {}", token.as_str());

    // While it runs, its key's URL leads to it, guarded by its token.
    let info = c.get(&host, "/info", &["-H", &bearer])?.json()?;
    ensure!(
        info["env"]["PLANE_BACKEND_ID"] == first_id.as_str(),
        "{info}"
    );
    ensure!(info["env"]["PLANE_KEY"] == key.as_str(), "{info}");
    let without = c.get(&host, "/info", &[])?;
    ensure!(without.status == 401, "no token: {without:?}");
    if c.dns.is_some() {
        let answer = dig(c, &["A", &host, "+short"])?;
        ensure!(answer.trim() == "127.0.0.1", "DNS of the key: {answer:?}");
    }

    // Swept: a request without the key's token (or with another) wakes nothing.
    c.watch_until_terminated(&first_id).await?;
    let tokenless = c.get(&host, "/info", &[])?;
    ensure!(
        tokenless.status == 401,
        "a wake without the token: {tokenless:?}"
    );
    let wrong = c.get(
        &host,
        "/info",
        &["-H", "Authorization: Bearer 0000wrong0000"],
    )?;
    ensure!(wrong.status == 403, "a wake with another token: {wrong:?}");
    let started = c
        .plane_json(&["list"])
        .await?
        .as_array()
        .context("a list")?
        .iter()
        .filter(|b| b["key"] == key.as_str())
        .count();
    ensure!(started == 1, "refused wakes started backends: {started}");

    // Then a burst of 20 with the token wakes it once.
    let burst = futures::future::join_all((0..20).map(|_| {
        let url = format!("http://127.0.0.1:{}/info", c.proxy_port);
        let (host, bearer) = (format!("Host: {host}"), bearer.clone());
        tokio::task::spawn_blocking(move || curl(&["-H", &host, "-H", &bearer, &url]))
    }))
    .await;
    let mut served_by = std::collections::BTreeSet::new();
    for answer in burst {
        let answer = answer??;
        ensure!(answer.status == 200, "a woken request: {answer:?}");
        served_by.insert(answer.json()?["env"]["PLANE_BACKEND_ID"].to_string());
    }
    ensure!(
        served_by.len() == 1,
        "one backend served the burst: {served_by:?}"
    );
    let woken: Vec<serde_json::Value> = c
        .plane_json(&["list"])
        .await?
        .as_array()
        .context("a list")?
        .iter()
        .filter(|b| b["key"] == key.as_str() && b["id"] != first_id.as_str())
        .cloned()
        .collect();
    ensure!(woken.len() == 1, "one backend woken: {woken:?}");
    let woken_id = id_of(&woken[0])?;
    ensure!(
        woken[0]["max_idle_secs"] == 1,
        "the key's spec: {}",
        woken[0]
    );

    // Swept again; a WebSocket through the key's URL wakes it.
    c.watch_until_terminated(&woken_id).await?;
    let url = format!("ws://{host}:{}/ws", c.proxy_port);
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token.as_str()).parse()?,
    );
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.proxy_port)).await?;
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .context("WebSocket handshake through the key's URL")?;
    ensure!(response.status() == 101, "handshake: {response:?}");
    ws.send(Message::text("awake?")).await?;
    let echo = ws.next().await.context("echo")??;
    ensure!(echo == Message::text("awake?"), "echo: {echo:?}");
    ws.close(None).await?;
    drop(ws);
    let third = c
        .last_listed(|b| b["key"] == key.as_str())
        .await
        .and_then(|b| id_of(&b))?;
    ensure!(third != woken_id && third != first_id, "a third backend");
    c.watch_until_terminated(&third).await?;

    // A draining drone wakes nothing.
    let drones = c.plane_json(&["drones"]).await?;
    let drone = drones[0]["id"].as_str().context("a drone")?.to_string();
    c.plane_json(&["drain", &drone]).await?;
    let refused = c.get(&host, "/info", &["-H", &bearer, "-i"])?;
    c.plane_json(&["drain", &drone, "--cancel"]).await?;
    ensure!(
        refused.status == 503,
        "wake on a draining drone: {refused:?}"
    );
    ensure!(
        refused.body.to_ascii_lowercase().contains("retry-after:"),
        "{refused:?}"
    );

    // Names that cannot wake.
    let unknown = format!("k-{}.{}", "a".repeat(26), c.cluster);
    let nobody = c.get(&unknown, "/", &[])?;
    ensure!(nobody.status == 404, "an unknown key: {nobody:?}");
    let plain = client
        .connect(
            &ConnectRequest {
                key: fresh_key("awake only")?,
                spawn,
                wake: false,
            },
            None,
        )
        .await?;
    let plain_host = format!(
        "k-{}.{}",
        plain
            .record
            .key
            .as_ref()
            .context("its key")?
            .label(&c.cluster),
        c.cluster
    );
    let plain_id = plain.record.id.to_string();
    c.watch_until_terminated(&plain_id).await?;
    let asleep = c.get(&plain_host, "/", &[])?;
    ensure!(
        asleep.status == 404,
        "a key connected without wake: {asleep:?}"
    );
    Ok(())
}
