//! `shoal cluster …`: status and operations, through the Raft client.

use anyhow::Context;
use serde_json::json;
use shoal_meta::proto::StatusResponse;
use shoal_raft::NodeId;
use shoal_raft_runtime::{ClientOptions, GroupStatus, MembershipChange, RaftClient};

use crate::cli::{ClusterCommand, GlobalArgs, MemberCommand, OutputFormat, SnapshotCommand};
use crate::server::META_GROUP_ID;

pub fn client(global: &GlobalArgs) -> anyhow::Result<RaftClient> {
    let options = ClientOptions {
        request_timeout: global.timeout,
        retry_timeout: global.timeout,
        ..ClientOptions::default()
    };
    RaftClient::with_options(global.endpoints.clone(), META_GROUP_ID, options)
        .with_context(|| format!("invalid --endpoints {}", global.endpoints.join(",")))
}

fn status_json(status: &GroupStatus) -> serde_json::Value {
    let members: Vec<serde_json::Value> = status
        .membership
        .voters
        .iter()
        .map(|id| (id, "voter"))
        .chain(status.membership.learners.iter().map(|id| (id, "learner")))
        .map(|(id, kind)| {
            let progress = status.progress.iter().find(|p| p.id == *id);
            json!({
                "id": id.0,
                "role": kind,
                "address": status.addresses.get(id),
                "match_index": progress.map(|p| p.match_index.0),
            })
        })
        .collect();
    json!({
        "leader": status.leader.map(|id| id.0),
        "leader_address": status.leader_addr,
        "term": status.term.0,
        "members": members,
        "answered_by": {"id": status.id.0, "role": status.role.name()},
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "first_index": status.first_index.0,
        "last_index": status.last_index.0,
        "snapshot_index": status.snapshot_index.0,
    })
}

/// `cluster snapshot restore`: checks the snapshot, then seeds the member's data dir.
fn restore_snapshot(
    global: &GlobalArgs,
    file: &std::path::Path,
    id: u64,
    data_dir: &std::path::Path,
    peers: &[String],
) -> anyhow::Result<()> {
    let peers = crate::server::parse_peers(peers)?;
    if !peers.contains_key(&NodeId(id)) {
        anyhow::bail!("--id {id} is not one of the ids in --peers");
    }
    let open = || std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()));
    let mut store = shoal_meta::store::MetaStore::new();
    shoal_raft_runtime::StateMachine::restore(&mut store, &mut std::io::BufReader::new(open()?))
        .with_context(|| format!("{} is not a valid store snapshot", file.display()))?;
    let group_dir = crate::server::group_dir(data_dir);
    if group_dir.exists() {
        anyhow::bail!(
            "{} already holds data; restore into an empty --data-dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    crate::server::check_cluster_identity(data_dir, &peers)?;
    shoal_raft_runtime::seed_group_from_snapshot(&group_dir, &peers, &mut std::io::BufReader::new(open()?))
        .with_context(|| format!("seeding {}", group_dir.display()))?;
    report(
        global,
        json!({"revision": store.revision(), "n_keys": store.n_keys(), "data_dir": data_dir.display().to_string()}),
        &format!(
            "restored revision {} ({} keys) into {}; start the member with the same --id, --data-dir and --peers",
            store.revision(),
            store.n_keys(),
            data_dir.display()
        ),
    );
    Ok(())
}

pub fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    if let ClusterCommand::Snapshot(SnapshotCommand::Restore {
        file,
        id,
        data_dir,
        peers,
    }) = &command
    {
        return restore_snapshot(global, file, *id, data_dir, peers);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let client = client(global)?;
        match command {
            ClusterCommand::Status => {
                let status = client.status().await.context("cluster status")?;
                // The store's side (revision, size, alarms) from the member that answered.
                let endpoint = status
                    .leader_addr
                    .clone()
                    .unwrap_or_else(|| global.endpoints[0].clone());
                let store = crate::kv::meta_client(global)?.status_at(&endpoint).await.ok();
                print_status(global, &status, store.as_ref());
            }
            ClusterCommand::Snapshot(SnapshotCommand::Restore { .. }) => unreachable!("handled above"),
            ClusterCommand::Snapshot(SnapshotCommand::Save { file }) => {
                let meta = crate::kv::meta_client(global)?;
                let partial = file.with_extension("partial");
                let mut out = std::io::BufWriter::new(
                    std::fs::File::create(&partial)
                        .with_context(|| format!("cannot create {}", partial.display()))?,
                );
                let (n_bytes, revision) = meta.snapshot(&mut out).await.context("snapshot save")?;
                let out = out.into_inner().context("writing the snapshot")?;
                out.sync_all().context("syncing the snapshot")?;
                std::fs::rename(&partial, &file)
                    .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
                report(
                    global,
                    json!({"file": file.display().to_string(), "bytes": n_bytes, "revision": revision}),
                    &format!(
                        "saved a snapshot at revision {revision} ({n_bytes} bytes) to {}",
                        file.display()
                    ),
                );
            }
            ClusterCommand::TransferLeader { id } => {
                client
                    .transfer_leader(NodeId(id))
                    .await
                    .with_context(|| format!("transfer leadership to {id}"))?;
                report(
                    global,
                    json!({"transferred_to": id}),
                    &format!("leadership transferred to node {id}"),
                );
            }
            ClusterCommand::Member(member) => {
                let (change, what) = match member {
                    MemberCommand::Add {
                        id,
                        addr,
                        voter: false,
                    } => (
                        MembershipChange::AddLearner {
                            id: NodeId(id),
                            address: addr,
                        },
                        format!("added learner {id}"),
                    ),
                    MemberCommand::Add {
                        id,
                        addr,
                        voter: true,
                    } => (
                        MembershipChange::AddVoter {
                            id: NodeId(id),
                            address: addr,
                        },
                        format!("added voter {id}"),
                    ),
                    MemberCommand::Promote { id } => (
                        MembershipChange::PromoteLearner(NodeId(id)),
                        format!("promoted {id} to voter"),
                    ),
                    MemberCommand::Remove { id } => {
                        (MembershipChange::Remove(NodeId(id)), format!("removed {id}"))
                    }
                };
                let (index, membership) = client
                    .change_membership(change)
                    .await
                    .context("membership change")?;
                let voters: Vec<u64> = membership.voters.iter().map(|id| id.0).collect();
                let learners: Vec<u64> = membership.learners.iter().map(|id| id.0).collect();
                report(
                    global,
                    json!({"index": index.0, "voters": voters, "learners": learners}),
                    &format!("{what} at index {index}; voters {voters:?}, learners {learners:?}"),
                );
            }
        }
        anyhow::Ok(())
    })
}

fn report(global: &GlobalArgs, value: serde_json::Value, text: &str) {
    match global.output {
        OutputFormat::Json => outln!("{value}"),
        OutputFormat::Text => outln!("{text}"),
    }
}

fn print_status(global: &GlobalArgs, status: &GroupStatus, store: Option<&StatusResponse>) {
    if global.output == OutputFormat::Json {
        let mut value = status_json(status);
        if let Some(store) = store {
            value["revision"] = json!(store.header.as_ref().map_or(0, |h| h.revision));
            value["compact_revision"] = json!(store.compact_revision);
            value["db_size_bytes"] = json!(store.db_size_bytes);
            value["quota_bytes"] = json!(store.quota_bytes);
            value["n_keys"] = json!(store.n_keys);
            value["n_leases"] = json!(store.n_leases);
            value["alarms"] = json!(store
                .alarms
                .iter()
                .map(|a| json!({"member": a.member_id, "alarm": "CORRUPT", "revision": a.revision, "message": a.message}))
                .collect::<Vec<_>>());
        }
        outln!("{value}");
        return;
    }
    match status.leader {
        Some(leader) => outln!(
            "leader: node {leader} ({}), term {}",
            status.leader_addr.as_deref().unwrap_or("address unknown"),
            status.term
        ),
        None => outln!(
            "leader: none (election in progress or no quorum), term {}",
            status.term
        ),
    }
    outln!(
        "log: first {} last {} commit {} applied {} snapshot {}",
        status.first_index,
        status.last_index,
        status.commit_index,
        status.applied_index,
        status.snapshot_index
    );
    if let Some(store) = store {
        outln!(
            "store: revision {} (compacted below {}), {} keys, {} leases, {} of {} quota bytes used",
            store.header.as_ref().map_or(0, |h| h.revision),
            store.compact_revision,
            store.n_keys,
            store.n_leases,
            store.db_size_bytes,
            store.quota_bytes
        );
        for alarm in &store.alarms {
            outln!(
                "ALARM: member {} diverged at revision {}: {}",
                alarm.member_id,
                alarm.revision,
                alarm.message
            );
        }
    }
    outln!("members:");
    for id in status
        .membership
        .voters
        .iter()
        .chain(status.membership.learners.iter())
    {
        let kind = if status.membership.voters.contains(id) {
            "voter"
        } else {
            "learner"
        };
        let progress = status
            .progress
            .iter()
            .find(|p| p.id == *id)
            .map(|p| format!(" match {}", p.match_index))
            .unwrap_or_default();
        outln!(
            "  {id} {kind} {}{progress}",
            status.addresses.get(id).map_or("?", String::as_str)
        );
    }
}
