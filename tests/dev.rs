//! End-to-end through `plane dev`: the same flows as over NATS, in one process with the
//! in-memory bus, and Ctrl-C stopping every backend it started.

mod common;

use common::flows;
use common::{bounded, id_of, no_process_left, Cluster};

/// Every flow, with the whole of `plane dev` (controller, drone, proxy) on one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_flows_through_plane_dev() -> anyhow::Result<()> {
    bounded(async {
        let c = Cluster::dev_with(&["--threads", "1"]).await?;
        flows::run("route", flows::route_headers_env_and_delete(&c)).await?;
        flows::run("websocket", flows::websocket_keeps_backend_alive(&c)).await?;
        flows::run(
            "streaming",
            flows::streaming_response_keeps_backend_alive(&c),
        )
        .await?;
        flows::run("idle", flows::idle_backend_is_swept(&c)).await?;
        flows::run("set idle", flows::idle_timeout_changes_live(&c)).await?;
        flows::run(
            "drain",
            flows::drain_waits_for_backends_and_can_be_cancelled(&c),
        )
        .await?;
        flows::run("metrics", flows::metrics_follow_the_cluster(&c)).await?;
        flows::run("drone metrics", flows::drone_metrics_follow_traffic(&c)).await?;
        flows::run("logs", flows::logs_are_kept_and_followed(&c)).await?;
        flows::run("dns", flows::dns_answers_for_backends_and_the_zone(&c)).await?;
        flows::run("exit code", flows::exit_code_is_reported(&c)).await?;
        flows::run(
            "missing command",
            flows::missing_command_is_error_loading(&c),
        )
        .await?;
        flows::run("unknown hosts", flows::unknown_hosts_are_refused(&c)).await?;
        flows::run("bad input", flows::bad_api_input_is_refused(&c)).await?;
        flows::run("held", flows::requests_wait_for_a_starting_backend(&c)).await?;
        flows::run("token", flows::token_guards_a_backend(&c)).await?;
        flows::run("connect", flows::connect_by_key(&c)).await?;
        flows::run("idempotent", flows::idempotent_retries(&c)).await?;
        flows::run("wake", flows::wake_on_request(&c)).await?;
        flows::run(
            "ready timeout",
            flows::a_backend_that_never_listens_times_out(&c),
        )
        .await?;
        Ok(())
    })
    .await
}

/// Ctrl-C (SIGINT) stops every backend `plane dev` started, even one that ignores SIGTERM,
/// and `plane dev` exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_every_backend() -> anyhow::Result<()> {
    bounded(async {
        let mut c = Cluster::dev().await?;
        let polite = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let stubborn = id_of(&c.spawn_ready("--ignore-sigterm", &["--idle", "60"]).await?)?;
        let dev = c.drone.take().expect("the dev process");
        dev.signal(libc::SIGINT)?;
        let status =
            tokio::task::spawn_blocking(move || dev.wait_exit(common::STATE_TIMEOUT)).await??;
        anyhow::ensure!(status.success(), "plane dev exit: {status}");
        for id in [&polite, &stubborn] {
            no_process_left(id).await?;
        }
        Ok(())
    })
    .await
}

/// A drone at capacity takes no more backends: the spawn fails with a clear 503, and frees
/// its place once a backend ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drone_takes_no_more_backends() -> anyhow::Result<()> {
    bounded(async {
        let c = Cluster::dev_with(&["--capacity", "1"]).await?;
        let first = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let refused = c
            .plane(&["spawn", "--command", &common::backend_bin()])
            .await?;
        anyhow::ensure!(!refused.status.success(), "a second backend was accepted");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        anyhow::ensure!(
            stderr.contains("503") && stderr.contains("no drone available"),
            "says why: {stderr}"
        );
        c.plane_json(&["terminate", &first]).await?;
        c.watch_until_terminated(&first).await?;
        // The drone's next heartbeat tells the scheduler it has room again.
        plane_test_support::eventually(common::STATE_TIMEOUT, "room for a new backend", || async {
            Ok(c.spawn_ready("", &["--idle", "60"]).await.ok())
        })
        .await?;
        Ok(())
    })
    .await
}

/// An answer too large for UDP: a client without EDNS (512 bytes at most) gets it truncated
/// (TC, no records) and then whole over TCP; an EDNS client that takes 1232 bytes gets it
/// whole over UDP. The zone's long SOA names make the answer 552 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_too_large_for_udp_are_truncated() -> anyhow::Result<()> {
    use plane_test_support::dig::{dig, flags, section};
    bounded(async {
        let label = "a".repeat(60);
        let ns = [label.as_str(); 4].join(".");
        // Other labels than the NS name's, so that compression does not shrink the answer.
        let other = "c".repeat(60);
        let email = format!("{}@{}", "b".repeat(60), [other.as_str(); 3].join("."));
        let c = Cluster::dev_with(&["--dns-ns", &ns, "--dns-soa-email", &email]).await?;
        let dns = c.dns.expect("plane dev serves DNS");
        let zone = c.cluster.as_str();

        let cut = dig(dns, &["+noedns", "+ignore", "SOA", zone])?;
        anyhow::ensure!(flags(&cut).contains(&"tc"), "truncated: {cut}");
        anyhow::ensure!(section(&cut, "ANSWER").is_empty(), "{cut}");
        let size = |text: &str| -> usize {
            text.split("MSG SIZE  rcvd: ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX)
        };
        anyhow::ensure!(size(&cut) <= 512, "{cut}");

        // dig itself retries over TCP on TC, as resolvers do.
        let retried = dig(dns, &["+noedns", "SOA", zone])?;
        anyhow::ensure!(
            retried.contains("Truncated, retrying in TCP mode"),
            "{retried}"
        );
        for whole in [
            retried,
            dig(dns, &["+tcp", "+noedns", "SOA", zone])?,
            dig(dns, &["+bufsize=1232", "SOA", zone])?,
        ] {
            anyhow::ensure!(!flags(&whole).contains(&"tc"), "{whole}");
            let answer = section(&whole, "ANSWER");
            anyhow::ensure!(answer.len() == 1 && answer[0].0 == "SOA", "{whole}");
            anyhow::ensure!(answer[0].1 == format!("{ns}."), "{whole}");
            anyhow::ensure!(size(&whole) > 512, "{whole}");
        }
        // A small answer to the same client is not cut.
        let small = dig(dns, &["+noedns", "+ignore", "NS", zone])?;
        anyhow::ensure!(
            !flags(&small).contains(&"tc") && section(&small, "ANSWER").len() == 1,
            "{small}"
        );
        Ok(())
    })
    .await
}

/// A drone that advertises an IPv6 address: its backends' names answer `AAAA` with it, and
/// `A` with NODATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_drone_gets_aaaa_records() -> anyhow::Result<()> {
    use plane_test_support::dig::{dig, section, status};
    bounded(async {
        let c = Cluster::dev_with(&["--ip", "::1"]).await?;
        let dns = c.dns.expect("plane dev serves DNS");
        // Scheduled is enough for the name to resolve; it never gets ready.
        let record = c.plane_json(&["spawn", "--command", "sleep 30"]).await?;
        let name = format!("{}.{}", id_of(&record)?, c.cluster);
        let aaaa = dig(dns, &[&name, "AAAA"])?;
        anyhow::ensure!(section(&aaaa, "ANSWER") == [("AAAA", "::1")], "{aaaa}");
        let a = dig(dns, &[&name, "A"])?;
        anyhow::ensure!(status(&a) == ("NOERROR", true), "{a}");
        anyhow::ensure!(section(&a, "ANSWER").is_empty(), "NODATA: {a}");
        let drones = c.plane_json(&["drones"]).await?;
        anyhow::ensure!(drones[0]["ip"] == "::1", "{drones}");
        Ok(())
    })
    .await
}
