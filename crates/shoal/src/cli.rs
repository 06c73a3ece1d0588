//! The command line: every command, flag and help text. Global flags are accepted before or
//! after the subcommand (`shoal --endpoints … cluster status` = `shoal cluster status --endpoints …`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a fault-tolerant cluster in one binary (Raft, coordination store, DFS, MapReduce).",
    long_about = "Shoal turns a handful of machines into a fault-tolerant cluster. Every piece of state \
                  that must survive a crash lives in a replicated state machine on Raft.",
    after_help = "Examples:\n  shoal demo\n  shoal server --id 1 --data-dir /tmp/s1 --listen 127.0.0.1:7001 \\\n        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\n  shoal cluster status --endpoints 127.0.0.1:7001 -o json"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Cluster members to contact, HOST:PORT[,HOST:PORT…]; the client finds the leader itself.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub endpoints: Vec<String>,
    /// Output format: text for people, json for programs.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// How long a client command may take before it gives up (e.g. 500ms, 5s, 1m).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Narrated showcase: a local 3-member coordination store loses its leader under load
    /// (election, watch, lease, recovery); then a MapReduce word count loses a worker.
    #[command(after_help = "Example:\n  shoal demo\n  shoal demo --data-dir /tmp/shoal-demo")]
    Demo(DemoArgs),
    /// Run one cluster member. Members started with the same --peers form a cluster; a restarted
    /// member rejoins from its data dir with the same command line.
    #[command(
        after_help = "Example (three terminals):\n  shoal server --id 1 --data-dir /tmp/s1 --listen 127.0.0.1:7001 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\n  shoal server --id 2 --data-dir /tmp/s2 --listen 127.0.0.1:7002 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\n  shoal server --id 3 --data-dir /tmp/s3 --listen 127.0.0.1:7003 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    Server(ServerArgs),
    /// Run a whole local cluster (N `shoal server` child processes) for development.
    #[command(
        after_help = "Example:\n  shoal dev --nodes 3\n  export SHOAL_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    Dev(crate::dev::DevArgs),
    /// Read and write the coordination store: put, get, del, cas, txn, watch, compact.
    #[command(subcommand)]
    Kv(crate::kv::KvCommand),
    /// Leases: keys attached to a lease vanish when it expires (sessions, ephemeral keys).
    #[command(subcommand)]
    Lease(crate::kv::LeaseCommand),
    /// Inspect and operate the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure: the disk's fsync, the Raft core in the simulator, a real cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// MapReduce: `mr run | coordinator | worker | status` (see `shoal mr --help`).
    #[command(disable_help_flag = true)]
    Mr(RawArgs),
    /// Generate deterministic test data: `gen text | records` (see `shoal gen --help`).
    #[command(disable_help_flag = true)]
    Gen(RawArgs),
}

/// Arguments parsed by the subcommand itself (its `--output` is a path, not the format).
#[derive(Args, Debug)]
pub struct RawArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo nodes keep their data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This member's id (> 0), one of the ids in --peers.
    #[arg(long)]
    pub id: u64,
    /// Directory for the write-ahead log, hard state and snapshots (created if absent).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on for peers and clients, HOST:PORT.
    #[arg(long)]
    pub listen: String,
    /// The initial members, ID=HOST:PORT,… (the same on every member).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Length of one Raft tick (heartbeats every 2 ticks, elections after 15-30 ticks of silence).
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    pub tick: Duration,
    /// Take a snapshot and compact the log every this many applied entries.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_interval_entries: u64,
    /// Size quota of the store's data in bytes; past it, writes that add data fail with a
    /// NO_SPACE error until compaction or deletes free space (deletes always work).
    #[arg(long, default_value_t = shoal_meta::limits::QUOTA_BYTES_DEFAULT)]
    pub quota_bytes: i64,
    /// Compact old revisions automatically: every period, forget versions older than the
    /// revision current one period ago. 0 turns it off.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub auto_compaction_period: Duration,
    /// How often the leader compares the members' state hashes (divergence detection).
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    pub hash_check_interval: Duration,
    /// Leases the leader expires per second at most: when many leases run out together (after
    /// an outage, or when many clients go at once) their expiry is spread out instead of
    /// flooding the log.
    #[arg(long, default_value_t = shoal_meta::limits::LEASE_EXPIRIES_PER_SECOND_MAX as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_expiries_per_second: u64,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the members, the leader, term, commit and applied indexes, and the store's
    /// revision, size, quota and alarms.
    #[command(
        after_help = "Example:\n  shoal cluster status --endpoints 127.0.0.1:7001,127.0.0.1:7002 -o json"
    )]
    Status,
    /// Hand leadership to another voter (for planned maintenance).
    #[command(after_help = "Example:\n  shoal cluster transfer-leader 2 --endpoints 127.0.0.1:7001")]
    TransferLeader {
        /// Id of the voter that should become leader.
        id: u64,
    },
    /// Add, promote or remove members, one at a time.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Back up the coordination store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream a consistent snapshot of the store from a member to FILE (checksummed; written
    /// to FILE.partial, then renamed).
    #[command(after_help = "Example:\n  shoal cluster snapshot save backup.snap --endpoints 127.0.0.1:7001")]
    Save { file: PathBuf },
    /// Create one member's data dir of a NEW cluster from a saved snapshot (run it for every
    /// member, with the same --peers; then start the servers with those flags). Contacts no
    /// cluster.
    #[command(
        after_help = "Example (for each of the three new members):\n  shoal cluster snapshot restore backup.snap --id 1 --data-dir /var/lib/shoal-new \\\n        --peers 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001\n  shoal server --id 1 --data-dir /var/lib/shoal-new --listen 10.0.0.1:7001 --peers …"
    )]
    Restore {
        file: PathBuf,
        /// This member's id in the new cluster.
        #[arg(long)]
        id: u64,
        /// The new member's data dir (must not hold data yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster's members, ID=HOST:PORT,… (the same for every member).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a member: as a learner (default; it catches up without voting) or directly as a voter.
    #[command(
        after_help = "Example:\n  shoal cluster member add 4 127.0.0.1:7004 --endpoints 127.0.0.1:7001"
    )]
    Add {
        id: u64,
        /// The new member's HOST:PORT.
        addr: String,
        /// Add as a voter at once instead of a learner.
        #[arg(long)]
        voter: bool,
    },
    /// Promote a caught-up learner to voter.
    #[command(after_help = "Example:\n  shoal cluster member promote 4 --endpoints 127.0.0.1:7001")]
    Promote { id: u64 },
    /// Remove a member.
    #[command(after_help = "Example:\n  shoal cluster member remove 4 --endpoints 127.0.0.1:7001")]
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Load-test the coordination store (or etcd, for comparison): put, get, txn-cas, watch.
    Kv(crate::bench_kv::BenchKvArgs),
    /// The disk's own fsync latency: the physical floor of a durable commit.
    #[command(after_help = "Example:\n  shoal bench fsync --dir /tmp --count 2000")]
    Fsync {
        /// Directory on the disk to measure (a temporary file is created there).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Number of write+fsync rounds.
        #[arg(long, default_value_t = 2000)]
        count: u64,
        /// Bytes written before each fsync.
        #[arg(long, default_value_t = 4096)]
        write_bytes: usize,
    },
    /// Committed entries per second of a 3-node group in the deterministic simulator (pure CPU,
    /// no disk or network).
    #[command(after_help = "Example:\n  shoal bench raft-core --entries 1000000")]
    RaftCore {
        /// Entries to commit.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Bytes per entry.
        #[arg(long, default_value_t = 128)]
        payload_bytes: usize,
    },
    /// Proposals/s and commit latency against a running cluster, at several concurrency levels.
    #[command(
        after_help = "Example:\n  shoal bench raft --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --proposers 1,16,64,256 --duration 10s"
    )]
    Raft {
        /// Concurrency levels to measure, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        proposers: Vec<usize>,
        /// Measuring time per level.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        /// Bytes per proposal.
        #[arg(long, default_value_t = 128)]
        payload_bytes: usize,
    },
    /// Leader failover time: spawn a 3-process cluster, SIGKILL the leader, time until the new
    /// leader commits; repeated.
    #[command(after_help = "Example:\n  shoal bench failover --trials 20")]
    Failover {
        /// Number of kill/recover trials.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Where the spawned members keep their data (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Parses `500ms`, `5s`, `1m`, `1h` (humantime).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e} (try 500ms, 5s, 1m)"))
}
