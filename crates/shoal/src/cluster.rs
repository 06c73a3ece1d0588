//! `shoal cluster …`: status and operations, through the Raft client.

use anyhow::Context;
use serde_json::json;
use shoal_raft::{NodeId, Role};
use shoal_raft_runtime::{ClientOptions, GroupStatus, MembershipChange, RaftClient};

use crate::cli::{ClusterCommand, GlobalArgs, MemberCommand, OutputFormat};
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Learner => "learner",
    }
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
        "answered_by": {"id": status.id.0, "role": role_name(status.role)},
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "first_index": status.first_index.0,
        "last_index": status.last_index.0,
        "snapshot_index": status.snapshot_index.0,
    })
}

pub fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let client = client(global)?;
        match command {
            ClusterCommand::Status => {
                let status = client.status().await.context("cluster status")?;
                print_status(global, &status);
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

fn print_status(global: &GlobalArgs, status: &GroupStatus) {
    if global.output == OutputFormat::Json {
        outln!("{}", status_json(status));
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
