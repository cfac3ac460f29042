//! The API's bearer token, end to end: `plane controller` with `--api-token-file` refuses
//! callers without it, the CLI sends it from `--api-token-file` or `PLANE_API_TOKEN`, and an API
//! beyond loopback without a token does not start at all.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, plane_bin, start_controller_with};
use plane_test_support::{curl, NatsServer};
use std::process::Command;

const TOKEN: &str = "e2e-token-0123456789abcdefghijkl";

async fn plane(
    api: &str,
    args: &[&str],
    env_token: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new(plane_bin());
    command
        .args(args)
        .args(["--api", api])
        .env_remove("PLANE_API_TOKEN");
    if let Some(token) = env_token {
        command.env("PLANE_API_TOKEN", token);
    }
    command.kill_on_drop(true);
    Ok(
        tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
            .await
            .context("plane hung")??,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_needs_the_token_the_controller_was_given() -> anyhow::Result<()> {
    bounded(async {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let token_path = token_file.display().to_string();
        let (_controller, api) = start_controller_with(
            &nats.url(),
            "plane.test",
            &["--api-token-file", &token_path],
        )?;

        let refused = plane(&api, &["drones"], None).await?;
        ensure!(
            !refused.status.success(),
            "a call without the token succeeded"
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            stderr.contains("401") && stderr.contains("requires a token"),
            "{stderr}"
        );

        let wrong = plane(&api, &["drones"], Some("not-the-token-but-long-enough")).await?;
        ensure!(!wrong.status.success());
        ensure!(String::from_utf8_lossy(&wrong.stderr).contains("not valid"));

        let from_env = plane(&api, &["drones", "--json"], Some(TOKEN)).await?;
        ensure!(
            from_env.status.success(),
            "{}",
            String::from_utf8_lossy(&from_env.stderr)
        );
        let from_file = plane(
            &api,
            &["list", "--json", "--api-token-file", &token_path],
            None,
        )
        .await?;
        ensure!(
            from_file.status.success(),
            "{}",
            String::from_utf8_lossy(&from_file.stderr)
        );

        // Health checks need no token; everything else through curl does.
        let health = curl(&[&format!("{api}/healthz")])?;
        ensure!(health.status == 200, "{health:?}");
        let list = curl(&[&format!("{api}/v1/backends")])?;
        ensure!(list.status == 401, "{list:?}");
        let header = format!("Authorization: Bearer {TOKEN}");
        let list = curl(&["-H", &header, &format!("{api}/v1/backends")])?;
        ensure!(list.status == 200, "{list:?}");
        // Metrics too: what a cluster runs is no one else's business.
        let metrics = curl(&[&format!("{api}/metrics")])?;
        ensure!(metrics.status == 401, "{metrics:?}");
        let metrics = curl(&["-H", &header, &format!("{api}/metrics")])?;
        ensure!(
            metrics.status == 200 && metrics.body.contains("# TYPE plane_backends gauge"),
            "{metrics:?}"
        );
        // A drone's metrics take the same token.
        let (drone, _) = common::start_drone_with(
            &nats.url(),
            "plane.test",
            Some("drone-1"),
            &["--api-token-file", &token_path],
        )?;
        let drone_metrics = common::metrics_url_of(&drone)?;
        let refused = curl(&[&drone_metrics])?;
        ensure!(refused.status == 401, "{refused:?}");
        let scraped = curl(&["-H", &header, &drone_metrics])?;
        ensure!(
            scraped.status == 200 && scraped.body.contains("# TYPE plane_drone_backends gauge"),
            "{scraped:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_beyond_loopback_without_a_token_does_not_start() -> anyhow::Result<()> {
    bounded(async {
        for args in [
            vec![
                "controller",
                "--nats",
                "nats://127.0.0.1:1",
                "--cluster",
                "plane.test",
                "--api",
                "0.0.0.0:0",
            ],
            vec!["dev", "--api", "0.0.0.0:0", "--http", "127.0.0.1:0"],
        ] {
            let output = Command::new(plane_bin())
                .args(&args)
                .env_remove("PLANE_API_TOKEN")
                .output()?;
            ensure!(!output.status.success(), "{args:?} started");
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(
                stderr.contains("--api-token-file") && stderr.contains("--insecure-no-auth"),
                "{args:?}: {stderr}"
            );
        }
        Ok(())
    })
    .await
}
