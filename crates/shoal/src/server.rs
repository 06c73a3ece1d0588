//! `shoal server`: one cluster member hosting the Raft group that holds the cluster's state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use shoal_meta::server::{MetaServer, ServerOptions};
use shoal_meta::store::MetaStore;
use shoal_raft::NodeId;
use shoal_raft_runtime::{GroupConfig, NodeOptions, RaftNode};

use crate::cli::ServerArgs;

/// The id of the Raft group that holds the coordination store (the cluster's own state).
pub const META_GROUP_ID: u64 = 1;

/// The `--peers` value for members 1, 2, … at `endpoints`, in order.
pub fn peers_arg(endpoints: &[String]) -> String {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `1=host:port,2=host:port` into a map, with errors that name the bad item.
pub fn parse_peers(items: &[String]) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for item in items.iter().filter(|i| !i.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            bail!("invalid --peers item {item:?}: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7001");
        };
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("invalid node id in --peers item {item:?}"))?;
        if id == 0 {
            bail!("invalid --peers item {item:?}: node ids start at 1");
        }
        validate_addr(addr).with_context(|| format!("invalid address in --peers item {item:?}"))?;
        if peers.insert(NodeId(id), addr.trim().to_string()).is_some() {
            bail!("node id {id} appears twice in --peers");
        }
    }
    if peers.is_empty() {
        bail!("--peers is empty: list every initial member as ID=HOST:PORT,…");
    }
    Ok(peers)
}

fn validate_addr(addr: &str) -> anyhow::Result<()> {
    let Some((host, port)) = addr.trim().rsplit_once(':') else {
        bail!("{addr:?} is not HOST:PORT");
    };
    if host.is_empty() {
        bail!("{addr:?} has no host");
    }
    port.parse::<u16>()
        .with_context(|| format!("{addr:?} has no valid port"))?;
    Ok(())
}

/// The file in a data dir that names the cluster it belongs to: the initial `--peers`.
const CLUSTER_FILE: &str = "cluster";
/// How long a stopping server waits for its connections to close before it stops anyway.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(5);

/// Refuses a data dir created for another cluster (other initial members or addresses):
/// starting on it would mix two clusters' logs. The first start records the cluster.
pub fn check_cluster_identity(data_dir: &Path, peers: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
    let identity = peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let path = data_dir.join(CLUSTER_FILE);
    let recorded = shoal_wal::read_file_atomic(data_dir, CLUSTER_FILE)
        .with_context(|| format!("cannot read {}", path.display()))?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    match recorded {
        Some(recorded) if recorded.trim() == identity => Ok(()),
        Some(recorded) => bail!(
            "--data-dir {} belongs to another cluster (created with --peers {}), not --peers {identity}; \
             start it with its own --peers, or give this member an empty --data-dir",
            data_dir.display(),
            recorded.trim()
        ),
        None => {
            let group_dir = data_dir.join("raft-group-1");
            if group_dir.exists() {
                // A data dir from before the cluster file existed: adopt it.
                tracing::warn!(dir = %data_dir.display(), "recording the cluster identity of an existing data dir");
            }
            shoal_wal::write_file_atomic(data_dir, CLUSTER_FILE, identity.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))
        }
    }
}

/// Where a member keeps the store's Raft group.
pub fn group_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("raft-group-1")
}

pub fn group_config(
    data_dir: &Path,
    voters: impl IntoIterator<Item = NodeId>,
    tick: Duration,
) -> GroupConfig {
    let mut config = GroupConfig::new(META_GROUP_ID, group_dir(data_dir), voters);
    config.tick_interval = tick;
    config
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let peers = parse_peers(&args.peers)?;
    let id = NodeId(args.id);
    if !peers.contains_key(&id) {
        bail!(
            "--id {} is not one of the ids in --peers ({}); every initial member lists itself too",
            args.id,
            peers
                .keys()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    validate_addr(&args.listen).context("invalid --listen")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))?;
    check_cluster_identity(&args.data_dir, &peers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (is another server using it?)", args.listen))?;
        let node = RaftNode::new(NodeOptions::new(id, peers.clone())).context("starting the node")?;
        let mut config = group_config(&args.data_dir, peers.keys().copied(), args.tick);
        config.snapshot_interval_entries = args.snapshot_interval_entries;
        let meta = MetaServer::start(&node, config, server_options(&args), MetaStore::new())
            .with_context(|| format!("opening the coordination store in {}", args.data_dir.display()))?;
        eprintln!(
            "shoal server {} listening on {} with data in {} (peers: {})",
            args.id,
            args.listen,
            args.data_dir.display(),
            peers
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        // Stopping the node first ends the long-lived streams (watches, pipelines), which the
        // server's graceful shutdown would otherwise wait for. Answers a client does not read
        // (a paused client's) can still hold a connection open: the drain has a deadline.
        let stopping = node.clone();
        let (signalled, on_signal) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = signalled.send(());
            stopping.shutdown().await;
        };
        let drain_deadline = async {
            match on_signal.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = node.serve_with(listener, shutdown, meta.routes()) => served.context("serving")?,
            () = drain_deadline => eprintln!(
                "shoal server {}: connections still open {SHUTDOWN_DRAIN_MAX:?} after the signal; stopping anyway",
                args.id
            ),
        }
        node.shutdown().await;
        anyhow::Ok(())
    })
}

fn server_options(args: &ServerArgs) -> ServerOptions {
    ServerOptions {
        quota_bytes: args.quota_bytes,
        auto_compaction_period: (!args.auto_compaction_period.is_zero())
            .then_some(args.auto_compaction_period),
        hash_check_interval: args.hash_check_interval,
        lease_expiries_per_second_max: usize::try_from(args.lease_expiries_per_second).unwrap_or(usize::MAX),
        ..ServerOptions::default()
    }
}
