//! Plane on a three-node NATS cluster, its KV buckets replicated three times: killing one node
//! (SIGKILL) while spawns run fails no spawn, loses no acknowledged write and ends no session;
//! clients fail over to the survivors, and the node catches up when it comes back.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, id_of, Cluster, STATE_TIMEOUT};
use plane_test_support::{eventually, NatsCluster};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const BACKENDS_STREAM: &str = "KV_plane_plane_test_backends";

/// The stream's info as one node of the cluster tells it.
async fn stream_info(url: &str) -> anyhow::Result<async_nats::jetstream::stream::Info> {
    let client = async_nats::connect(url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(BACKENDS_STREAM).await?;
    Ok(stream.info().await?.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_node_loses_nothing() -> anyhow::Result<()> {
    bounded(async {
        let nodes = NatsCluster::start(3)?;
        let first = nodes.url(0);
        let mut cluster = Cluster::over_nats_cluster(nodes, &["--kv-replicas", "3"]).await?;
        let mut sessions = Vec::new();
        for _ in 0..2 {
            sessions.push(id_of(&cluster.spawn_ready("", &["--idle", "60"]).await?)?);
        }
        let info = stream_info(&first).await?;
        let replicas = info.config.num_replicas;
        ensure!(replicas == 3, "the backends bucket has {replicas} replicas");
        // The node leading the backends bucket: the worst one to lose.
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .context("the stream has a leader")?;
        let mut nodes = cluster.take_nodes().context("on a NATS cluster")?;
        let victim = nodes.index_of(&leader).context("the leader is a node")?;

        // Spawns one after another; the leader dies once two of them are done.
        let done = AtomicUsize::new(0);
        let spawning = async {
            let mut spawned = Vec::new();
            for i in 0..8 {
                let record = cluster
                    .spawn_ready("", &["--idle", "60"])
                    .await
                    .with_context(|| format!("spawn {i}, with node {leader} killed after 2"))?;
                spawned.push(id_of(&record)?);
                done.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(spawned)
        };
        let killing = async {
            eventually(STATE_TIMEOUT, "two spawns", || async {
                Ok((done.load(Ordering::SeqCst) >= 2).then_some(()))
            })
            .await?;
            nodes.kill(victim);
            anyhow::Ok(())
        };
        let (spawned, killed) = tokio::join!(spawning, killing);
        killed?;
        let spawned = spawned?;

        // Every acknowledged spawn is recorded and ready, and every session still serves.
        for id in sessions.iter().chain(&spawned) {
            let status = cluster.status(id).await?;
            ensure!(status["state"] == "ready", "{id}: {status}");
            let hello = cluster.get(&cluster.host(id), "/", &[])?;
            ensure!(hello.status == 200, "{id}: {hello:?}");
        }
        let drones = cluster.plane_json(&["drones"]).await?;
        ensure!(
            drones[0]["lost"] == false && drones[0]["live"] == true,
            "{drones}"
        );

        // The node comes back and catches up with what was written without it.
        nodes.restart(victim)?;
        let rejoined = nodes.url(victim);
        let name = format!("n{victim}");
        eventually(Duration::from_secs(60), "the node to catch up", || async {
            let info = stream_info(&rejoined).await?;
            let cluster = info.cluster.context("clustered")?;
            let leads = cluster.leader.as_deref() == Some(name.as_str());
            let current = leads
                || cluster.replicas.iter().any(|peer| {
                    peer.name == name && peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0
                });
            Ok(current.then_some(()))
        })
        .await?;
        // Read through the returned node alone: everything written while it was gone is there.
        let bus = plane_bus::Bus::connect(&rejoined).await?;
        let kv = bus.kv("plane_plane_test_backends").await?;
        for id in &spawned {
            ensure!(
                kv.get(id).await?.is_some(),
                "{id} missing on the returned node"
            );
        }
        Ok(())
    })
    .await
}
