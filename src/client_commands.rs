//! The client commands (`spawn`, `connect`, `status`, `list`, `terminate`, `watch`, `drones`): each calls
//! the HTTP API and prints readable text, or JSON with `--json`.

use crate::cli::{
    BackendArgs, ClientArgs, ConnectArgs, DrainArgs, LogsArgs, PullArg, SetIdleArgs, SpawnArgs,
};
use anyhow::{bail, Context as _};
use plane_client::{ApiClient, BackendEvent};
use plane_protocol::certificates::CertificateStatus;
use plane_protocol::keys::{BackendKey, ConnectRequest};
use plane_protocol::messages::{
    BackendState, LogSource, PullPolicy, PullProgress, Resources, UnixMillis, Usage,
};
use plane_protocol::records::{BackendRecord, DroneState, DroneView};
use plane_protocol::registry::RegistryCredentials;
use plane_protocol::spawn_request::{SpawnExecutable, SpawnRequest};
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
    let request = spawn_request(&args)?;
    let api = client(&args.client)?;
    let mut answer = api
        .spawn_once(&request, args.idempotency_key.as_deref())
        .await?;
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

pub async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let spawn = &args.spawn;
    let request = ConnectRequest {
        key: BackendKey::new(args.key.clone()).with_context(|| format!("key {:?}", args.key))?,
        spawn: spawn_request(spawn)?,
        wake: args.wake,
    };
    let api = client(&spawn.client)?;
    let mut answer = api
        .connect(&request, spawn.idempotency_key.as_deref())
        .await?;
    if spawn.wait {
        answer.answer.record = wait_until_ready(&api, &answer.answer.record.id.to_string()).await?;
    }
    if spawn.client.json {
        print_json(&answer)
    } else {
        print_backend(&answer.record);
        println!("created   {}", answer.created);
        if let Some(url) = &answer.key_url {
            println!("key url   {url}");
        }
        if let Some(token) = &answer.token {
            println!("token     {}", token.as_str());
        }
        Ok(())
    }
}

/// The spawn the flags describe, checked here so that a typo fails before any round trip.
fn spawn_request(args: &SpawnArgs) -> anyhow::Result<SpawnRequest> {
    let command = match &args.command {
        Some(command) => shlex::split(command)
            .with_context(|| format!("--command {command:?}: unbalanced quotes"))?,
        None => Vec::new(),
    };
    let credentials = match (&args.registry_user, &args.registry_password_file) {
        (Some(username), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("--registry-password-file {}", file.display()))?;
            Some(RegistryCredentials {
                username: username.clone(),
                password: password.trim_end_matches(['\r', '\n']).to_string(),
            })
        }
        _ => None,
    };
    let resources = Resources {
        memory_bytes: args.memory.as_deref().map(parse_size).transpose()?,
        cpu_millis: args
            .cpus
            .map(|cores| {
                anyhow::ensure!(
                    cores.is_finite() && cores > 0.0,
                    "--cpus {cores}: must be a positive number of cores"
                );
                Ok((cores * 1000.0).round() as u64)
            })
            .transpose()?,
        pids: args.pids,
    };
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?}: expected KEY=VALUE");
        };
        env.insert(key.to_string(), value.to_string());
    }
    let request = SpawnRequest {
        executable: SpawnExecutable {
            image: args.image.clone(),
            command,
            pull_policy: args.pull.map(|pull| match pull {
                PullArg::Always => PullPolicy::Always,
                PullArg::IfNotPresent => PullPolicy::IfNotPresent,
                PullArg::Never => PullPolicy::Never,
            }),
            credentials,
        },
        max_idle_secs: args.idle,
        env,
        require_token: args.require_token,
        resources,
        ready_path: args.ready_path.clone(),
    };
    request
        .clone()
        .validate()
        .context("invalid spawn request")?;
    Ok(request)
}

/// Follows the event stream until the backend is ready; an error if it ends first.
async fn wait_until_ready(api: &ApiClient, id: &str) -> anyhow::Result<BackendRecord> {
    let mut events = api.events(id).await?;
    while let Some(event) = events.next_event().await {
        let record = match event? {
            BackendEvent::State(record) => record,
            BackendEvent::Updated(record) => {
                if let Some(pull) = &record.pull {
                    eprintln!("{}", describe_pull(pull));
                }
                continue;
            }
        };
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
    let status = client(&args.client)?.backend(&args.id).await?;
    if args.client.json {
        return print_json(&status);
    }
    print_backend(&status.record);
    if let Some(usage) = &status.usage {
        println!("{}", describe_usage(usage));
    }
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

pub async fn set_idle(args: SetIdleArgs) -> anyhow::Result<()> {
    let BackendArgs { id, client: api } = &args.backend;
    let record = client(api)?.set_idle(id, args.max_idle_secs).await?;
    if api.json {
        return print_json(&record);
    }
    println!(
        "{} is swept after {}s without connections",
        record.id, record.max_idle_secs
    );
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

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = client(&args.backend.client)?;
    let mut lines = client.logs(&args.backend.id, args.follow).await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(record) = lines.next().await {
        let record = record?;
        if args.backend.client.json {
            print_json(&record)?;
        } else {
            use std::io::Write;
            let line = &record.line;
            let source = match line.stream {
                LogSource::Stdout => "stdout",
                LogSource::Stderr => "stderr",
                LogSource::Plane => "plane ",
            };
            writeln!(
                stdout,
                "{} {source} {}",
                clock(line.at),
                printable(&line.line)
            )?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// A log line as it is safe to print on a terminal: control characters (escape sequences
/// included) escaped, tabs kept.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn watch(args: BackendArgs) -> anyhow::Result<()> {
    let mut events = client(&args.client)?.events(&args.id).await?;
    while let Some(event) = events.next_event().await {
        let (record, line) = match event? {
            BackendEvent::State(record) => {
                let line = describe_state(&record);
                (record, line)
            }
            BackendEvent::Updated(record) => {
                let line = record.pull.as_ref().map(describe_pull).unwrap_or_default();
                (record, line)
            }
        };
        if args.client.json {
            print_json(&record)?;
        } else {
            println!("{}  {line}", clock(record.updated_at));
        }
    }
    Ok(())
}

/// `usage     0.250 cores, 12.3 MB (at 12:00:01.000Z)`.
fn describe_usage(usage: &Usage) -> String {
    format!(
        "usage     {:.3} cores, {:.1} MB (at {})",
        usage.cpu_millis as f64 / 1000.0,
        usage.memory_bytes as f64 / 1e6,
        clock(usage.at)
    )
}

/// `pulling  2/3 layers, 1.5 of 4.2 MB`.
fn describe_pull(pull: &PullProgress) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    format!(
        "pulling  {}/{} layers, {:.1} of {:.1} MB",
        pull.layers_done,
        pull.layers_total,
        mb(pull.bytes_done),
        mb(pull.bytes_total)
    )
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
        "{:<18} {:<9} {:<9} {:<10} {:<16} {:<24} LAST HEARTBEAT",
        "ID", "STATE", "EXECUTOR", "LOAD", "IP", "CERTIFICATE"
    );
    let now = plane_protocol::messages::now_millis();
    for d in &drones {
        println!(
            "{:<18} {:<9} {:<9} {:<10} {:<16} {:<24} {}",
            d.drone.id,
            d.state.as_str(),
            d.drone.executor,
            format!("{}/{}", d.drone.load, d.drone.capacity),
            d.drone
                .ip
                .map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            describe_certificate(d.drone.certificate.as_ref(), now),
            clock(d.drone.last_heartbeat)
        );
    }
    for d in &drones {
        let error = d
            .drone
            .certificate
            .as_ref()
            .and_then(|c| c.last_renewal_error.as_deref());
        if let Some(error) = error {
            println!("{}: certificate renewal failing: {error}", d.drone.id);
        }
    }
    Ok(())
}

/// How often `plane drain --wait` looks at the drone.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let api = client(&args.client)?;
    let listed = |drones: Vec<DroneView>| {
        drones
            .into_iter()
            .find(|d| d.drone.id.as_str() == args.drone)
            .with_context(|| format!("no drone named {}", args.drone))
    };
    let mut drone = if args.cancel {
        api.undrain(&args.drone).await?
    } else {
        // `--wait` alone on a drone that drains already only waits: draining it again would
        // drop the deadline it was given.
        let current = match args.wait && args.deadline.is_none() {
            true => Some(listed(api.drones().await?)?).filter(|d| d.drone.draining),
            false => None,
        };
        match current {
            Some(current) => current,
            None => api.drain(&args.drone, args.deadline).await?,
        }
    };
    if args.wait {
        // The API has no drone event stream: a light poll of one listing.
        while drone.state == DroneState::Draining {
            tokio::time::sleep(DRAIN_POLL).await;
            drone = listed(api.drones().await?)?;
        }
        if drone.state != DroneState::Drained {
            bail!(
                "drone {} is {} instead of drained",
                args.drone,
                drone.state.as_str()
            );
        }
    }
    if args.client.json {
        return print_json(&drone);
    }
    let deadline = match drone.drone.drain_deadline {
        Some(at) if drone.state == DroneState::Draining => {
            format!(" (the rest is terminated at {})", clock(at))
        }
        _ => String::new(),
    };
    println!(
        "{} is {}, running {}{deadline}",
        drone.drone.id,
        drone.state.as_str(),
        drone.drone.load
    );
    Ok(())
}

/// A drone's certificate in a few words: how long it has left, or that there is none.
fn describe_certificate(status: Option<&CertificateStatus>, now: UnixMillis) -> String {
    let Some(status) = status else {
        return "-".to_owned();
    };
    let Some(not_after) = status.not_after else {
        return "none yet".to_owned();
    };
    let failing = if status.last_renewal_error.is_some() {
        ", renewal failing"
    } else {
        ""
    };
    if not_after <= now {
        return format!("expired{failing}");
    }
    let left = (not_after - now) / 1000;
    let (days, hours, minutes) = (left / 86_400, (left / 3600) % 24, (left / 60) % 60);
    let left = if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {}s", left % 60)
    };
    format!("{left} left{failing}")
}

fn print_backend(r: &BackendRecord) {
    println!("backend   {}", r.id);
    println!("url       {}", r.url);
    println!("state     {}", describe_state(r));
    println!("drone     {}", r.drone);
    if let Some(key) = &r.key {
        println!("key       {key}");
    }
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
    fn certificates_are_described_by_the_time_left() {
        let status = |not_after, error: Option<&str>| CertificateStatus {
            names: vec!["c.dev".into()],
            not_after,
            last_renewal_error: error.map(str::to_owned),
        };
        assert_eq!(describe_certificate(None, 0), "-");
        assert_eq!(
            describe_certificate(Some(&status(None, Some("x"))), 0),
            "none yet"
        );
        let day = 86_400_000;
        assert_eq!(
            describe_certificate(Some(&status(Some(89 * day + 3_600_000), None)), 0),
            "89d 1h left"
        );
        assert_eq!(
            describe_certificate(Some(&status(Some(90_000), Some("x"))), 0),
            "1m 30s left, renewal failing"
        );
        assert_eq!(
            describe_certificate(Some(&status(Some(5), None)), 10),
            "expired"
        );
    }

    #[test]
    fn clock_formats_utc_time_of_day() {
        // 2026-11-28T14:02:03.045Z
        assert_eq!(clock(1_795_874_523_045), "14:02:03.045Z");
    }

    #[test]
    fn log_lines_print_with_control_characters_escaped() {
        assert_eq!(printable("plain\ttext é"), "plain\ttext é");
        assert_eq!(printable("\u{1b}[2J\rgone"), "\\u{1b}[2J\\rgone");
    }
}

/// A size like `256M`: bytes, or K, M, G (powers of 1024, optionally followed by `i`/`iB`/`B`).
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .parse()
        .with_context(|| format!("--memory {text:?}: expected a number with K, M or G"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KI" | "KIB" => 10,
        "M" | "MB" | "MI" | "MIB" => 20,
        "G" | "GB" | "GI" | "GIB" => 30,
        _ => bail!("--memory {text:?}: unknown unit {unit:?} (use K, M or G)"),
    };
    number
        .checked_mul(1u64 << shift)
        .with_context(|| format!("--memory {text:?}: too large"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_docker_writes_them() {
        assert_eq!(parse_size("256M").expect("valid"), 256 << 20);
        assert_eq!(parse_size("1g").expect("valid"), 1 << 30);
        assert_eq!(parse_size("64KiB").expect("valid"), 64 << 10);
        assert_eq!(parse_size("1000").expect("valid"), 1000);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
