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
    /// Run a local 3-node Raft cluster in this process and narrate it: election, commits, the
    /// leader's crash, re-election, recovery.
    #[command(after_help = "Example:\n  shoal demo\n  shoal demo --data-dir /tmp/shoal-demo")]
    Demo(DemoArgs),
    /// Run one cluster member. Members started with the same --peers form a cluster; a restarted
    /// member rejoins from its data dir with the same command line.
    #[command(
        after_help = "Example (three terminals):\n  shoal server --id 1 --data-dir /tmp/s1 --listen 127.0.0.1:7001 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\n  shoal server --id 2 --data-dir /tmp/s2 --listen 127.0.0.1:7002 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\n  shoal server --id 3 --data-dir /tmp/s3 --listen 127.0.0.1:7003 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    Server(ServerArgs),
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
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the members, the leader, term, commit and applied indexes.
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
