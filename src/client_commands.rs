//! The client commands (`spawn`, `status`, `list`, `terminate`, `watch`, `drones`): each calls
//! the HTTP API and prints readable text, or JSON with `--json`.

use crate::cli::{BackendArgs, ClientArgs, SpawnArgs};
use anyhow::{bail, Context as _};
use plane_client::ApiClient;
use plane_protocol::messages::{BackendState, Executable, UnixMillis};
use plane_protocol::records::{BackendRecord, DroneView};
use plane_protocol::spawn_request::SpawnRequest;
use serde::Serialize;
use std::collections::BTreeMap;

fn client(args: &ClientArgs) -> anyhow::Result<ApiClient> {
    let client = ApiClient::new(&args.api).context("--api")?;
    Ok(match crate::secrets::api_token(&args.token)? {
        Some(token) => client.with_authorization(&token.header_value())?,
        None => client,
    })
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

pub async fn spawn(args: SpawnArgs) -> anyhow::Result<()> {
    let command = shlex::split(&args.command)
        .with_context(|| format!("--command {:?}: unbalanced quotes", args.command))?;
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?}: expected KEY=VALUE");
        };
        env.insert(key.to_string(), value.to_string());
    }
    let request = SpawnRequest {
        executable: Executable { command },
        max_idle_secs: args.idle,
        env,
        require_token: args.require_token,
    };
    // Check locally first, so that a typo fails before any network round trip.
    request
        .clone()
        .validate()
        .context("invalid spawn request")?;
    let api = client(&args.client)?;
    let mut answer = api.spawn(&request).await?;
    if args.wait {
        answer.record = wait_until_ready(&api, &answer.record.id.to_string()).await?;
    }
    if args.client.json {
        print_json(&answer)
    } else {
        print_backend(&answer.record);
        if let Some(token) = &answer.token {
            println!("token     {}", token.as_str());
        }
        Ok(())
    }
}

/// Follows the event stream until the backend is ready; an error if it ends first.
async fn wait_until_ready(api: &ApiClient, id: &str) -> anyhow::Result<BackendRecord> {
    let mut events = api.events(id).await?;
    while let Some(record) = events.next().await {
        let record = record?;
        match record.state {
            BackendState::Ready => return Ok(record),
            BackendState::Terminating | BackendState::Terminated => {
                bail!(
                    "backend {id} ended before it was ready: {}",
                    describe_state(&record)
                )
            }
            _ => {}
        }
    }
    bail!("the event stream of backend {id} ended before it was ready")
}

pub async fn status(args: BackendArgs) -> anyhow::Result<()> {
    let record = client(&args.client)?.backend(&args.id).await?;
    if args.client.json {
        return print_json(&record);
    }
    print_backend(&record);
    Ok(())
}

pub async fn list(args: ClientArgs) -> anyhow::Result<()> {
    let records = client(&args)?.backends().await?;
    if args.json {
        return print_json(&records);
    }
    if records.is_empty() {
        println!("no backends");
        return Ok(());
    }
    println!("{:<18} {:<28} {:<18} URL", "ID", "STATE", "DRONE");
    for r in &records {
        println!(
            "{:<18} {:<28} {:<18} {}",
            r.id,
            describe_state(r),
            r.drone,
            r.url
        );
    }
    Ok(())
}

pub async fn terminate(args: BackendArgs) -> anyhow::Result<()> {
    let record = client(&args.client)?.terminate(&args.id).await?;
    if args.client.json {
        return print_json(&record);
    }
    if record.state == BackendState::Terminated {
        println!("{} is terminated ({})", record.id, describe_state(&record));
    } else {
        println!("{} is being terminated (now {})", record.id, record.state);
    }
    Ok(())
}

pub async fn watch(args: BackendArgs) -> anyhow::Result<()> {
    let mut events = client(&args.client)?.events(&args.id).await?;
    while let Some(record) = events.next().await {
        let record = record?;
        if args.client.json {
            print_json(&record)?;
        } else {
            println!("{}  {}", clock(record.updated_at), describe_state(&record));
        }
    }
    Ok(())
}

pub async fn drones(args: ClientArgs) -> anyhow::Result<()> {
    let drones: Vec<DroneView> = client(&args)?.drones().await?;
    if args.json {
        return print_json(&drones);
    }
    if drones.is_empty() {
        println!("no drones");
        return Ok(());
    }
    println!(
        "{:<18} {:<6} {:<9} {:<10} LAST HEARTBEAT",
        "ID", "LIVE", "EXECUTOR", "LOAD"
    );
    for d in &drones {
        println!(
            "{:<18} {:<6} {:<9} {:<10} {}",
            d.drone.id,
            if d.live { "yes" } else { "no" },
            d.drone.executor,
            format!("{}/{}", d.drone.load, d.drone.capacity),
            clock(d.drone.last_heartbeat)
        );
    }
    Ok(())
}

fn print_backend(r: &BackendRecord) {
    println!("backend   {}", r.id);
    println!("url       {}", r.url);
    println!("state     {}", describe_state(r));
    println!("drone     {}", r.drone);
    println!(
        "idle      swept after {}s without connections",
        r.max_idle_secs
    );
    println!(
        "command   {}",
        shlex::try_join(r.spec.executable.command.iter().map(String::as_str))
            .unwrap_or_else(|_| r.spec.executable.command.join(" "))
    );
    println!("updated   {}", clock(r.updated_at));
}

/// `ready`, or `terminated/failed (exit code 3)`, with the drone's message if any.
fn describe_state(r: &BackendRecord) -> String {
    let mut text = r.state.to_string();
    if let Some(reason) = r.reason {
        text.push('/');
        text.push_str(reason.as_str());
    }
    if let Some(code) = r.exit_code {
        text.push_str(&format!(" (exit code {code})"));
    }
    if let Some(message) = &r.message {
        text.push_str(&format!(": {message}"));
    }
    text
}

/// `HH:MM:SS.mmmZ` in UTC.
fn clock(at: UnixMillis) -> String {
    let ms = at % 1000;
    let secs = at / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc_time_of_day() {
        // 2026-11-28T14:02:03.045Z
        assert_eq!(clock(1_795_874_523_045), "14:02:03.045Z");
    }
}
