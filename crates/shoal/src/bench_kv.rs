//! `shoal bench kv`: a load generator for the coordination store in the spirit of etcd's
//! `benchmark` tool; it can drive etcd too, so both are measured by the same code.
//!
//! Layout: the command line ([`BenchKvArgs`]) and its validation; [`Conn`], one connection
//! to either store with the few operations the workloads need; the request workloads (`put`,
//! `get`, `txn-cas`: closed loops of `--clients` requesters sharing `--conns` connections);
//! the `watch` workload (watchers, one writer at a fixed rate); [`LatencySummary`] and the
//! text and JSON reports.
//!
//! Routing is the same on both targets, so neither pays a hop the other does not: writes
//! and linearizable reads go to the leader (Shoal's client finds it itself; for etcd every
//! connection is opened to the member that `Maintenance.Status` names as leader), while
//! serializable reads and watches are spread over the members, connection `i` on endpoint
//! `i mod n`.
//!
//! Each target is driven through its own client API: Shoal's `MetaClient` sends a
//! connection's requests over one pipelined stream (the `Pipeline` RPC), etcd's client makes
//! one unary gRPC call per request (etcd's v3 API has no pipelined form).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use shoal_meta::client::{ClientOptions, MetaClient};
use shoal_meta::proto;
use tokio::time::Instant;

use crate::cli::{GlobalArgs, OutputFormat};

/// Concurrent requesters (or watchers) at most: each is a tokio task holding its own
/// latency samples, and every one of them is a request in flight on the servers.
const CLIENTS_MAX: usize = 10_000;
/// Connections at most: each is a TCP connection and an HTTP/2 session on a member and, on
/// Shoal, an exactly-once client session in the replicated state (`SESSIONS_MAX` = 10,000).
const CONNS_MAX: usize = 1_000;
/// Requests (or watch puts) per run at most: 8 bytes of latency sample each, 80 MB at most.
const TOTAL_MAX: u64 = 10_000_000;
/// Keys in the key space at most: `get` and `txn-cas` write every key once before timing.
const KEY_SPACE_MAX: u64 = 10_000_000;
/// The writer's rate in the `watch` workload when `--rate-limit` is not given, puts/s.
const WATCH_PUT_RATE_DEFAULT: u64 = 100;
/// Width of the longest histogram bar, characters.
const HISTOGRAM_BAR_WIDTH_MAX: usize = 40;
/// Upper bounds of the histogram's buckets, milliseconds (a 1-2-5 series); slower
/// requests fall in a last, open bucket.
const HISTOGRAM_BOUNDS_MS: [f64; 17] = [
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
    20_000.0,
];
/// Mixed into `--seed` for the value's bytes, so the value does not repeat the key order.
const VALUE_SEED_SALT: u64 = 0x5EED_0000_7A1E_0000;
/// Error messages longer than this are cut in the error table (etcd's are short fixed
/// strings; a longer one would only repeat details of one request).
const ERROR_KIND_CHARS_MAX: usize = 80;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    shoal bench kv put --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \\\n      \
    --clients 64 --conns 8 --total 100000 --val-size 256 --key-space 100000\n  \
    shoal bench kv get --serializable --clients 64 --conns 8 --total 100000 --key-space 1000\n  \
    shoal bench kv txn-cas --clients 16 --conns 4 --total 20000 --key-space 1000 -o json\n  \
    shoal bench kv watch --clients 100 --conns 4 --total 2000 --rate-limit 200 --key-space 10\n  \
    shoal bench kv put --target etcd --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 \\\n      \
    --clients 64 --conns 8 --total 100000 --val-size 256\n\n\
    Writes and linearizable reads go to the leader on both targets; serializable reads and\n\
    watches are spread over the members. Latency is measured from before the request is\n\
    sent to after its answer is decoded, in the same process for both targets.")]
pub struct BenchKvArgs {
    /// What to measure. put: one put per request. get: one read of a key written before
    /// timing. txn-cas: read a key, then compare-and-swap it (a failed compare is a completed
    /// request, counted apart). watch: --clients watchers, one writer putting at --rate-limit;
    /// measures put ack → event received, and events/s.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Which store to drive: Shoal's coordination store, or etcd (v3 API).
    #[arg(long, value_enum, default_value_t = Target::Shoal)]
    pub target: Target,
    /// Concurrent requesters (for watch: watchers), each a closed loop.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Connections the clients share; client i uses connection i mod conns.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Requests to complete in all (for watch: puts by the writer).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes (keys are the key's index, zero-padded to this size).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys; each request picks one at random.
    #[arg(long, default_value_t = 1)]
    pub key_space: u64,
    /// Reads are served locally by any member instead of linearizably by the leader.
    #[arg(long)]
    pub serializable: bool,
    /// Requests per second at most over all clients (0: as fast as they go). For watch: the
    /// writer's put rate (default 100).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u64,
    /// Seed of the key and value generator: the same seed gives the same keys in the same
    /// order on both targets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Get,
    TxnCas,
    Watch,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::TxnCas => "txn-cas",
            Workload::Watch => "watch",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Shoal,
    Etcd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Shoal => "shoal",
            Target::Etcd => "etcd",
        }
    }
}

impl BenchKvArgs {
    /// Checks every limit once, naming the bad value.
    fn validate(&self, global: &GlobalArgs) -> anyhow::Result<()> {
        ensure!(!global.endpoints.is_empty(), "--endpoints is empty");
        ensure!(
            (1..=CLIENTS_MAX).contains(&self.clients),
            "--clients {} is out of range: 1 to {CLIENTS_MAX}",
            self.clients
        );
        ensure!(
            (1..=CONNS_MAX).contains(&self.conns),
            "--conns {} is out of range: 1 to {CONNS_MAX}",
            self.conns
        );
        ensure!(
            (1..=TOTAL_MAX).contains(&self.total),
            "--total {} is out of range: 1 to {TOTAL_MAX}",
            self.total
        );
        ensure!(
            (1..=KEY_SPACE_MAX).contains(&self.key_space),
            "--key-space {} is out of range: 1 to {KEY_SPACE_MAX}",
            self.key_space
        );
        let digits = (self.key_space - 1).to_string().len();
        ensure!(
            self.key_size >= digits && self.key_size <= shoal_meta::limits::KEY_BYTES_MAX,
            "--key-size {} is out of range: keys are zero-padded indexes, so --key-space {} needs \
             at least {digits} bytes, and the store's limit is {} bytes",
            self.key_size,
            self.key_space,
            shoal_meta::limits::KEY_BYTES_MAX
        );
        ensure!(
            self.val_size <= shoal_meta::limits::VALUE_BYTES_MAX,
            "--val-size {} is over the store's limit of {} bytes",
            self.val_size,
            shoal_meta::limits::VALUE_BYTES_MAX
        );
        if self.workload == Workload::Watch {
            ensure!(
                !self.serializable,
                "--serializable applies to reads; the watch workload does not read"
            );
        }
        Ok(())
    }

    /// The rate limit in force, requests (or puts) per second; None: unlimited.
    fn rate_per_s(&self) -> Option<u64> {
        match (self.rate_limit, self.workload) {
            (0, Workload::Watch) => Some(WATCH_PUT_RATE_DEFAULT),
            (0, _) => None,
            (rate, _) => Some(rate),
        }
    }
}

pub fn run(global: &GlobalArgs, args: BenchKvArgs) -> anyhow::Result<()> {
    args.validate(global)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let report = runtime.block_on(async {
        match args.workload {
            Workload::Put | Workload::Get | Workload::TxnCas => run_requests(global, &args).await,
            Workload::Watch => run_watch(global, &args).await,
        }
    })?;
    match global.output {
        OutputFormat::Json => println!("{}", report.to_json(global, &args)),
        OutputFormat::Text => report.print_text(global, &args),
    }
    Ok(())
}

// ----- the generator -----

/// Seeded (runs repeat exactly): the core's SplitMix64. `range(0, n)` is uniform in [0, n)
/// with a modulo bias below 2^-40 for any key space allowed here.
type Rng = shoal_raft::SplitMix64;

/// Key number `idx`: its decimal digits, zero-padded to `key_size` bytes.
fn key_of(idx: u64, key_size: usize) -> Vec<u8> {
    format!("{idx:0key_size$}").into_bytes()
}

/// A printable value of `val_size` bytes drawn from `rng`.
fn value_of(rng: &mut Rng, val_size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..val_size)
        .map(|_| ALPHABET[rng.range(0, ALPHABET.len() as u64) as usize])
        .collect()
}

/// `base` with `stamp`'s digits written over its tail, so successive CAS values differ.
fn stamped(base: &[u8], stamp: u64) -> Vec<u8> {
    let mut value = base.to_vec();
    let digits = stamp.to_string();
    let n = digits.len().min(value.len());
    let at = value.len() - n;
    value[at..].copy_from_slice(&digits.as_bytes()[digits.len() - n..]);
    value
}

// ----- connections -----

/// Where a connection's requests go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// The leader (writes, linearizable reads).
    Leader,
    /// Connection `i` on endpoint `i mod n` (serializable reads, watches).
    Spread,
}

/// One connection to the store under test; cheap to clone (clones share the connection).
#[derive(Clone)]
enum Conn {
    Shoal(MetaClient),
    /// Boxed: etcd's client holds eight service clients.
    Etcd(Box<etcd_client::Client>),
}

/// A request's failure, as the kind it is counted under.
type ErrorKind = String;

fn shoal_error_kind(e: &shoal_meta::client::Error) -> ErrorKind {
    use shoal_meta::client::Error;
    match e {
        Error::Server { code, .. } => code
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_lowercase(),
        Error::Unavailable { .. } => "unavailable".to_string(),
        Error::UnknownOutcome { .. } => "unknown_outcome".to_string(),
        Error::InvalidEndpoints(_) => "invalid_endpoints".to_string(),
    }
}

fn etcd_error_kind(e: &etcd_client::Error) -> ErrorKind {
    let kind = match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    };
    kind.chars().take(ERROR_KIND_CHARS_MAX).collect()
}

/// Runs `request` with the per-request deadline `--timeout`.
async fn within<T>(
    timeout: Duration,
    request: impl std::future::Future<Output = Result<T, ErrorKind>>,
) -> Result<T, ErrorKind> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()))
}

impl Conn {
    /// One read with the store's whole error message on failure: run once per connection
    /// before timing, so that connection set-up and leader discovery are not timed.
    async fn probe(&mut self, timeout: Duration, serializable: bool) -> anyhow::Result<()> {
        const PROBE_KEY: &[u8] = b"bench-kv-probe";
        let probe = async {
            match self {
                Conn::Shoal(client) => client
                    .range(proto::RangeRequest {
                        key: PROBE_KEY.to_vec(),
                        serializable,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from),
                Conn::Etcd(client) => {
                    let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                    client
                        .get(PROBE_KEY, options)
                        .await
                        .map(drop)
                        .map_err(anyhow::Error::from)
                }
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
    }

    /// Puts `key`; returns the revision of the change.
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<i64, ErrorKind> {
        match self {
            Conn::Shoal(client) => client
                .put(key, value)
                .await
                .map(|r| r.header.map_or(0, |h| h.revision))
                .map_err(|e| shoal_error_kind(&e)),
            Conn::Etcd(client) => client
                .put(key, value, None)
                .await
                .map(|r| r.header().map_or(0, |h| h.revision()))
                .map_err(|e| etcd_error_kind(&e)),
        }
    }

    /// The value of `key`, if it exists.
    async fn get(&mut self, key: Vec<u8>, serializable: bool) -> Result<Option<Vec<u8>>, ErrorKind> {
        match self {
            Conn::Shoal(client) => client
                .range(proto::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|r| r.kvs.into_iter().next().map(|kv| kv.value))
                .map_err(|e| shoal_error_kind(&e)),
            Conn::Etcd(client) => {
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                client
                    .get(key, options)
                    .await
                    .map(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
                    .map_err(|e| etcd_error_kind(&e))
            }
        }
    }

    /// Sets `key` to `new` if it holds `expected`; returns whether it swapped.
    async fn cas(&mut self, key: Vec<u8>, expected: Vec<u8>, new: Vec<u8>) -> Result<bool, ErrorKind> {
        match self {
            Conn::Shoal(client) => client
                .cas(&key, &expected, &new)
                .await
                .map_err(|e| shoal_error_kind(&e)),
            Conn::Etcd(client) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let txn = Txn::new()
                    .when(vec![Compare::value(key.clone(), CompareOp::Equal, expected)])
                    .and_then(vec![TxnOp::put(key, new, None)]);
                client
                    .txn(txn)
                    .await
                    .map(|r| r.succeeded())
                    .map_err(|e| etcd_error_kind(&e))
            }
        }
    }
}

/// The endpoint of the etcd member that the members agree is the leader.
async fn etcd_leader(endpoints: &[String], timeout: Duration) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for endpoint in endpoints {
        let options = etcd_client::ConnectOptions::new().with_timeout(timeout);
        let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))?;
        let status = match tokio::time::timeout(timeout, client.status()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                seen.push(format!("{endpoint}: {e}"));
                continue;
            }
            Err(_) => {
                seen.push(format!("{endpoint}: no answer within {timeout:?}"));
                continue;
            }
        };
        let member_id = status.header().map_or(0, |h| h.member_id());
        if status.leader() != 0 && status.leader() == member_id {
            return Ok(endpoint.clone());
        }
        seen.push(format!(
            "{endpoint}: member {member_id:x}, leader {:x}",
            status.leader()
        ));
    }
    bail!(
        "none of the etcd endpoints is the leader ({}); pass every member in --endpoints",
        seen.join("; ")
    )
}

/// Opens `n_conns` connections with `routing`, and sends one read on each so that
/// connection set-up (and Shoal's leader discovery) is not timed.
async fn connect(
    global: &GlobalArgs,
    target: Target,
    routing: Routing,
    n_conns: usize,
    serializable: bool,
) -> anyhow::Result<Vec<Conn>> {
    let endpoints = &global.endpoints;
    let etcd_leader = match (target, routing) {
        (Target::Etcd, Routing::Leader) => Some(etcd_leader(endpoints, global.timeout).await?),
        _ => None,
    };
    let mut conns = Vec::with_capacity(n_conns);
    for conn_idx in 0..n_conns {
        let first = conn_idx % endpoints.len();
        let mut conn = match target {
            Target::Shoal => {
                // Rotated so that serializable reads (sent to the first endpoint) spread;
                // writes and linearizable reads find the leader whatever the order.
                let rotated: Vec<String> = endpoints[first..]
                    .iter()
                    .chain(&endpoints[..first])
                    .cloned()
                    .collect();
                let options = ClientOptions {
                    request_timeout: global.timeout,
                    retry_timeout: global.timeout,
                    ..ClientOptions::default()
                };
                Conn::Shoal(MetaClient::with_options(rotated, options).context("creating a Shoal client")?)
            }
            Target::Etcd => {
                let endpoint = match &etcd_leader {
                    Some(leader) => leader.clone(),
                    None => endpoints[first].clone(),
                };
                let options = etcd_client::ConnectOptions::new().with_timeout(global.timeout);
                Conn::Etcd(Box::new(
                    etcd_client::Client::connect([endpoint.as_str()], Some(options))
                        .await
                        .with_context(|| format!("connecting to etcd at {endpoint}"))?,
                ))
            }
        };
        conn.probe(global.timeout, serializable).await.with_context(|| {
            format!(
                "reaching {} at {} (connection {conn_idx})",
                target.name(),
                endpoints.join(",")
            )
        })?;
        conns.push(conn);
    }
    Ok(conns)
}

// ----- request workloads: put, get, txn-cas -----

/// What one requester measured.
#[derive(Default)]
struct ClientStats {
    latencies_ns: Vec<u64>,
    n_compare_failed: u64,
    errors: BTreeMap<ErrorKind, u64>,
}

impl ClientStats {
    fn merge(&mut self, other: ClientStats) {
        self.latencies_ns.extend(other.latencies_ns);
        self.n_compare_failed += other.n_compare_failed;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

/// Writes every key of the key space once (not timed), `clients` at a time.
async fn populate(
    global: &GlobalArgs,
    args: &BenchKvArgs,
    conns: &[Conn],
    value: &[u8],
) -> anyhow::Result<()> {
    let next_key = Arc::new(AtomicU64::new(0));
    let n_workers = (args.clients as u64).min(args.key_space) as usize;
    let mut tasks = Vec::with_capacity(n_workers);
    for worker_idx in 0..n_workers {
        let mut conn = conns[worker_idx % conns.len()].clone();
        let next_key = next_key.clone();
        let value = value.to_vec();
        let (key_space, key_size, timeout) = (args.key_space, args.key_size, global.timeout);
        tasks.push(tokio::spawn(async move {
            loop {
                let idx = next_key.fetch_add(1, Ordering::Relaxed);
                if idx >= key_space {
                    return anyhow::Ok(());
                }
                within(timeout, conn.put(key_of(idx, key_size), value.clone()))
                    .await
                    .map_err(|kind| anyhow::anyhow!("{kind}"))
                    .with_context(|| format!("writing key {idx} before timing"))?;
            }
        }));
    }
    for task in tasks {
        task.await.context("a populating task panicked")??;
    }
    Ok(())
}

async fn run_requests(global: &GlobalArgs, args: &BenchKvArgs) -> anyhow::Result<Report> {
    let routing = if args.serializable {
        Routing::Spread
    } else {
        Routing::Leader
    };
    let conns = connect(global, args.target, routing, args.conns, args.serializable).await?;
    let value = value_of(&mut Rng::new(args.seed ^ VALUE_SEED_SALT), args.val_size);
    if matches!(args.workload, Workload::Get | Workload::TxnCas) {
        populate(global, args, &conns, &value).await?;
    }
    let next_ticket = Arc::new(AtomicU64::new(0));
    let rate_per_s = args.rate_per_s();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for client_idx in 0..args.clients {
        let mut conn = conns[client_idx % conns.len()].clone();
        let next_ticket = next_ticket.clone();
        let value = value.clone();
        let mut rng = Rng::new(
            args.seed
                .wrapping_mul(0x1_0000_0001)
                .wrapping_add(client_idx as u64),
        );
        let (workload, total, key_space, key_size, serializable, timeout) = (
            args.workload,
            args.total,
            args.key_space,
            args.key_size,
            args.serializable,
            global.timeout,
        );
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            loop {
                let ticket = next_ticket.fetch_add(1, Ordering::Relaxed);
                if ticket >= total {
                    return stats;
                }
                if let Some(rate) = rate_per_s {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(ticket as f64 / rate as f64))
                        .await;
                }
                let key = key_of(rng.range(0, key_space), key_size);
                let sent = Instant::now();
                let outcome = match workload {
                    Workload::Put => within(timeout, conn.put(key, value.clone())).await.map(|_| true),
                    Workload::Get => within(timeout, conn.get(key, serializable)).await.map(|_| true),
                    Workload::TxnCas => {
                        within(timeout, async {
                            // A key that is absent (it never is after populating) compares
                            // against the empty value and fails: still a completed request.
                            let current = conn.get(key.clone(), serializable).await?.unwrap_or_default();
                            conn.cas(key, current, stamped(&value, ticket)).await
                        })
                        .await
                    }
                    Workload::Watch => unreachable!("the watch workload has its own loop"),
                };
                match outcome {
                    Ok(swapped) => {
                        stats.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                        if !swapped {
                            stats.n_compare_failed += 1;
                        }
                    }
                    Err(kind) => *stats.errors.entry(kind).or_default() += 1,
                }
            }
        }));
    }
    let mut stats = ClientStats::default();
    for task in tasks {
        stats.merge(task.await.context("a client task panicked")?);
    }
    let elapsed = started.elapsed();
    Ok(Report::Requests(RequestsReport {
        seconds: elapsed.as_secs_f64(),
        n_completed: stats.latencies_ns.len() as u64,
        n_compare_failed: stats.n_compare_failed,
        errors: stats.errors,
        latency: LatencySummary::of(&mut stats.latencies_ns),
        rate_per_s,
    }))
}

// ----- the watch workload -----

/// One timed put of the writer.
struct PutRecord {
    key_idx: u64,
    revision: i64,
    sent: Instant,
    acked: Instant,
}

/// Number of watchers on key `key_idx`: watcher `w` watches key `w mod key_space`.
fn watchers_on(key_idx: u64, n_watchers: u64, key_space: u64) -> u64 {
    if key_idx >= n_watchers {
        0
    } else {
        (n_watchers - 1 - key_idx) / key_space + 1
    }
}

/// An open watch on one key of either store.
enum WatchStream {
    Shoal(shoal_meta::client::Watcher),
    /// etcd's watch handle is kept so that the request side of the stream stays open.
    Etcd {
        _handle: etcd_client::Watcher,
        stream: etcd_client::WatchStream,
    },
}

impl WatchStream {
    async fn open(conn: &mut Conn, key: Vec<u8>) -> Result<WatchStream, ErrorKind> {
        match conn {
            Conn::Shoal(client) => client
                .watch(proto::WatchRequest {
                    key,
                    ..Default::default()
                })
                .await
                .map(WatchStream::Shoal)
                .map_err(|e| shoal_error_kind(&e)),
            Conn::Etcd(client) => client
                .watch(key, None)
                .await
                .map(|(handle, stream)| WatchStream::Etcd {
                    _handle: handle,
                    stream,
                })
                .map_err(|e| etcd_error_kind(&e)),
        }
    }

    /// The mod revisions of the next response's events.
    async fn next(&mut self) -> Result<Vec<i64>, ErrorKind> {
        match self {
            WatchStream::Shoal(watcher) => watcher
                .next()
                .await
                .map(|r| {
                    r.events
                        .iter()
                        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                        .collect()
                })
                .map_err(|e| shoal_error_kind(&e)),
            WatchStream::Etcd { stream, .. } => match stream.message().await {
                Ok(Some(response)) => Ok(response
                    .events()
                    .iter()
                    .map(|e| e.kv().map_or(0, |kv| kv.mod_revision()))
                    .collect()),
                Ok(None) => Err("the watch stream ended".to_string()),
                Err(e) => Err(etcd_error_kind(&e)),
            },
        }
    }
}

/// What one watcher received: (mod revision, when), and the errors that ended it.
#[derive(Default)]
struct WatcherLog {
    events: Vec<(i64, Instant)>,
    error: Option<ErrorKind>,
}

async fn run_watch(global: &GlobalArgs, args: &BenchKvArgs) -> anyhow::Result<Report> {
    let n_watchers = args.clients as u64;
    let mut writer = connect(global, args.target, Routing::Leader, 1, false)
        .await?
        .remove(0);
    let conns = connect(global, args.target, Routing::Spread, args.conns, true).await?;
    let value = value_of(&mut Rng::new(args.seed ^ VALUE_SEED_SALT), args.val_size);

    // Open every watch before the first put; each watcher runs until told to stop.
    let n_received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watcher_tasks = Vec::with_capacity(args.clients);
    for watcher_idx in 0..args.clients {
        let mut conn = conns[watcher_idx % conns.len()].clone();
        let key = key_of(watcher_idx as u64 % args.key_space, args.key_size);
        let mut stream = within(global.timeout, WatchStream::open(&mut conn, key))
            .await
            .map_err(|kind| anyhow::anyhow!("{kind}"))
            .with_context(|| format!("opening watch {watcher_idx}"))?;
        let n_received = n_received.clone();
        let mut stop_rx = stop_rx.clone();
        watcher_tasks.push(tokio::spawn(async move {
            let mut log = WatcherLog::default();
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => return log,
                    next = stream.next() => match next {
                        Ok(revisions) => {
                            let now = Instant::now();
                            n_received.fetch_add(revisions.len() as u64, Ordering::Relaxed);
                            log.events.extend(revisions.into_iter().map(|r| (r, now)));
                        }
                        Err(kind) => {
                            log.error = Some(kind);
                            return log;
                        }
                    },
                }
            }
        }));
    }

    // Warm-up (not timed): one put on every watched key, so that every stream is open and
    // delivering before timing starts (Shoal's client opens its stream on first use).
    let n_watched_keys = n_watchers.min(args.key_space);
    for key_idx in 0..n_watched_keys {
        within(
            global.timeout,
            writer.put(key_of(key_idx, args.key_size), value.clone()),
        )
        .await
        .map_err(|kind| anyhow::anyhow!("{kind}"))
        .with_context(|| format!("warm-up put of key {key_idx}"))?;
    }
    let warm_up_deadline = Instant::now() + global.timeout;
    while n_received.load(Ordering::Relaxed) < n_watchers {
        ensure!(
            Instant::now() < warm_up_deadline,
            "only {} of {n_watchers} watchers saw their warm-up event within {:?}",
            n_received.load(Ordering::Relaxed),
            global.timeout
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let n_received_before = n_received.load(Ordering::Relaxed);

    // Timed: one writer at a fixed rate.
    let rate_per_s = args.rate_per_s().unwrap_or(WATCH_PUT_RATE_DEFAULT);
    let mut rng = Rng::new(args.seed);
    let mut puts = Vec::with_capacity(args.total as usize);
    let mut put_errors: BTreeMap<ErrorKind, u64> = BTreeMap::new();
    let started = Instant::now();
    for ticket in 0..args.total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(ticket as f64 / rate_per_s as f64)).await;
        let key_idx = rng.range(0, args.key_space);
        let sent = Instant::now();
        match within(
            global.timeout,
            writer.put(key_of(key_idx, args.key_size), value.clone()),
        )
        .await
        {
            Ok(revision) => puts.push(PutRecord {
                key_idx,
                revision,
                sent,
                acked: Instant::now(),
            }),
            Err(kind) => *put_errors.entry(kind).or_default() += 1,
        }
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let n_expected: u64 = puts
        .iter()
        .map(|p| watchers_on(p.key_idx, n_watchers, args.key_space))
        .sum();
    let drain_deadline = Instant::now() + global.timeout;
    while n_received.load(Ordering::Relaxed) - n_received_before < n_expected
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut logs = Vec::with_capacity(watcher_tasks.len());
    for task in watcher_tasks {
        logs.push(task.await.context("a watcher task panicked")?);
    }

    // Join events to the puts that caused them, by revision.
    let by_revision: HashMap<i64, &PutRecord> = puts.iter().map(|p| (p.revision, p)).collect();
    let mut after_ack_ns = Vec::new();
    let mut after_send_ns = Vec::new();
    let mut n_before_ack = 0u64;
    let mut last_event: Option<Instant> = None;
    let mut watch_errors: BTreeMap<ErrorKind, u64> = BTreeMap::new();
    for log in &logs {
        for (revision, received) in &log.events {
            let Some(put) = by_revision.get(revision) else {
                continue; // a warm-up event
            };
            if *received < put.acked {
                n_before_ack += 1;
            }
            after_ack_ns.push(received.saturating_duration_since(put.acked).as_nanos() as u64);
            after_send_ns.push(received.saturating_duration_since(put.sent).as_nanos() as u64);
            last_event = Some(last_event.map_or(*received, |l| l.max(*received)));
        }
        if let Some(kind) = &log.error {
            *watch_errors.entry(kind.clone()).or_default() += 1;
        }
    }
    let n_events = after_ack_ns.len() as u64;
    let delivery_seconds = last_event.map_or(write_seconds, |l| (l - started).as_secs_f64());
    let mut put_latencies_ns: Vec<u64> = puts
        .iter()
        .map(|p| (p.acked - p.sent).as_nanos() as u64)
        .collect();
    Ok(Report::Watch(Box::new(WatchReport {
        write_seconds,
        delivery_seconds,
        rate_per_s,
        n_puts: puts.len() as u64,
        put_errors,
        put_latency: LatencySummary::of(&mut put_latencies_ns),
        n_events_expected: n_expected,
        n_events,
        n_before_ack,
        watch_errors,
        after_ack: LatencySummary::of(&mut after_ack_ns),
        after_send: LatencySummary::of(&mut after_send_ns),
    })))
}

// ----- reports -----

/// Latency statistics of a sample, in milliseconds.
struct LatencySummary {
    n_samples: u64,
    min_ms: f64,
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p99_9_ms: f64,
    max_ms: f64,
    /// Count per bucket of [`HISTOGRAM_BOUNDS_MS`], then the open bucket above the last.
    histogram: Vec<u64>,
}

impl LatencySummary {
    fn of(samples_ns: &mut [u64]) -> LatencySummary {
        samples_ns.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        // The nearest-rank quantile: the smallest sample with at least q of the samples at or
        // below it (etcd's report does the same).
        let quantile = |q: f64| -> f64 {
            if samples_ns.is_empty() {
                return 0.0;
            }
            let rank = ((samples_ns.len() as f64) * q).ceil() as usize;
            ms(samples_ns[rank.clamp(1, samples_ns.len()) - 1])
        };
        let mut histogram = vec![0u64; HISTOGRAM_BOUNDS_MS.len() + 1];
        for &ns in samples_ns.iter() {
            let bucket = HISTOGRAM_BOUNDS_MS
                .iter()
                .position(|&bound| ms(ns) <= bound)
                .unwrap_or(HISTOGRAM_BOUNDS_MS.len());
            histogram[bucket] += 1;
        }
        let sum_ns: u128 = samples_ns.iter().map(|&ns| ns as u128).sum();
        LatencySummary {
            n_samples: samples_ns.len() as u64,
            min_ms: samples_ns.first().map_or(0.0, |&ns| ms(ns)),
            mean_ms: if samples_ns.is_empty() {
                0.0
            } else {
                sum_ns as f64 / samples_ns.len() as f64 / 1e6
            },
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p99_9_ms: quantile(0.999),
            max_ms: samples_ns.last().map_or(0.0, |&ns| ms(ns)),
            histogram,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let buckets: Vec<serde_json::Value> = self
            .histogram
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(idx, &count)| match HISTOGRAM_BOUNDS_MS.get(idx) {
                Some(bound) => json!({"le_ms": bound, "count": count}),
                None => json!({"le_ms": null, "count": count}),
            })
            .collect();
        json!({"samples": self.n_samples, "min_ms": self.min_ms, "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "p99_9_ms": self.p99_9_ms, "max_ms": self.max_ms, "histogram": buckets})
    }

    fn print_percentiles(&self, title: &str) {
        println!(
            "{title}: min {:.2}  mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} (ms)",
            self.min_ms, self.mean_ms, self.p50_ms, self.p90_ms, self.p99_ms, self.p99_9_ms, self.max_ms
        );
    }

    /// Text buckets from the first non-empty one to the last, with bars scaled to the
    /// fullest.
    fn print_histogram(&self, title: &str) {
        let Some(first) = self.histogram.iter().position(|&c| c > 0) else {
            return;
        };
        let last = self.histogram.iter().rposition(|&c| c > 0).unwrap_or(first);
        let fullest = self.histogram.iter().copied().max().unwrap_or(1).max(1);
        println!("{title}:");
        for idx in first..=last {
            let count = self.histogram[idx];
            let label = match HISTOGRAM_BOUNDS_MS.get(idx) {
                Some(bound) => format!("<= {bound} ms"),
                None => format!(" > {} ms", HISTOGRAM_BOUNDS_MS[HISTOGRAM_BOUNDS_MS.len() - 1]),
            };
            let width = (count as f64 / fullest as f64 * HISTOGRAM_BAR_WIDTH_MAX as f64).ceil() as usize;
            println!("  {label:>13} [{count:>8}] |{}", "∎".repeat(width));
        }
    }
}

struct RequestsReport {
    seconds: f64,
    n_completed: u64,
    n_compare_failed: u64,
    errors: BTreeMap<ErrorKind, u64>,
    latency: LatencySummary,
    rate_per_s: Option<u64>,
}

struct WatchReport {
    write_seconds: f64,
    delivery_seconds: f64,
    rate_per_s: u64,
    n_puts: u64,
    put_errors: BTreeMap<ErrorKind, u64>,
    put_latency: LatencySummary,
    n_events_expected: u64,
    n_events: u64,
    n_before_ack: u64,
    watch_errors: BTreeMap<ErrorKind, u64>,
    /// Put acknowledged → event received (0 when the event came first).
    after_ack: LatencySummary,
    /// Put sent → event received (etcd's `watch-latency` measures this).
    after_send: LatencySummary,
}

enum Report {
    Requests(RequestsReport),
    Watch(Box<WatchReport>),
}

fn describe(global: &GlobalArgs, args: &BenchKvArgs) -> String {
    format!(
        "{} on {} at {}: {} {} over {} connections, key {} B, value {} B, key space {}{}",
        args.workload.name(),
        args.target.name(),
        global.endpoints.join(","),
        args.clients,
        if args.workload == Workload::Watch {
            "watchers"
        } else {
            "clients"
        },
        args.conns,
        args.key_size,
        args.val_size,
        args.key_space,
        if args.serializable { ", serializable" } else { "" }
    )
}

fn print_errors(title: &str, errors: &BTreeMap<ErrorKind, u64>) {
    if errors.is_empty() {
        return;
    }
    println!("{title}:");
    for (kind, n) in errors {
        println!("  {n:>8}  {kind}");
    }
}

impl Report {
    fn print_text(&self, global: &GlobalArgs, args: &BenchKvArgs) {
        println!("bench kv {}", describe(global, args));
        match self {
            Report::Requests(r) => {
                let n_errors: u64 = r.errors.values().sum();
                println!(
                    "  {} requests in {:.2} s: {:.0} requests/s{}",
                    r.n_completed,
                    r.seconds,
                    r.n_completed as f64 / r.seconds,
                    r.rate_per_s
                        .map_or(String::new(), |rate| format!(" (rate limit {rate}/s)"))
                );
                if args.workload == Workload::TxnCas {
                    println!(
                        "  {} swapped, {} compare failed",
                        r.n_completed - r.n_compare_failed,
                        r.n_compare_failed
                    );
                }
                println!("  {n_errors} errors");
                r.latency.print_percentiles("latency");
                r.latency.print_histogram("latency histogram");
                print_errors("errors by kind", &r.errors);
            }
            Report::Watch(w) => {
                println!(
                    "  {} puts in {:.2} s at {}/s; {} of {} expected events received ({:.0} events/s), {} before the put's ack",
                    w.n_puts,
                    w.write_seconds,
                    w.rate_per_s,
                    w.n_events,
                    w.n_events_expected,
                    w.n_events as f64 / w.delivery_seconds,
                    w.n_before_ack
                );
                w.after_ack.print_percentiles("delivery, put ack -> event");
                w.after_send.print_percentiles("put sent -> event");
                w.put_latency.print_percentiles("put latency");
                w.after_ack
                    .print_histogram("delivery histogram (put ack -> event)");
                print_errors("put errors by kind", &w.put_errors);
                print_errors("watch streams ended by", &w.watch_errors);
            }
        }
    }

    fn to_json(&self, global: &GlobalArgs, args: &BenchKvArgs) -> serde_json::Value {
        let mut value = json!({"bench": "kv", "workload": args.workload.name(), "target": args.target.name(),
            "endpoints": global.endpoints, "clients": args.clients, "conns": args.conns,
            "total": args.total, "key_size": args.key_size, "val_size": args.val_size,
            "key_space": args.key_space, "serializable": args.serializable, "seed": args.seed});
        let extra = match self {
            Report::Requests(r) => json!({
                "rate_limit": r.rate_per_s, "seconds": r.seconds, "requests": r.n_completed,
                "requests_per_s": r.n_completed as f64 / r.seconds,
                "compare_failed": r.n_compare_failed,
                "errors": r.errors.values().sum::<u64>(), "errors_by_kind": r.errors,
                "latency": r.latency.to_json()}),
            Report::Watch(w) => json!({
                "rate_limit": w.rate_per_s, "seconds": w.write_seconds, "puts": w.n_puts,
                "put_errors_by_kind": w.put_errors, "put_latency": w.put_latency.to_json(),
                "events_expected": w.n_events_expected, "events": w.n_events,
                "events_per_s": w.n_events as f64 / w.delivery_seconds,
                "events_before_ack": w.n_before_ack, "watch_errors_by_kind": w.watch_errors,
                "delivery_latency": w.after_ack.to_json(),
                "put_sent_to_event_latency": w.after_send.to_json()}),
        };
        if let (Some(value), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            value.extend(extra);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: keys are zero-padded indexes of the requested size, and stamped values keep
    // their size.
    #[test]
    fn keys_and_values_have_the_requested_sizes() {
        assert_eq!(key_of(42, 8), b"00000042");
        let value = value_of(&mut Rng::new(7), 16);
        assert_eq!(value.len(), 16);
        let stamped_value = stamped(&value, 1234);
        assert_eq!(stamped_value.len(), 16);
        assert!(stamped_value.ends_with(b"1234"));
        assert_eq!(stamped(b"ab", 1234), b"34");
    }

    // Goal: the nearest-rank percentiles and the histogram count every sample once.
    #[test]
    fn latency_summary_percentiles_and_buckets() {
        let mut samples: Vec<u64> = (1..=1000).map(|ms| ms * 1_000_000).collect();
        let summary = LatencySummary::of(&mut samples);
        assert_eq!(summary.p50_ms, 500.0);
        assert_eq!(summary.p90_ms, 900.0);
        assert_eq!(summary.p99_ms, 990.0);
        assert_eq!(summary.p99_9_ms, 999.0);
        assert_eq!(summary.max_ms, 1000.0);
        assert_eq!(summary.histogram.iter().sum::<u64>(), 1000);
    }

    // Goal: the expected event count matches watcher w watching key w mod key_space.
    #[test]
    fn watchers_on_counts_watchers_per_key() {
        for (n_watchers, key_space) in [(10u64, 3u64), (3, 10), (7, 7), (1, 1)] {
            let by_formula: u64 = (0..key_space)
                .map(|k| watchers_on(k, n_watchers, key_space))
                .sum();
            assert_eq!(by_formula, n_watchers);
            for k in 0..key_space {
                let direct = (0..n_watchers).filter(|w| w % key_space == k).count() as u64;
                assert_eq!(watchers_on(k, n_watchers, key_space), direct);
            }
        }
    }
}
