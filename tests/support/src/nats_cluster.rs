//! Three `nats-server` nodes clustered on loopback, each with JetStream and its own store: what
//! users run once one NATS machine is not enough. Nodes can be killed and restarted (on the same
//! ports and store), as a machine crash and reboot would.

use crate::nats::NatsServer;
use anyhow::Context;

/// The nodes of one NATS cluster, stopped when dropped.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` clustered nodes named `n0`, `n1`, … The JetStream meta group may still be
    /// electing its leader when this returns: callers retry their first JetStream operation.
    pub fn start(size: usize) -> anyhow::Result<NatsCluster> {
        let route_ports = (0..size)
            .map(|_| crate::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()
            .context("ports for the cluster's routes")?;
        let routes = route_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::start_with_config(&format!(
                    "server_name: n{i}\n\
                     cluster {{\n  name: plane-test\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n"
                ))
                .with_context(|| format!("starting NATS node n{i}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated, as Plane's `--nats` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's client URL.
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// The index of the node named `name` (`n1` → 1).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?
            .parse()
            .ok()
            .filter(|&i: &usize| i < self.nodes.len())
    }

    /// Kills a node outright (SIGKILL), keeping its store.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts a killed node again on its port, with its store: it rejoins the cluster.
    pub fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.nodes[node].restart()
    }
}
