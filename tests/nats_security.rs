//! NATS with authorization and TLS, end to end: a cluster whose controller logs in with a user
//! and password and whose drone with an nkey (made with the nkeys crate), under per-drone
//! permissions like those the README shows; a drone's credentials that cannot speak for another
//! drone or for a controller, nor touch the cluster's KV; a cluster on a token; and a cluster over
//! NATS TLS with client certificates.

mod common;

use anyhow::{ensure, Context};
use bytes::Bytes;
use common::{bounded, id_of, Cluster};
use plane_bus::{Bus, NatsAuth, NatsOptions, NatsTls};
use plane_test_support::{NatsOperator, NatsServer, Pki};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `plane.test` as a subject token (see `Subjects::new`).
const CLUSTER: &str = "plane_test";
const CONTROLLER_PASSWORD: &str = "controller-password-0123456789";
const OBSERVER_PASSWORD: &str = "observer-password-0123456789";

/// What a drone may do: speak under its own subjects, hear its commands, use its own inbox.
fn drone_permissions(drone: &str) -> String {
    format!(
        r#"{{
        publish: {{ allow: ["plane.{CLUSTER}.drone.{drone}.heartbeat", "plane.{CLUSTER}.drone.{drone}.state", "plane.{CLUSTER}.drone.{drone}.recovery", "plane.{CLUSTER}.drone.{drone}.certificate", "plane.{CLUSTER}.drone.{drone}.wake", "plane.{CLUSTER}.drone.{drone}.logs.*", "_INBOX.plane.{CLUSTER}.drone.{drone}.>"] }}
        subscribe: {{ allow: ["plane.{CLUSTER}.drone.{drone}.command", "_INBOX.plane.{CLUSTER}.drone.{drone}.>"] }}
        allow_responses: true
      }}"#
    )
}

/// The server's `authorization` block: a controller, two drones (nkeys) and an observer that
/// may hear everything (the test's witness of what got through).
fn authorization(drone_1: &str, drone_2: &str) -> String {
    format!(
        r#"
authorization {{
  users = [
    {{
      user: controller, password: "{CONTROLLER_PASSWORD}"
      permissions: {{
        publish: {{ allow: ["plane.{CLUSTER}.drone.*.command", "$JS.API.>", "$KV.plane_{CLUSTER}_backends.>", "$KV.plane_{CLUSTER}_drones.>", "$KV.plane_{CLUSTER}_acme.>", "$KV.plane_{CLUSTER}_keys.>", "$KV.plane_{CLUSTER}_idempotency.>", "$JS.FC.>", "_INBOX.plane.{CLUSTER}.controller.>"] }}
        subscribe: {{ allow: ["plane.{CLUSTER}.drone.*.heartbeat", "plane.{CLUSTER}.drone.*.state", "plane.{CLUSTER}.drone.*.recovery", "plane.{CLUSTER}.drone.*.certificate", "plane.{CLUSTER}.drone.*.wake", "_INBOX.plane.{CLUSTER}.controller.>"] }}
        allow_responses: true
      }}
    }}
    {{ nkey: "{drone_1}", permissions: {} }}
    {{ nkey: "{drone_2}", permissions: {} }}
    {{ user: observer, password: "{OBSERVER_PASSWORD}", permissions: {{ publish: ["_INBOX.>"], subscribe: [">"] }} }}
  ]
}}
"#,
        drone_permissions("drone-1"),
        drone_permissions("drone-2"),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n"))?;
    Ok(path)
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Spawns a backend and reaches it through the proxy: the whole cluster works.
async fn works(cluster: &Cluster) -> anyhow::Result<()> {
    let id = id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?;
    let hello = cluster.get(&cluster.host(&id), "/", &[])?;
    ensure!(hello.status == 200, "{hello:?}");
    cluster.plane_json(&["terminate", &id]).await?;
    let events = cluster.watch_until_terminated(&id).await?;
    let last = events.last().context("events")?;
    ensure!(last["reason"] == "terminated", "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_speaks_only_for_itself() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let drone_1 = nkeys::KeyPair::new_user();
        let drone_2 = nkeys::KeyPair::new_user();
        let nats = NatsServer::start_with_config(&authorization(
            &drone_1.public_key(),
            &drone_2.public_key(),
        ))?;
        let url = nats.url();
        let password = write(dir.path(), "controller-password", CONTROLLER_PASSWORD)?;
        let seed_1 = write(dir.path(), "drone-1.nk", &drone_1.seed()?)?;
        let cluster = Cluster::over(
            nats,
            false,
            &[
                "--nats-user",
                "controller",
                "--nats-password-file",
                &path_str(&password),
            ],
            &["--nats-nkey-file", &path_str(&seed_1)],
        )
        .await?;
        works(&cluster).await?;

        // The witness hears everything that gets through the server.
        let mut observer = NatsOptions::new(url.clone());
        observer.auth = NatsAuth::UserPassword {
            user: "observer".into(),
            password: OBSERVER_PASSWORD.into(),
        };
        let observer = Bus::connect_with(observer).await?;
        let mut heard = observer.subscribe(">").await?;

        // drone-1's own credentials, used to speak for others.
        let mut intruder = NatsOptions::new(url);
        intruder.auth = NatsAuth::NKey(drone_1.seed()?);
        intruder.inbox_prefix = Some(format!("_INBOX.plane.{CLUSTER}.drone.drone-1"));
        let intruder = Bus::connect_with(intruder).await?;
        let forbidden = [
            // As another drone.
            format!("plane.{CLUSTER}.drone.drone-2.heartbeat"),
            format!("plane.{CLUSTER}.drone.drone-2.state"),
            format!("plane.{CLUSTER}.drone.drone-2.recovery"),
            format!("plane.{CLUSTER}.drone.drone-2.logs.somebackend"),
            format!("plane.{CLUSTER}.drone.drone-2.certificate"),
            format!("plane.{CLUSTER}.drone.drone-2.wake"),
            // As a controller: commands, to another drone or to itself.
            format!("plane.{CLUSTER}.drone.drone-2.command"),
            format!("plane.{CLUSTER}.drone.drone-1.command"),
            // The cluster's KV, directly or through the JetStream API.
            format!("$KV.plane_{CLUSTER}_backends.intruded"),
            format!("$KV.plane_{CLUSTER}_drones.drone-2"),
            format!("$KV.plane_{CLUSTER}_acme.certificate"),
            format!("$KV.plane_{CLUSTER}_keys.somekey"),
            format!("$KV.plane_{CLUSTER}_idempotency.somekey"),
            format!("$JS.API.DIRECT.GET.KV_plane_{CLUSTER}_keys"),
            format!("$JS.API.STREAM.INFO.KV_plane_{CLUSTER}_backends"),
            format!("$JS.API.DIRECT.GET.KV_plane_{CLUSTER}_backends"),
        ];
        for subject in &forbidden {
            intruder
                .publish(subject, Bytes::from_static(b"intrusion"))
                .await?;
        }
        // Then one message it may send: the server handles a connection's messages in order,
        // so once the witness hears this one, it would have heard any of the others.
        let own = format!("plane.{CLUSTER}.drone.drone-1.heartbeat");
        intruder
            .publish(&own, Bytes::from_static(b"marker"))
            .await?;
        let mut through = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), heard.next())
                .await
                .context("the marker never arrived")?
                .context("observer closed")?;
            if msg.subject == own && msg.payload.as_ref() == b"marker" {
                break;
            }
            if msg.payload.as_ref() == b"intrusion" {
                through.push(msg.subject);
            }
        }
        ensure!(through.is_empty(), "got through: {through:?}");
        // Nor can it open the cluster's KV at all.
        let kv = tokio::time::timeout(
            Duration::from_secs(30),
            intruder.kv(&format!("plane_{CLUSTER}_backends")),
        )
        .await;
        ensure!(
            !matches!(kv, Ok(Ok(_))),
            "drone credentials opened the cluster's KV"
        );
        // The cluster still works.
        works(&cluster).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_nats_token() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let token = "nats-token-0123456789abcdef";
        let nats =
            NatsServer::start_with_config(&format!("authorization {{ token: \"{token}\" }}"))?;
        ensure!(
            Bus::connect(&nats.url()).await.is_err(),
            "connected without the token"
        );
        let file = path_str(&write(dir.path(), "nats-token", token)?);
        let cluster = Cluster::over(
            nats,
            false,
            &["--nats-token-file", &file],
            &["--nats-token-file", &file],
        )
        .await?;
        works(&cluster).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_nats_creds() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let operator = NatsOperator::new()?;
        let nats = NatsServer::start_with_config(&operator.server_config())?;
        ensure!(
            Bus::connect(&nats.url()).await.is_err(),
            "connected to an operator-mode server without credentials"
        );
        let controller = path_str(&operator.user_creds(dir.path(), "controller")?);
        let drone = path_str(&operator.user_creds(dir.path(), "drone-1")?);
        let cluster = Cluster::over(
            nats,
            false,
            &["--nats-creds", &controller],
            &["--nats-creds", &drone],
        )
        .await?;
        works(&cluster).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_nats_tls() -> anyhow::Result<()> {
    bounded(async {
        let pki = Pki::generate()?;
        let nats = NatsServer::start_tls(&format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
        ))?;
        let url = nats.url();
        // Without the CA, or without a client certificate, nothing connects.
        let plain = NatsOptions::new(url.clone());
        ensure!(Bus::connect_with(plain).await.is_err(), "connected without TLS trust");
        let mut no_client_cert = NatsOptions::new(url.clone());
        no_client_cert.tls = NatsTls {
            ca: Some(pki.ca.clone()),
            ..NatsTls::default()
        };
        ensure!(
            Bus::connect_with(no_client_cert).await.is_err(),
            "connected without a client certificate"
        );
        let (ca, cert, key) = (
            path_str(&pki.ca),
            path_str(&pki.client_cert),
            path_str(&pki.client_key),
        );
        let flags = [
            "--nats-tls-ca",
            ca.as_str(),
            "--nats-tls-cert",
            cert.as_str(),
            "--nats-tls-key",
            key.as_str(),
        ];
        let cluster = Cluster::over(nats, false, &flags, &flags).await?;
        works(&cluster).await
    })
    .await
}
