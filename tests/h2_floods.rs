//! `plane proxy` under HTTP/2 floods: rapid-reset and CONTINUATION floods over prior-knowledge
//! h2c, twenty connections of each; every one is cut, curl still gets through over HTTP/2, and
//! the proxy's peak resident memory grows by less than 10 MiB.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, listening_backend, plane_proxy};
use plane_test_support::curl;
use plane_test_support::h2_flood;
use std::time::Duration;
use tokio::net::TcpStream;

/// The peak resident memory of process `pid` so far (`VmHWM`), in KiB: what a flood cost at
/// its height, even if it was given back after.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_and_cost_the_proxy_little_memory() -> anyhow::Result<()> {
    bounded(async {
        let (_backend, port) = listening_backend().await?;
        let route = format!("app.example.test=127.0.0.1:{port}");
        let (proxy, addr) = plane_proxy(&[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--route",
            &route,
        ])?;
        let url = format!("http://{addr}/");
        let h2_get = || {
            curl(&[
                "--http2-prior-knowledge",
                "-H",
                "Host: app.example.test",
                &url,
            ])
        };
        for _ in 0..20 {
            ensure!(h2_get()?.status == 200, "warm-up over h2c");
        }
        let before = peak_rss_kib(proxy.pid())?;

        let mut floods = Vec::new();
        for i in 0..40 {
            let addr = addr.clone();
            floods.push(tokio::spawn(async move {
                let attack = if i % 2 == 0 {
                    h2_flood::rapid_reset("app.example.test", 1000)
                } else {
                    h2_flood::endless_continuation("app.example.test", 512 * 1024)
                };
                let mut stream = TcpStream::connect(&addr).await?;
                anyhow::Ok(
                    h2_flood::is_cut_off(&mut stream, &attack, Duration::from_secs(10)).await,
                )
            }));
        }
        for flood in floods {
            ensure!(flood.await??, "a flood connection was not cut");
        }
        let served = h2_get()?;
        ensure!(served.status == 200, "served after the floods: {served:?}");
        let after = peak_rss_kib(proxy.pid())?;
        ensure!(
            after.saturating_sub(before) < 10 * 1024,
            "peak RSS grew from {before} KiB to {after} KiB"
        );
        Ok(())
    })
    .await
}
