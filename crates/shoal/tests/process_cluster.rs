//! Real processes: `shoal server` members spawned from the built binary, killed with SIGKILL,
//! frozen with SIGSTOP and restarted from their data directories while concurrent clients
//! record a history, which `shoal-lincheck` then checks for linearizability (Herlihy & Wing).
//! The command line's error handling is checked against real processes too.
//!
//! No sleeps as synchronisation: every wait for a state (a member serving, a leader elected)
//! polls with a deadline. The sleeps that remain are the schedule itself: the nemesis's pace,
//! how long a member stays down, and the clients' backoff after an error.
//!
//! The seed (`SHOAL_TEST_SEED`, else the clock; printed) fixes the clients' operations and the
//! nemesis's choices. Real processes and real time make the interleaving differ between runs,
//! so a failing seed is a starting point for a rerun, not an exact replay. On failure the
//! members' logs (`SHOAL_LOG=info`) and the history stay in a kept temporary directory whose
//! path is printed. `SHOAL_TEST_LOAD_SECS=300` makes a soak run of the fault scenarios.
//!
//! Faults: SIGKILL of one member (the leader half the time) restarted after a pause, SIGSTOP
//! of one member for about a second, and once per scenario a crash of every member at once
//! under load; at the end, a full restart and a linearizable read of every key.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message;
use shoal_lincheck::{check, CheckResult, ClientId, KvInput, KvModel, KvOutput, Operation};
use shoal_meta::client::{ClientOptions as MetaClientOptions, Error as MetaError, MetaClient};
use shoal_meta::proto::{command_reply, CommandReply, RangeRequest};
use shoal_raft_runtime::{ClientOptions, Error, GroupStatus, RaftClient};
use tokio::sync::Notify;

/// The Raft group holding the cluster's state (`shoal::server::META_GROUP_ID`).
const GROUP_ID: u64 = 1;
/// Longest wait for a member to serve or a leader to be elected. Generous: the tests share
/// two cores with other builds.
const WAIT_MAX: Duration = Duration::from_secs(20);
/// Time allowed for one client RPC; past it a write's outcome is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client keeps retrying one operation after errors that prove it was not applied
/// (and, for reads, after any error: a read has no effect).
const OPERATION_RETRY_MAX: Duration = Duration::from_secs(3);
/// Pause before retrying a refused request (no leader known yet, a full queue).
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// Pause after a write of unknown outcome, so a client facing a dead or frozen leader does not
/// pile up unknown operations (each stays concurrent with the rest of the history and widens
/// the checker's search).
const UNKNOWN_BACKOFF: Duration = Duration::from_millis(100);
/// Time the linearizability checker may take for one history.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the clients run under faults; `SHOAL_TEST_LOAD_SECS` overrides it for a soak run.
const LOAD_DURATION_DEFAULT: Duration = Duration::from_secs(15);

/// The cluster tests run one at a time: each spawns up to five servers that fsync, and two
/// cores shared with other builds are too few to run two such clusters without elections
/// failing for want of CPU rather than for the faults a test injects.
static CLUSTER_TESTS: Mutex<()> = Mutex::new(());

fn serialize_cluster_tests() -> MutexGuard<'static, ()> {
    CLUSTER_TESTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ----- randomness -----

/// The core's SplitMix64, with the draws these tests make.
struct Rng(shoal_raft::SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(shoal_raft::SplitMix64::new(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.range(0, n)
    }

    fn chance_percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn duration_ms(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.below(max_ms - min_ms + 1))
    }
}

fn load_duration() -> Duration {
    match std::env::var("SHOAL_TEST_LOAD_SECS") {
        Ok(text) => Duration::from_secs(text.parse().expect("SHOAL_TEST_LOAD_SECS must be whole seconds")),
        Err(_) => LOAD_DURATION_DEFAULT,
    }
}

fn test_seed() -> u64 {
    match std::env::var("SHOAL_TEST_SEED") {
        Ok(text) => text.parse().expect("SHOAL_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

// ----- server processes -----

fn shoal_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Lowest port a lone member's port is picked from.
const MEMBER_PORT_MIN: u16 = 10_000;
/// Tries to find free member ports before giving up.
const PORT_PICK_ATTEMPTS_MAX: u32 = 1_000;

/// Loopback addresses free at the time of the call, bound together (so they differ) and then
/// released for the servers. They lie below the kernel's ephemeral port range: while a member
/// is down, its port must not be handed to an outgoing connection (a client's, another
/// member's), which the ephemeral range would allow, or the restarted member could not bind it.
fn free_addresses(n: usize) -> Vec<String> {
    let ephemeral_port_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(MEMBER_PORT_MIN + 1_000);
    // Not the test's seed: a rerun with the same seed must not reuse ports still in use.
    let clock_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(clock_ns ^ u64::from(std::process::id()));
    let mut listeners = Vec::new();
    let mut n_attempts = 0;
    while listeners.len() < n {
        n_attempts += 1;
        assert!(
            n_attempts <= PORT_PICK_ATTEMPTS_MAX,
            "no {n} free ports in {MEMBER_PORT_MIN}..{ephemeral_port_min}"
        );
        let port = MEMBER_PORT_MIN + rng.below(u64::from(ephemeral_port_min - MEMBER_PORT_MIN)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").to_string())
        .collect()
}

fn signal(pid: u32, signal_name: &str) {
    let status = Command::new("kill")
        .args([signal_name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal_name} {pid} failed: {status}");
}

fn log_tail(path: &Path, n_lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n_lines)..].join("\n")
}

struct Member {
    id: u64,
    address: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Frozen with SIGSTOP.
    paused: bool,
}

/// A cluster of `shoal server` processes. Dropping it kills every process it started; after a
/// panic it keeps the temporary directory (logs, data, history) and prints its path.
struct ProcessCluster {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    peers: String,
    snapshot_interval_entries: u64,
    members: Vec<Member>,
}

impl ProcessCluster {
    /// Starts `n_members` servers (ids 1..=n) that form one cluster.
    fn start(n_members: usize, snapshot_interval_entries: u64) -> ProcessCluster {
        let root = tempfile::Builder::new()
            .prefix("shoal-process-cluster-")
            .tempdir()
            .expect("temp dir");
        let root_path = root.path().to_path_buf();
        let addresses = free_addresses(n_members);
        let peers = addresses
            .iter()
            .enumerate()
            .map(|(idx, address)| format!("{}={address}", idx + 1))
            .collect::<Vec<_>>()
            .join(",");
        let members = addresses
            .into_iter()
            .enumerate()
            .map(|(idx, address)| Member {
                id: idx as u64 + 1,
                address,
                data_dir: root_path.join(format!("node-{}", idx + 1)),
                log_path: root_path.join(format!("node-{}.log", idx + 1)),
                child: None,
                paused: false,
            })
            .collect();
        let mut cluster = ProcessCluster {
            root: Some(root),
            root_path,
            peers,
            snapshot_interval_entries,
            members,
        };
        for idx in 0..n_members {
            cluster.spawn(idx);
        }
        cluster
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.address.clone()).collect()
    }

    fn idx_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// Starts member `idx` with the same command line as always; its output is appended to its
    /// log after a marker line.
    fn spawn(&mut self, idx: usize) {
        let snapshot_interval_entries = self.snapshot_interval_entries.to_string();
        let peers = self.peers.clone();
        let member = &mut self.members[idx];
        assert!(member.child.is_none(), "member {} is already running", member.id);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .expect("open member log");
        writeln!(log, "===== test harness: starting member {} =====", member.id).expect("write log");
        let stderr = log.try_clone().expect("clone log file");
        let child = Command::new(shoal_binary())
            .args(["server", "--id", &member.id.to_string(), "--data-dir"])
            .arg(&member.data_dir)
            .args(["--listen", &member.address, "--peers", &peers])
            .args(["--snapshot-interval-entries", &snapshot_interval_entries])
            .env("SHOAL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawn shoal server");
        member.child = Some(child);
        member.paused = false;
    }

    /// SIGKILL: the process dies at once, with whatever it had not fsynced.
    fn kill(&mut self, idx: usize) {
        let member = &mut self.members[idx];
        if let Some(mut child) = member.child.take() {
            child.kill().expect("SIGKILL a member");
            child.wait().expect("reap a member");
        }
        member.paused = false;
        if let Ok(mut log) = OpenOptions::new().append(true).open(&member.log_path) {
            let _ = writeln!(log, "===== test harness: SIGKILLed member {} =====", member.id);
        }
    }

    fn pause(&mut self, idx: usize) {
        let member = &mut self.members[idx];
        let child = member.child.as_ref().expect("pause a running member");
        signal(child.id(), "-STOP");
        member.paused = true;
    }

    fn resume(&mut self, idx: usize) {
        let member = &mut self.members[idx];
        let child = member.child.as_ref().expect("resume a running member");
        signal(child.id(), "-CONT");
        member.paused = false;
    }

    /// A member that exited without being killed by the test is a finding: its status and
    /// the end of its log.
    fn unexpected_exit(&mut self) -> Option<String> {
        for member in &mut self.members {
            let Some(child) = member.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                member.child = None;
                return Some(format!(
                    "member {} exited on its own ({status}); end of {}:\n{}",
                    member.id,
                    member.log_path.display(),
                    log_tail(&member.log_path, 40)
                ));
            }
        }
        None
    }

    fn save(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root_path.join(name);
        let mut file = File::create(&path).expect("create a file in the cluster directory");
        file.write_all(text.as_bytes())
            .expect("write a file in the cluster directory");
        path
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                // SIGKILL ends a stopped process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                let path = root.keep();
                eprintln!("kept the cluster's logs, data and history in {}", path.display());
            }
        }
    }
}

type SharedCluster = Arc<Mutex<ProcessCluster>>;

fn lock_cluster(cluster: &SharedCluster) -> MutexGuard<'_, ProcessCluster> {
    cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn client_options(request_timeout: Duration, retry_timeout: Duration) -> ClientOptions {
    ClientOptions {
        request_timeout,
        retry_timeout,
        ..ClientOptions::default()
    }
}

/// Polls every member until it answers a status request (whatever its role), then the group
/// until a leader answers; fails with the lagging member's log.
async fn wait_until_serving(cluster: &SharedCluster) -> GroupStatus {
    let deadline = Instant::now() + WAIT_MAX;
    let endpoints = lock_cluster(cluster).endpoints();
    let client = RaftClient::with_options(
        endpoints.clone(),
        GROUP_ID,
        client_options(Duration::from_millis(500), Duration::from_millis(500)),
    )
    .expect("client");
    for (idx, endpoint) in endpoints.iter().enumerate() {
        loop {
            if let Some(exit) = lock_cluster(cluster).unexpected_exit() {
                panic!("{exit}");
            }
            let result = client.status_at(endpoint).await;
            if result.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let cluster = lock_cluster(cluster);
                let member = &cluster.members[idx];
                panic!(
                    "member {} at {endpoint} did not serve within {WAIT_MAX:?}: {result:?}; end of its log:\n{}",
                    member.id,
                    log_tail(&member.log_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    loop {
        match client.status().await {
            Ok(status) => return status,
            Err(e) if Instant::now() >= deadline => {
                panic!("no leader within {WAIT_MAX:?} with every member up: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ----- clients and their history -----

type History = Vec<Operation<KvInput, KvOutput>>;

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

fn error_kind(error: &Error) -> String {
    let debug = format!("{error:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_string()
}

#[derive(Default, Debug)]
struct ClientStats {
    n_puts_acked: u64,
    n_puts_unknown: u64,
    /// Puts refused until they were abandoned, every refusal proving it was not applied.
    n_puts_not_applied: u64,
    n_gets_ok: u64,
    n_gets_failed: u64,
    /// Errors of puts by kind, retried ones included.
    put_errors: BTreeMap<String, u64>,
    /// Errors of gets by kind, retried ones included.
    get_errors: BTreeMap<String, u64>,
}

impl ClientStats {
    fn merge(&mut self, other: ClientStats) {
        self.n_puts_acked += other.n_puts_acked;
        self.n_puts_unknown += other.n_puts_unknown;
        self.n_puts_not_applied += other.n_puts_not_applied;
        self.n_gets_ok += other.n_gets_ok;
        self.n_gets_failed += other.n_gets_failed;
        for (kind, n) in other.put_errors {
            *self.put_errors.entry(kind).or_default() += n;
        }
        for (kind, n) in other.get_errors {
            *self.get_errors.entry(kind).or_default() += n;
        }
    }
}

enum PutOutcome {
    Acked,
    Unknown,
    NotApplied,
}

/// One client: random puts of unique values and linearizable gets on `keys` until `stop`.
///
/// The `RaftClient` makes exactly one attempt per call (`retry_timeout` zero) and this loop
/// retries only errors that prove the request was not applied (`Error::is_retryable`). The
/// client's own retries also cover a connection that broke after the request was sent, which
/// can apply a put twice; with another client's put in between, that is not a history of a
/// register, so the harness must not let it happen.
async fn run_client(
    client_idx: u64,
    endpoints: Vec<String>,
    keys: Vec<String>,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) -> ClientStats {
    let client = RaftClient::with_options(
        endpoints,
        GROUP_ID,
        client_options(REQUEST_TIMEOUT, Duration::ZERO),
    )
    .expect("client");
    let mut rng = Rng::new(seed ^ client_idx.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut stats = ClientStats::default();
    let client_id = ClientId(client_idx);
    let mut n_puts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        if rng.chance_percent(50) {
            n_puts += 1;
            let value = format!("c{client_idx}-{n_puts}");
            let command = shoal_meta::store::put_command(key.as_bytes(), value.as_bytes());
            let input = KvInput::put(&key, &value);
            let call_time = micros_since(start);
            let give_up_at = Instant::now() + OPERATION_RETRY_MAX;
            let outcome = loop {
                match client.propose(command.clone()).await {
                    Ok(reply) => {
                        let decoded = decode_reply(&reply);
                        assert!(
                            matches!(decoded, Ok(command_reply::Reply::Put(_))),
                            "put {key}={value} answered an error: {decoded:?}"
                        );
                        break PutOutcome::Acked;
                    }
                    Err(e) => {
                        *stats.put_errors.entry(error_kind(&e)).or_default() += 1;
                        if !e.is_retryable() {
                            break PutOutcome::Unknown;
                        }
                        if Instant::now() >= give_up_at {
                            break PutOutcome::NotApplied;
                        }
                        tokio::time::sleep(RETRY_BACKOFF).await;
                    }
                }
            };
            match outcome {
                PutOutcome::Acked => {
                    let return_time = micros_since(start);
                    stats.n_puts_acked += 1;
                    lock_history(&history).push(Operation::returned(
                        client_id,
                        input,
                        call_time,
                        KvOutput::Done,
                        return_time,
                    ));
                }
                PutOutcome::Unknown => {
                    stats.n_puts_unknown += 1;
                    lock_history(&history).push(Operation::unknown(client_id, input, call_time));
                    tokio::time::sleep(UNKNOWN_BACKOFF).await;
                }
                PutOutcome::NotApplied => stats.n_puts_not_applied += 1,
            }
        } else {
            let call_time = micros_since(start);
            match read_key(&client, &key, OPERATION_RETRY_MAX, &mut stats).await {
                Some(value) => {
                    let return_time = micros_since(start);
                    stats.n_gets_ok += 1;
                    lock_history(&history).push(Operation::returned(
                        client_id,
                        KvInput::get(&key),
                        call_time,
                        KvOutput::Value(value),
                        return_time,
                    ));
                }
                // A read has no effect: one that never answered can be left out.
                None => stats.n_gets_failed += 1,
            }
        }
    }
    stats
}

/// The store's reply to a raw proposal or query.
fn decode_reply(reply: &[u8]) -> Result<command_reply::Reply, String> {
    match CommandReply::decode(reply).map_err(|e| e.to_string())?.reply {
        Some(command_reply::Reply::Error(e)) => Err(e.message),
        Some(reply) => Ok(reply),
        None => Err("empty reply".to_string()),
    }
}

fn lock_history(history: &Mutex<History>) -> MutexGuard<'_, History> {
    history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A linearizable read of `key`, retried after any error until `retry_max`; `None` if it
/// never succeeded, else the value.
async fn read_key(
    client: &RaftClient,
    key: &str,
    retry_max: Duration,
    stats: &mut ClientStats,
) -> Option<Option<String>> {
    let give_up_at = Instant::now() + retry_max;
    loop {
        let query = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        match client.read(query.encode_to_vec()).await {
            Ok(reply) => {
                let value = match decode_reply(&reply) {
                    Ok(command_reply::Reply::Range(r)) => r.kvs.into_iter().next().map(|kv| kv.value),
                    other => panic!("get {key} answered {other:?}"),
                };
                return Some(value.map(|v| String::from_utf8(v).expect("values are UTF-8")));
            }
            Err(e) => {
                *stats.get_errors.entry(error_kind(&e)).or_default() += 1;
                if Instant::now() >= give_up_at {
                    return None;
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

/// One client of the coordination store through `MetaClient`: puts of unique values,
/// linearizable gets and compare-and-swaps on `keys` until `stop`. The client retries every
/// failure itself, with the same sequence number, so a retried write applies at most once
/// (exactly-once sessions); what still fails is recorded as of unknown outcome.
async fn run_meta_client(
    client_idx: u64,
    endpoints: Vec<String>,
    keys: Vec<String>,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) -> ClientStats {
    let client = MetaClient::with_options(
        endpoints,
        MetaClientOptions {
            request_timeout: REQUEST_TIMEOUT,
            retry_timeout: OPERATION_RETRY_MAX,
            ..MetaClientOptions::default()
        },
    )
    .expect("client");
    let mut rng = Rng::new(seed ^ client_idx.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut stats = ClientStats::default();
    let client_id = ClientId(client_idx);
    let mut n_writes = 0u64;
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let roll = rng.below(100);
        let call_time = micros_since(start);
        if roll < 40 || (roll < 70 && !last_seen.contains_key(&key)) {
            n_writes += 1;
            let value = format!("m{client_idx}-{n_writes}");
            let input = KvInput::put(&key, &value);
            match client.put(key.as_bytes(), value.as_bytes()).await {
                Ok(_) => {
                    stats.n_puts_acked += 1;
                    lock_history(&history).push(Operation::returned(
                        client_id,
                        input,
                        call_time,
                        KvOutput::Done,
                        micros_since(start),
                    ));
                }
                Err(e) => record_meta_write_error(&e, client_id, input, call_time, &history, &mut stats),
            }
        } else if roll < 70 {
            n_writes += 1;
            let expected = last_seen[&key].clone();
            let new = format!("m{client_idx}-{n_writes}");
            let input = KvInput::cas(&key, Some(&expected), &new);
            match client
                .cas(key.as_bytes(), expected.as_bytes(), new.as_bytes())
                .await
            {
                Ok(swapped) => {
                    stats.n_puts_acked += 1;
                    if swapped {
                        last_seen.insert(key.clone(), new.clone());
                    }
                    lock_history(&history).push(Operation::returned(
                        client_id,
                        input,
                        call_time,
                        KvOutput::Swapped(swapped),
                        micros_since(start),
                    ));
                }
                Err(e) => record_meta_write_error(&e, client_id, input, call_time, &history, &mut stats),
            }
        } else {
            match client.get(key.as_bytes()).await {
                Ok(kv) => {
                    let value = kv.map(|kv| String::from_utf8(kv.value).expect("values are UTF-8"));
                    if let Some(value) = &value {
                        last_seen.insert(key.clone(), value.clone());
                    }
                    stats.n_gets_ok += 1;
                    lock_history(&history).push(Operation::returned(
                        client_id,
                        KvInput::get(&key),
                        call_time,
                        KvOutput::Value(value),
                        micros_since(start),
                    ));
                }
                Err(e) => {
                    *stats.get_errors.entry(meta_error_kind(&e)).or_default() += 1;
                    stats.n_gets_failed += 1;
                }
            }
        }
    }
    stats
}

fn meta_error_kind(error: &MetaError) -> String {
    match error {
        MetaError::Server { code, .. } => format!("{code:?}"),
        MetaError::Unavailable { .. } => "Unavailable".to_string(),
        MetaError::UnknownOutcome { .. } => "UnknownOutcome".to_string(),
        MetaError::InvalidEndpoints(_) => "InvalidEndpoints".to_string(),
    }
}

/// A failed write: certainly not applied (`Unavailable`: dropped from the history) or of
/// unknown outcome (recorded as such). A store error on a valid request is a bug.
fn record_meta_write_error(
    error: &MetaError,
    client_id: ClientId,
    input: KvInput,
    call_time: u64,
    history: &Mutex<History>,
    stats: &mut ClientStats,
) {
    *stats.put_errors.entry(meta_error_kind(error)).or_default() += 1;
    match error {
        MetaError::Unavailable { .. } => stats.n_puts_not_applied += 1,
        MetaError::UnknownOutcome { .. } => {
            stats.n_puts_unknown += 1;
            lock_history(history).push(Operation::unknown(client_id, input, call_time));
        }
        other => panic!("write {input:?} failed with a store error: {other}"),
    }
}

// ----- the nemesis -----

struct NemesisOptions {
    /// Members down (killed or frozen) at once, at most: a minority, so the rest can commit.
    n_down_max: usize,
    /// Pace of new faults.
    fault_interval_ms: (u64, u64),
    /// How long a killed member stays down before its restart.
    kill_downtime_ms: (u64, u64),
    /// How long a member stays frozen by SIGSTOP.
    pause_ms: (u64, u64),
    /// The fault (counted from 0) that kills every member at once, clients still running,
    /// and restarts them together after `kill_downtime_ms`; postponed while members are down.
    crash_all_at_fault_idx: Option<u64>,
}

#[derive(Default, Debug)]
struct NemesisStats {
    n_kills: u64,
    n_leader_kills: u64,
    n_pauses: u64,
    n_leader_pauses: u64,
    /// Whole-cluster crashes (not counted in `n_kills`).
    n_crashes_all: u64,
    /// Most members down at once.
    n_down_most: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Killed,
    Paused,
}

/// Every ~1.5 s kills (SIGKILL) or freezes (SIGSTOP) a member, the leader half the time (the
/// first fault always kills the leader), and restarts or thaws it after a while; up to
/// `n_down_max` members down at once, except for one optional crash of the whole cluster. On
/// `stop`, heals every member and returns. A member exiting on its own fails the test.
async fn run_nemesis(
    cluster: SharedCluster,
    seed: u64,
    stop: Arc<Notify>,
    options: NemesisOptions,
) -> Result<NemesisStats, String> {
    let endpoints = lock_cluster(&cluster).endpoints();
    let status_client = RaftClient::with_options(
        endpoints,
        GROUP_ID,
        client_options(Duration::from_millis(300), Duration::from_millis(600)),
    )
    .expect("client");
    let mut rng = Rng::new(seed ^ 0x6e65_6d65_7369_7321);
    let mut stats = NemesisStats::default();
    // (member idx, fault, when it heals)
    let mut faults: Vec<(usize, Fault, Instant)> = Vec::new();
    let mut next_fault_at =
        Instant::now() + rng.duration_ms(options.fault_interval_ms.0, options.fault_interval_ms.1);
    let mut stopping = false;
    loop {
        let now = Instant::now();
        {
            let mut cluster = lock_cluster(&cluster);
            faults.retain(|&(idx, fault, heal_at)| {
                if !stopping && heal_at > now {
                    return true;
                }
                match fault {
                    Fault::Killed => cluster.spawn(idx),
                    Fault::Paused => cluster.resume(idx),
                }
                false
            });
            if let Some(exit) = cluster.unexpected_exit() {
                // Heal the others so the cluster is left whole for the report.
                for &(idx, fault, _) in &faults {
                    match fault {
                        Fault::Killed => cluster.spawn(idx),
                        Fault::Paused => cluster.resume(idx),
                    }
                }
                return Err(exit);
            }
        }
        if stopping {
            return Ok(stats);
        }
        if now >= next_fault_at {
            next_fault_at = now + rng.duration_ms(options.fault_interval_ms.0, options.fault_interval_ms.1);
            let fault_idx = stats.n_kills + stats.n_pauses + stats.n_crashes_all;
            if options.crash_all_at_fault_idx == Some(fault_idx) {
                if faults.is_empty() {
                    let mut cluster = lock_cluster(&cluster);
                    let heal_at = Instant::now()
                        + rng.duration_ms(options.kill_downtime_ms.0, options.kill_downtime_ms.1);
                    for idx in 0..cluster.members.len() {
                        cluster.kill(idx);
                        faults.push((idx, Fault::Killed, heal_at));
                    }
                    stats.n_crashes_all += 1;
                }
            } else if faults.len() < options.n_down_max {
                let is_first_fault = fault_idx == 0;
                let leader_id = if is_first_fault || rng.chance_percent(50) {
                    status_client.status().await.ok().map(|s| s.id.0)
                } else {
                    None
                };
                let mut cluster = lock_cluster(&cluster);
                let healthy: Vec<usize> = (0..cluster.members.len())
                    .filter(|idx| !faults.iter().any(|(faulty, _, _)| faulty == idx))
                    .collect();
                let leader_idx = leader_id
                    .and_then(|id| cluster.idx_of(id))
                    .filter(|idx| healthy.contains(idx));
                let idx = leader_idx.unwrap_or_else(|| healthy[rng.below(healthy.len() as u64) as usize]);
                let is_leader = leader_idx.is_some();
                if !is_first_fault && rng.chance_percent(30) {
                    cluster.pause(idx);
                    stats.n_pauses += 1;
                    stats.n_leader_pauses += u64::from(is_leader);
                    let heal_at = Instant::now() + rng.duration_ms(options.pause_ms.0, options.pause_ms.1);
                    faults.push((idx, Fault::Paused, heal_at));
                } else {
                    cluster.kill(idx);
                    stats.n_kills += 1;
                    stats.n_leader_kills += u64::from(is_leader);
                    let heal_at = Instant::now()
                        + rng.duration_ms(options.kill_downtime_ms.0, options.kill_downtime_ms.1);
                    faults.push((idx, Fault::Killed, heal_at));
                }
                stats.n_down_most = stats.n_down_most.max(faults.len());
            }
        }
        let wake_at = faults
            .iter()
            .map(|&(_, _, heal_at)| heal_at)
            .chain(std::iter::once(next_fault_at))
            .min()
            .expect("at least the next fault");
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            _ = stop.notified() => stopping = true,
        }
    }
}

// ----- the scenario -----

struct ScenarioOptions {
    name: &'static str,
    n_members: usize,
    n_clients: u64,
    n_keys: usize,
    snapshot_interval_entries: u64,
    nemesis: NemesisOptions,
    clients: ClientKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// Raw Raft proposals and reads, one attempt each (tests the Raft layer).
    RaftRaw,
    /// The coordination store's client: put, get, CAS with exactly-once retries.
    Meta,
}

/// The history, one operation a line, for a file kept after a failure.
fn history_text(history: &History) -> String {
    history.iter().map(|op| format!("{op:?}\n")).collect()
}

/// The lines of a violation worth printing: its header and the operations just before the
/// one no order explains (the whole description can run to thousands of lines).
fn violation_summary(violation_text: &str, n_lines_tail: usize) -> String {
    let lines: Vec<&str> = violation_text.lines().collect();
    if lines.len() <= n_lines_tail + 1 {
        return violation_text.to_string();
    }
    format!(
        "{}\n  … {} lines …\n{}",
        lines[0],
        lines.len() - 1 - n_lines_tail,
        lines[lines.len() - n_lines_tail..].join("\n")
    )
}

/// The history without the puts of unknown outcome whose value no get returned, and how
/// many were left out. This leaves the verdict unchanged, because every value is unique and
/// a put overwrites: given a linearization of the whole history, removing such a put leaves
/// one of the rest (nothing read what it wrote before the next put or the end), and a
/// linearization of the rest is one of the whole (an operation of unknown outcome may never
/// take effect). It matters for the checker's time: today its search grows as 2^k in the
/// number k of unknown puts of a key, read or not (each stays concurrent with the rest of the
/// history, and the depth-first search meets large sets of them before the subsets that would
/// subsume them), so a few leader kills' worth could exceed `CHECK_TIMEOUT`.
fn without_unobserved_unknown_puts(history: &History) -> (History, usize) {
    let observed: BTreeSet<(&str, &str)> = history
        .iter()
        .filter_map(|op| match (&op.input, &op.output) {
            (KvInput::Get { key }, Some(KvOutput::Value(Some(value)))) => {
                Some((key.as_str(), value.as_str()))
            }
            _ => None,
        })
        .collect();
    let kept: History = history
        .iter()
        .filter(|op| match &op.input {
            KvInput::Put { key, value } if op.return_time.is_none() => {
                observed.contains(&(key.as_str(), value.as_str()))
            }
            KvInput::Cas { key, new, .. } if op.return_time.is_none() => {
                observed.contains(&(key.as_str(), new.as_str()))
            }
            _ => true,
        })
        .cloned()
        .collect();
    let n_left_out = history.len() - kept.len();
    (kept, n_left_out)
}

struct CheckReport {
    elapsed: Duration,
    /// Puts of unknown outcome some get saw, so checked as such.
    n_unknown_kept: usize,
}

fn check_history(cluster: &ProcessCluster, what: &str, seed: u64, history: &History) -> CheckReport {
    let started = Instant::now();
    let (checked, n_left_out) = without_unobserved_unknown_puts(history);
    let n_unknown_kept = checked.iter().filter(|op| op.return_time.is_none()).count();
    let result = check(&KvModel, &checked, Some(CHECK_TIMEOUT)).expect("a well-formed history");
    let elapsed = started.elapsed();
    match result {
        CheckResult::Ok => CheckReport {
            elapsed,
            n_unknown_kept,
        },
        CheckResult::Illegal { violation } => {
            let history_path = cluster.save("history.txt", &history_text(history));
            let violation_text = violation.to_string();
            let violation_path = cluster.save("violation.txt", &violation_text);
            panic!(
                "seed {seed}: {what} is not linearizable (history in {}, violation in {}; its \
                 indices count the history without {n_left_out} unknown puts no get saw):\n{}",
                history_path.display(),
                violation_path.display(),
                violation_summary(&violation_text, 40)
            );
        }
        CheckResult::Timeout => {
            let path = cluster.save("history.txt", &history_text(history));
            panic!(
                "seed {seed}: the checker could not decide {what} within {CHECK_TIMEOUT:?} \
                 ({} operations, {n_unknown_kept} of unknown outcome; history in {})",
                checked.len(),
                path.display()
            );
        }
    }
}

/// After a full restart each key must read a value some put wrote to it, must not be missing
/// if a put to it was acknowledged, and must not be a value that an acknowledged put called
/// after that value's put returned overwrote. (The linearizability check of the history with
/// these reads appended implies all of it; this says what went wrong in plain words.)
fn final_values_problems(history: &History, finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, final_value) in finals {
        // Writers: puts, and compare-and-swaps that swapped or may have.
        let puts: Vec<&Operation<KvInput, KvOutput>> = history
            .iter()
            .filter(|op| match &op.input {
                KvInput::Put { key: k, .. } => k == key,
                KvInput::Cas { key: k, .. } => k == key && op.output != Some(KvOutput::Swapped(false)),
                _ => false,
            })
            .collect();
        let value_of = |op: &Operation<KvInput, KvOutput>| match &op.input {
            KvInput::Put { value, .. } => value.clone(),
            KvInput::Cas { new, .. } => new.clone(),
            _ => unreachable!("filtered to writes"),
        };
        let acked: Vec<_> = puts.iter().filter(|op| op.return_time.is_some()).collect();
        match final_value {
            None if !acked.is_empty() => problems.push(format!(
                "key {key} is missing after the restart although {} puts to it were acknowledged",
                acked.len()
            )),
            None => {}
            Some(value) => match puts.iter().find(|op| value_of(op) == *value) {
                None => problems.push(format!("key {key} reads {value:?}, which no put wrote")),
                Some(writer) => {
                    if let Some(writer_return) = writer.return_time {
                        if let Some(later) = acked.iter().find(|op| op.call_time > writer_return) {
                            problems.push(format!(
                                "key {key} reads {value:?}, but the acknowledged put of {:?} began after it",
                                value_of(later)
                            ));
                        }
                    }
                }
            },
        }
    }
    problems
}

fn run_scenario(options: ScenarioOptions) {
    let _serial = serialize_cluster_tests();
    let seed = test_seed();
    eprintln!(
        "{}: seed {seed} (rerun with SHOAL_TEST_SEED={seed})",
        options.name
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let test_started = Instant::now();
    let cluster: SharedCluster = Arc::new(Mutex::new(ProcessCluster::start(
        options.n_members,
        options.snapshot_interval_entries,
    )));
    let keys: Vec<String> = (0..options.n_keys).map(|k| format!("k{k}")).collect();
    runtime.block_on(async {
        let first_leader = wait_until_serving(&cluster).await;
        eprintln!(
            "{}: {} members serving, leader {} after {:?}",
            options.name,
            options.n_members,
            first_leader.id,
            test_started.elapsed()
        );

        // Safety phase: clients under faults.
        let endpoints = lock_cluster(&cluster).endpoints();
        let history: Arc<Mutex<History>> = Arc::new(Mutex::new(Vec::new()));
        let stop_clients = Arc::new(AtomicBool::new(false));
        let stop_nemesis = Arc::new(Notify::new());
        let start = Instant::now();
        let clients: Vec<_> = (1..=options.n_clients)
            .map(|client_idx| {
                let args = (
                    client_idx,
                    endpoints.clone(),
                    keys.clone(),
                    seed,
                    start,
                    stop_clients.clone(),
                    history.clone(),
                );
                match options.clients {
                    ClientKind::RaftRaw => {
                        tokio::spawn(run_client(args.0, args.1, args.2, args.3, args.4, args.5, args.6))
                    }
                    ClientKind::Meta => tokio::spawn(run_meta_client(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6,
                    )),
                }
            })
            .collect();
        let nemesis = tokio::spawn(run_nemesis(
            cluster.clone(),
            seed,
            stop_nemesis.clone(),
            options.nemesis,
        ));
        let load_duration = load_duration();
        tokio::time::sleep(load_duration).await;
        stop_clients.store(true, Ordering::Relaxed);
        let mut stats = ClientStats::default();
        for client in clients {
            stats.merge(client.await.expect("a client panicked"));
        }
        stop_nemesis.notify_one();
        let nemesis_stats = match nemesis.await.expect("the nemesis panicked") {
            Ok(stats) => stats,
            Err(exit) => panic!("seed {seed}: {exit}"),
        };

        // Every member must come back and serve.
        wait_until_serving(&cluster).await;
        let mut history = std::mem::take(&mut *lock_history(&history));
        let check_load = check_history(
            &lock_cluster(&cluster),
            "the history under faults",
            seed,
            &history,
        );

        // Durability: kill every member at once, restart them all, read every key.
        {
            let mut cluster = lock_cluster(&cluster);
            for idx in 0..options.n_members {
                cluster.kill(idx);
            }
            for idx in 0..options.n_members {
                cluster.spawn(idx);
            }
        }
        wait_until_serving(&cluster).await;
        let final_client = RaftClient::with_options(
            endpoints.clone(),
            GROUP_ID,
            client_options(REQUEST_TIMEOUT, REQUEST_TIMEOUT),
        )
        .expect("client");
        let mut finals = BTreeMap::new();
        let mut final_stats = ClientStats::default();
        for key in &keys {
            let call_time = micros_since(start);
            let value = read_key(&final_client, key, WAIT_MAX, &mut final_stats)
                .await
                .unwrap_or_else(|| {
                    panic!("seed {seed}: key {key} unreadable for {WAIT_MAX:?} after the restart")
                });
            history.push(Operation::returned(
                ClientId(0),
                KvInput::get(key),
                call_time,
                KvOutput::Value(value.clone()),
                micros_since(start),
            ));
            finals.insert(key.clone(), value);
        }
        let problems = final_values_problems(&history, &finals);
        if !problems.is_empty() {
            let cluster = lock_cluster(&cluster);
            let path = cluster.save("history.txt", &history_text(&history));
            panic!(
                "seed {seed}: after a full restart:\n  {}\n(history in {})",
                problems.join("\n  "),
                path.display()
            );
        }
        let check_all = check_history(
            &lock_cluster(&cluster),
            "the history with the reads after the full restart",
            seed,
            &history,
        );

        let distinct_values: BTreeSet<&Option<String>> = finals.values().collect();
        eprintln!(
            "{}: seed {seed}: {} ops in {:?} ({} puts acked, {} unknown, {} refused; {} gets, {} failed), \
             {} kills ({} of the leader), {} pauses ({} of the leader), at most {} down at once, \
             {} whole-cluster crashes; \
             put errors {:?}, get errors {:?}; checks {:?} + {:?} ({} unknown puts seen by a get); \
             {} distinct final values; total {:?}",
            options.name,
            history.len(),
            load_duration,
            stats.n_puts_acked,
            stats.n_puts_unknown,
            stats.n_puts_not_applied,
            stats.n_gets_ok,
            stats.n_gets_failed,
            nemesis_stats.n_kills,
            nemesis_stats.n_leader_kills,
            nemesis_stats.n_pauses,
            nemesis_stats.n_leader_pauses,
            nemesis_stats.n_down_most,
            nemesis_stats.n_crashes_all,
            stats.put_errors,
            stats.get_errors,
            check_load.elapsed,
            check_all.elapsed,
            check_all.n_unknown_kept,
            distinct_values.len(),
            test_started.elapsed(),
        );
        assert!(
            stats.n_puts_acked > 0 && stats.n_gets_ok > 0,
            "seed {seed}: the clients made no progress under faults: {stats:?}"
        );
        assert!(
            nemesis_stats.n_leader_kills > 0,
            "seed {seed}: the nemesis never killed the leader: {nemesis_stats:?}"
        );
    });
}

/// A fault every 1–2 s, at most one member down, then everyone crashed at the fifth fault.
fn one_member_down() -> NemesisOptions {
    NemesisOptions {
        n_down_max: 1,
        fault_interval_ms: (1_000, 2_000),
        kill_downtime_ms: (200, 1_000),
        pause_ms: (700, 1_300),
        crash_all_at_fault_idx: Some(4),
    }
}

/// As [`one_member_down`], with up to two members down at once.
fn two_members_down() -> NemesisOptions {
    NemesisOptions {
        n_down_max: 2,
        fault_interval_ms: (1_000, 2_000),
        // Often longer than the interval, so two members are down together.
        kill_downtime_ms: (300, 3_000),
        pause_ms: (700, 1_500),
        crash_all_at_fault_idx: Some(4),
    }
}

#[test]
fn process_cluster_3_nodes_kill_leader_under_load_is_linearizable() {
    // Goal: a 3-process cluster whose leader is SIGKILLed (or frozen) every ~1.5 s under six
    // concurrent clients stays linearizable and loses no acknowledged write across restarts.
    run_scenario(ScenarioOptions {
        name: "3 nodes",
        n_members: 3,
        n_clients: 6,
        n_keys: 4,
        // Small, so snapshots, log compaction and InstallSnapshot to restarted members happen.
        snapshot_interval_entries: 500,
        nemesis: one_member_down(),
        clients: ClientKind::RaftRaw,
    });
}

#[test]
fn process_cluster_5_nodes_random_kills_is_linearizable() {
    // Goal: a 5-process cluster with up to two members killed or frozen at once stays
    // linearizable and loses no acknowledged write across restarts.
    run_scenario(ScenarioOptions {
        name: "5 nodes",
        n_members: 5,
        n_clients: 6,
        n_keys: 3,
        snapshot_interval_entries: 300,
        nemesis: two_members_down(),
        clients: ClientKind::RaftRaw,
    });
}

#[test]
fn process_kv_3_nodes_put_get_cas_under_kills_is_linearizable() {
    // Goal: the coordination store, through its own client (exactly-once retries), stays
    // linearizable for put/get/CAS on a 3-process cluster whose leader is SIGKILLed or frozen
    // every ~1.5 s, and keeps every acknowledged write across a full restart.
    run_scenario(ScenarioOptions {
        name: "kv 3 nodes",
        n_members: 3,
        n_clients: 6,
        n_keys: 3,
        snapshot_interval_entries: 400,
        nemesis: one_member_down(),
        clients: ClientKind::Meta,
    });
}

#[test]
fn process_kv_5_nodes_put_get_cas_under_kills_is_linearizable() {
    // Goal: as above on 5 processes with up to two members down at once.
    run_scenario(ScenarioOptions {
        name: "kv 5 nodes",
        n_members: 5,
        n_clients: 6,
        n_keys: 3,
        snapshot_interval_entries: 300,
        nemesis: two_members_down(),
        clients: ClientKind::Meta,
    });
}

// ----- the command line -----

fn shoal(args: &[&str]) -> Output {
    output_within(Command::new(shoal_binary()).args(args), COMMAND_TIME_MAX)
}

/// How long a command that should exit by itself may run before the test fails (instead of
/// hanging on, say, a server that started when it should have refused to).
const COMMAND_TIME_MAX: Duration = Duration::from_secs(60);

/// Runs `command` to its end like `Command::output`, but kills it and fails the test if it
/// runs longer than `limit`.
fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for shoal") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status: status.unwrap_or_else(|| child.wait().expect("reap shoal")),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "still running after {limit:?}, killed: {}",
        describe(&output)
    );
    output
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `shoal … cluster status -o json` until it reports an elected leader; the JSON.
fn status_json_with_leader(args: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let output = shoal(args);
        if output.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "`shoal {}` printed no JSON ({e}): {}",
                    args.join(" "),
                    describe(&output)
                )
            });
            if json["leader"].is_u64() {
                return json;
            }
        }
        assert!(
            Instant::now() < deadline,
            "`shoal {}` reported no leader within {WAIT_MAX:?}: {}",
            args.join(" "),
            describe(&output)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn process_cluster_bad_input_errors() {
    // Goal: the binary's command line fails with the documented exit codes (1 with a one-line
    // reason, 2 for usage), shows examples in its help, and reports a live cluster as JSON.
    let _serial = serialize_cluster_tests();
    let test_started = Instant::now();
    let scratch = tempfile::tempdir().expect("temp dir");
    let data_dir = scratch.path().join("bad-id");
    let data_dir_text = data_dir.to_str().expect("UTF-8 temp path");
    let addresses = free_addresses(4);
    let peers = format!("1={},2={},3={}", addresses[0], addresses[1], addresses[2]);
    let closed = &addresses[3];

    // An id not among --peers: exit 1, one line naming the problem.
    let output = shoal(&[
        "server",
        "--id",
        "4",
        "--data-dir",
        data_dir_text,
        "--listen",
        &addresses[0],
        "--peers",
        &peers,
    ]);
    assert_fails_with(&output, &["--id 4", "--peers"]);

    // An unknown flag: a usage error, exit 2.
    let output = shoal(&["server", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        stderr_text(&output).contains("--no-such-flag"),
        "{}",
        describe(&output)
    );

    // A cluster that is not there: exit 1 with a reason, within about the timeout.
    let started = Instant::now();
    let output = shoal(&["cluster", "status", "--endpoints", closed, "--timeout", "1s"]);
    assert_fails_with(&output, &[closed.as_str()]);
    assert!(
        stderr_text(&output).starts_with("error: "),
        "{}",
        describe(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // Help: exit 0 with examples.
    for args in [
        &["--help"][..],
        &["cluster", "status", "--help"][..],
        &["server", "--help"][..],
    ] {
        let output = shoal(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "shoal {}: {}",
            args.join(" "),
            describe(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("Example"),
            "shoal {}: {}",
            args.join(" "),
            describe(&output)
        );
    }

    // A live cluster, its status asked with the global flags after and before the subcommand.
    let cluster = ProcessCluster::start(3, 100_000);
    let endpoints = cluster.endpoints().join(",");
    let after = status_json_with_leader(&[
        "cluster",
        "status",
        "--endpoints",
        &endpoints,
        "-o",
        "json",
        "--timeout",
        "1s",
    ]);
    let before = status_json_with_leader(&[
        "--endpoints",
        &endpoints,
        "-o",
        "json",
        "--timeout",
        "1s",
        "cluster",
        "status",
    ]);
    for json in [&after, &before] {
        let members = json["members"]
            .as_array()
            .unwrap_or_else(|| panic!("no members array: {json}"));
        assert_eq!(members.len(), 3, "{json}");
        let ids: BTreeSet<u64> = members.iter().filter_map(|m| m["id"].as_u64()).collect();
        assert_eq!(ids, BTreeSet::from([1, 2, 3]), "{json}");
        let leader = json["leader"].as_u64().expect("leader checked above");
        assert!(ids.contains(&leader), "{json}");
        assert_eq!(json["answered_by"]["role"], "leader", "{json}");
    }
    // Text output names the leader too.
    let output = shoal(&["cluster", "status", "--endpoints", &endpoints, "--timeout", "2s"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("leader: node "),
        "{}",
        describe(&output)
    );
    drop(cluster);
    eprintln!(
        "process_cluster_bad_input_errors: ok in {:?}",
        test_started.elapsed()
    );
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves no server behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A single-member `shoal server` on `addr` with its data in `dir`, output discarded.
fn spawn_single_server(dir: &str, addr: &str) -> KillOnDrop {
    let peers = format!("1={addr}");
    KillOnDrop(
        Command::new(shoal_binary())
            .args([
                "server",
                "--id",
                "1",
                "--data-dir",
                dir,
                "--listen",
                addr,
                "--peers",
                &peers,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server"),
    )
}

/// Runs `shoal args` until it succeeds (the cluster may still be electing), at most
/// `WAIT_MAX`; returns the successful output.
fn shoal_until_success(args: &[&str]) -> Output {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let output = shoal(args);
        if output.status.success() {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "shoal {} never succeeded: {}",
            args.join(" "),
            describe(&output)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shoal_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(shoal_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("shoal output")
}

/// Exit code 1 with one line on stderr that contains every one of `needles`.
fn assert_fails_with(output: &Output, needles: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "{}", describe(output));
    let stderr = stderr_text(output);
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {}",
        describe(output)
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing: {}",
            describe(output)
        );
    }
}

#[test]
fn process_kv_cli_contract_and_bad_input() {
    // Goal: the `kv`/`lease` commands keep the contract (JSON shape, text output,
    // exit 0/1/3, global flags anywhere, non-UTF-8 bytes kept), and every bad input gets a
    // clear one-line error and changes nothing.
    let _serial = serialize_cluster_tests();
    let cluster = ProcessCluster::start(3, 100_000);
    let endpoints = cluster.endpoints().join(",");
    let e = endpoints.as_str();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--endpoints", e, "--timeout", "5s"]);
        shoal(&all)
    };
    shoal_until_success(&["kv", "put", "ready", "1", "--endpoints", e, "--timeout", "5s"]);

    let output = run(&["kv", "put", "greeting", "hello world"]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = run(&["kv", "get", "greeting"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello world\n",
        "text prints just the value"
    );
    for args in [
        &["kv", "get", "greeting", "--endpoints", e, "-o", "json"][..],
        &["--endpoints", e, "-o", "json", "kv", "get", "greeting"][..],
    ] {
        let output = shoal(args);
        assert!(output.status.success(), "{}", describe(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert!(json["revision"].as_i64().unwrap() >= 2, "{json}");
        let kv = &json["kvs"][0];
        assert_eq!(
            (kv["key"].as_str(), kv["value"].as_str()),
            (Some("greeting"), Some("hello world"))
        );
        for field in ["create_revision", "mod_revision", "version", "lease"] {
            assert!(kv[field].is_i64(), "{field} missing: {json}");
        }
    }
    let output = run(&["kv", "get", "absent", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["kvs"], serde_json::json!([]), "{json}");

    // Bytes that are not UTF-8 are escaped and kept exactly.
    let output = shoal_with_stdin(&["kv", "put", "binary", "--endpoints", e], b"a\xffb");
    assert!(output.status.success(), "{}", describe(&output));
    let output = run(&["kv", "get", "binary", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["kvs"][0]["value"], "a\\xffb");
    assert_eq!(json["kvs"][0]["value_base64"], "Yf9i");

    // cas: 0 swapped, 3 compare failed (absent key too), nothing changed on 3.
    assert_eq!(
        run(&["kv", "cas", "greeting", "hello world", "hi"]).status.code(),
        Some(0)
    );
    assert_eq!(
        run(&["kv", "cas", "greeting", "hello world", "nope"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(run(&["kv", "cas", "absent", "", "x"]).status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&run(&["kv", "get", "greeting"]).stdout),
        "hi\n"
    );
    assert_eq!(
        run(&[
            "kv",
            "txn",
            "--if",
            "value(greeting) = nope",
            "--then",
            "put greeting bad"
        ])
        .status
        .code(),
        Some(3)
    );

    // A watch from revision 1 replays history in order.
    let output = run(&[
        "kv", "watch", "greeting", "--rev", "1", "--count", "2", "-o", "json",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["kv"]["value"], "hello world");
    assert_eq!(events[1]["kv"]["value"], "hi");

    // Bad input: a clear error, exit 1, and nothing changed.
    let long_key = "k".repeat(5000);
    assert_fails_with(&run(&["kv", "put", &long_key, "v"]), &["key", "limit"]);
    let big = vec![b'v'; 1024 * 1024 + 1];
    assert_fails_with(
        &shoal_with_stdin(&["kv", "put", "big", "--endpoints", e], &big),
        &["value", "limit"],
    );
    assert_fails_with(
        &run(&["kv", "put", "x", "y", "--lease", "424242"]),
        &["lease 424242"],
    );
    assert_fails_with(&run(&["kv", "get", "greeting", "--rev", "999999"]), &["future"]);
    assert_fails_with(&run(&["lease", "grant", "1"]), &["TTL"]);
    assert_fails_with(&run(&["lease", "revoke", "424242"]), &["424242"]);
    assert_fails_with(
        &run(&["kv", "txn", "--if", "size(k) > 1", "--then", "get k"]),
        &["size"],
    );
    let output = run(&["kv", "get", "x", "--rev", "1"]);
    assert!(output.status.success(), "{}", describe(&output));
    let compact = run(&["kv", "compact", "3"]);
    assert!(compact.status.success(), "{}", describe(&compact));
    assert_fails_with(&run(&["kv", "get", "greeting", "--rev", "1"]), &["compacted"]);
    assert_eq!(
        String::from_utf8_lossy(&run(&["kv", "get", "greeting"]).stdout),
        "hi\n"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["kv", "get", "big", "-o", "json"]).stdout).expect("JSON");
    assert_eq!(json["kvs"], serde_json::json!([]), "the refused put left nothing");
    // Backup and restore into a new one-member cluster.
    let scratch = tempfile::tempdir().expect("temp dir");
    let backup = scratch.path().join("backup.snap");
    let backup_text = backup.to_str().expect("UTF-8 path");
    let output = run(&["cluster", "snapshot", "save", backup_text]);
    assert!(output.status.success(), "{}", describe(&output));
    let new_addr = free_addresses(1).remove(0);
    let new_peers = format!("1={new_addr}");
    let new_dir = scratch.path().join("restored");
    let new_dir_text = new_dir.to_str().expect("UTF-8 path");
    let restore = [
        "cluster",
        "snapshot",
        "restore",
        backup_text,
        "--id",
        "1",
        "--data-dir",
        new_dir_text,
        "--peers",
        &new_peers,
    ];
    let output = shoal(&restore);
    assert!(output.status.success(), "{}", describe(&output));
    assert_fails_with(&shoal(&restore), &["already holds data"]);
    let restored = spawn_single_server(new_dir_text, &new_addr);
    let output = shoal_until_success(&[
        "kv",
        "get",
        "greeting",
        "--endpoints",
        &new_addr,
        "--timeout",
        "2s",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hi\n",
        "the restored cluster holds the data"
    );
    drop(restored);

    // A cluster that is not there.
    let closed = free_addresses(1).remove(0);
    let started = Instant::now();
    assert_fails_with(
        &shoal(&["kv", "get", "k", "--endpoints", &closed, "--timeout", "1s"]),
        &[closed.as_str()],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Help teaches.
    for args in [
        &["kv", "put", "--help"][..],
        &["kv", "txn", "--help"][..],
        &["lease", "grant", "--help"][..],
    ] {
        let output = shoal(args);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Example"),
            "{}",
            describe(&output)
        );
    }
    drop(cluster);
}

#[test]
fn process_server_refuses_a_foreign_data_dir_and_a_corrupt_wal() {
    // Goal: a data dir from another cluster and a WAL with a flipped byte in the middle are
    // refused at start with a clear error (exit 1), never served.
    let _serial = serialize_cluster_tests();
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path().join("member");
    let dir_text = dir.to_str().expect("UTF-8 path");
    let addr = free_addresses(1).remove(0);
    let peers = format!("1={addr}");
    let server = spawn_single_server(dir_text, &addr);
    let value = "v".repeat(2000);
    for i in 0..50 {
        shoal_until_success(&[
            "kv",
            "put",
            &format!("k{i}"),
            &value,
            "--endpoints",
            &addr,
            "--timeout",
            "2s",
        ]);
    }
    drop(server); // SIGKILL

    // Another cluster's --peers on this data dir.
    let other = free_addresses(2);
    let other_peers = format!("1={},2={}", other[0], other[1]);
    // Member 1 on this data dir, run to its exit.
    let start_member = |listen: &str, peers: &str| {
        shoal(&[
            "server",
            "--id",
            "1",
            "--data-dir",
            dir_text,
            "--listen",
            listen,
            "--peers",
            peers,
        ])
    };
    let output = start_member(&other[0], &other_peers);
    assert_fails_with(&output, &["another cluster", &peers]);

    // A byte flipped in the middle of the WAL.
    let wal_dir = dir.join("raft-group-1");
    let segment = std::fs::read_dir(&wal_dir)
        .expect("group dir")
        .chain(std::fs::read_dir(wal_dir.join("wal")).into_iter().flatten())
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap_or_else(|| panic!("no WAL segment under {}", wal_dir.display()));
    let mut bytes = std::fs::read(&segment).expect("read segment");
    // The segment is zero-filled past its records (preallocation): flip inside the records.
    let records_len = bytes
        .iter()
        .rposition(|&b| b != 0)
        .expect("records in the segment")
        + 1;
    let middle = records_len / 3;
    bytes[middle] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("write segment");
    let output = start_member(&addr, &peers);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = stderr_text(&output);
    assert!(stderr.to_lowercase().contains("corrupt"), "{}", describe(&output));
}

#[test]
fn process_server_stops_on_sigint_while_a_watch_and_a_pipeline_are_open() {
    // Goal: Ctrl-C stops a server promptly and cleanly (exit 0) although a client holds
    // long-lived streams on it (a watch, and the pipeline its client opened): the server
    // ends them rather than waiting for the client to leave.
    use std::io::BufRead;
    let _serial = serialize_cluster_tests();
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path().join("member");
    let addr = free_addresses(1).remove(0);
    let mut server = spawn_single_server(dir.to_str().expect("UTF-8 path"), &addr);
    shoal_until_success(&["kv", "put", "k", "0", "--endpoints", &addr, "--timeout", "2s"]);
    let mut watch = KillOnDrop(
        Command::new(shoal_binary())
            .args(["kv", "watch", "k", "--endpoints", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the watch"),
    );
    // The watch is open once it reports a put made after it started.
    let mut lines = std::io::BufReader::new(watch.0.stdout.take().expect("stdout")).lines();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains("PUT") && seen_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT_MAX;
    let mut i = 1;
    loop {
        shoal_until_success(&["kv", "put", "k", &i.to_string(), "--endpoints", &addr]);
        if seen_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the watch never reported a put");
        i += 1;
    }

    signal(server.0.id(), "-INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait for the server") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server still runs 10 s after SIGINT with a watch open"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the server exits cleanly on SIGINT: {status}");
}
