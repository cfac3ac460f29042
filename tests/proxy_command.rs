//! `plane proxy`: the data plane alone, with static routes, in front of a real backend, driven
//! by curl: the named host is proxied (whatever its case and port), any other gets 404, and a
//! malformed route is refused at start; on one thread and on two (`SO_REUSEPORT` workers).

mod common;

use anyhow::ensure;
use common::{bounded, listening_backend, plane_bin, plane_proxy};
use plane_test_support::curl;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_proxy_their_host_and_nothing_else() -> anyhow::Result<()> {
    bounded(async {
        let (_backend, port) = listening_backend().await?;

        for threads in ["1", "2"] {
            let route = format!("App.Example.test=127.0.0.1:{port}");
            let (_proxy, addr) = plane_proxy(&[
                "--listen",
                "127.0.0.1:0",
                "--threads",
                threads,
                "--route",
                &route,
            ])?;
            let url = format!("http://{addr}/info");

            // Each curl is a new connection: with two threads both listening sockets take some.
            for _ in 0..8 {
                let routed = curl(&["-H", "Host: app.EXAMPLE.test:8443", &url])?;
                ensure!(routed.status == 200, "--threads {threads}: {routed:?}");
                ensure!(
                    routed.body.contains("app.EXAMPLE.test:8443"),
                    "--threads {threads}: the backend sees the Host: {routed:?}"
                );
            }
            for host in [
                "other.example.test",
                "example.test",
                "app.example.test.evil",
            ] {
                let unknown = curl(&["-H", &format!("Host: {host}"), &url])?;
                ensure!(
                    unknown.status == 404,
                    "--threads {threads}: {host}: {unknown:?}"
                );
            }
            let bad = curl(&["-H", "Host: bad host", &url])?;
            ensure!(bad.status == 400, "--threads {threads}: {bad:?}");
        }

        let refused = Command::new(plane_bin())
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--route",
                "app.test=nowhere",
            ])
            .output()?;
        ensure!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(stderr.contains("IP:PORT"), "{stderr}");
        Ok(())
    })
    .await
}
