//! A worker: registers with the coordinator, asks for tasks, runs them on blocking threads,
//! heartbeats progress, serves its map outputs to reducers (`MapOutput.Fetch`), and exits when
//! the job is over or the coordinator is gone for good.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::coordinator::{AppChoice, GRPC_MESSAGE_BYTES_MAX};
use crate::error::MrError;
use crate::job::{
    run_map_task, run_reduce_task, InputRange, Job, MapTaskSpec, TaskContext, TaskCounters, TaskError,
};
use crate::output::attempt_path;
use crate::proto;
use crate::record::{self, Segment};
use crate::shuffle::ReduceInputs;
use crate::storage::Storage;
use crate::work_dir::{self, WorkDir};

/// Bytes per `FetchChunk`. Cost: up to [`FETCH_CHUNKS_IN_FLIGHT_MAX`] of these buffered per
/// fetch on the serving side.
pub const FETCH_CHUNK_BYTES: usize = 1 << 20;
pub const FETCH_CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Tries of one fetch before the reducer reports the map output as lost.
pub const FETCH_ATTEMPTS_MAX: u32 = 3;
/// Pause before the first fetch retry (doubles each time).
const FETCH_BACKOFF: Duration = Duration::from_millis(200);
/// Pause between asks while the coordinator has nothing to hand out.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Pause between retries of an unreachable coordinator.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Time for one RPC to the coordinator.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator's HOST:PORT.
    pub coordinator: String,
    /// Where to serve map outputs (HOST:PORT; port 0 picks one).
    pub listen: String,
    /// The host reducers should use to reach this worker (default: the listen address's host).
    pub advertise_host: Option<String>,
    /// Root of the workers' local folders for spills and map outputs (default
    /// [`work_dir::default_root`]); this worker's folder is removed when it exits, and folders
    /// of dead workers are swept when it starts ([`crate::work_dir`]).
    pub work_dir: Option<PathBuf>,
    /// How long to keep trying to reach the coordinator (at start, and after losing it) before
    /// giving up: a worker started a moment before its coordinator waits for it.
    pub coordinator_wait: Duration,
    /// Where the job's inputs are read and its reduce output written: the coordinator's
    /// storage. Spills and map outputs stay in `work_dir` on local disk whatever this is.
    pub storage: Arc<dyn Storage>,
}

impl WorkerConfig {
    pub fn new(coordinator: &str) -> Self {
        Self {
            coordinator: coordinator.to_string(),
            listen: "127.0.0.1:0".to_string(),
            advertise_host: None,
            work_dir: None,
            coordinator_wait: Duration::from_secs(10),
            storage: crate::storage::local(),
        }
    }

    /// The same worker on another storage.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    JobOver,
    CoordinatorGone,
}

#[derive(Debug, Clone)]
pub struct WorkerSummary {
    pub tasks_run: u64,
    pub reason: ExitReason,
}

/// One attempt this worker runs. `run` counts the attempts this worker has started: a
/// restarted coordinator hands out the same task and attempt numbers again, and a heartbeat
/// answered about the old attempt must not cancel the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunningTask {
    run: u64,
    is_map: bool,
    idx: u32,
    attempt: u32,
}

#[derive(Default)]
struct Running {
    runs: u64,
    task: Option<RunningTask>,
}

/// The attempt in progress, shared by the task loop and the heartbeat loop.
#[derive(Default)]
struct Current {
    running: Mutex<Running>,
    progress: AtomicU64,
    cancel: AtomicBool,
}

impl Current {
    fn lock(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new attempt starts: not cancelled, no progress yet.
    fn start(&self, is_map: bool, idx: u32, attempt: u32) -> RunningTask {
        let mut running = self.lock();
        running.runs += 1;
        let task = RunningTask {
            run: running.runs,
            is_map,
            idx,
            attempt,
        };
        running.task = Some(task);
        self.cancel.store(false, Ordering::Relaxed);
        self.progress.store(0, Ordering::Relaxed);
        task
    }

    fn finish(&self) {
        self.lock().task = None;
    }

    fn task(&self) -> Option<RunningTask> {
        self.lock().task
    }

    /// Cancels `task` if it is still the attempt in progress (checked and set under the lock
    /// that [`Current::start`] takes, so a newer attempt is never cancelled in its place).
    fn cancel_if_running(&self, task: RunningTask) {
        let running = self.lock();
        if running.task == Some(task) {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

struct Shared {
    id: u64,
    addr: String,
    current: Current,
    exit: AtomicBool,
    last_contact: Mutex<Instant>,
    wait: Duration,
    storage: Arc<dyn Storage>,
}

impl Shared {
    fn touch(&self) {
        *self.last_contact.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    fn gone(&self) -> bool {
        self.last_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            > self.wait
    }
}

fn worker_id(addr: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    record::fnv1a64(format!("{addr}/{}/{nanos}", std::process::id()).as_bytes())
}

/// Runs a worker until the job is over or the coordinator is gone. `job` overrides the job
/// the coordinator names (a user's own worker binary); `None` runs the coordinator's job.
pub async fn run_worker(config: WorkerConfig, job: Option<Job>) -> Result<WorkerSummary, MrError> {
    let root = config.work_dir.clone().unwrap_or_else(work_dir::default_root);
    let work_dir = WorkDir::create(&root)
        .map_err(|e| MrError::Config(format!("cannot create a work folder in {}: {e}", root.display())))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| MrError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let local = listener.local_addr()?;
    let host = match &config.advertise_host {
        Some(h) => h.clone(),
        None if local.ip().is_unspecified() => "127.0.0.1".to_string(),
        None => local.ip().to_string(),
    };
    let addr = format!("{host}:{}", local.port());
    let shutdown = Arc::new(Notify::new());
    let server = {
        let shutdown = shutdown.clone();
        let svc = proto::map_output_server::MapOutputServer::new(MapOutputService {
            dir: work_dir.path().to_path_buf(),
        })
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move { shutdown.notified().await },
                ),
        )
    };
    let shared = Arc::new(Shared {
        id: worker_id(&addr),
        addr,
        current: Current::default(),
        exit: AtomicBool::new(false),
        last_contact: Mutex::new(Instant::now()),
        wait: config.coordinator_wait,
        storage: config.storage.clone(),
    });
    let result = work(&config, job, &shared, work_dir.path()).await;
    shared.exit.store(true, Ordering::Relaxed);
    shutdown.notify_one();
    let _ = server.await;
    result
}

async fn connect(addr: &str) -> Result<proto::coordinator_client::CoordinatorClient<Channel>, MrError> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| MrError::Config(format!("bad coordinator address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(proto::coordinator_client::CoordinatorClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
}

async fn register(
    client: &mut proto::coordinator_client::CoordinatorClient<Channel>,
    shared: &Shared,
    coordinator: &str,
) -> Result<proto::RegisterReply, MrError> {
    loop {
        match client
            .register(proto::RegisterRequest {
                worker_id: shared.id,
                addr: shared.addr.clone(),
            })
            .await
        {
            Ok(r) => {
                shared.touch();
                return Ok(r.into_inner());
            }
            Err(e) => {
                if shared.gone() {
                    return Err(MrError::CoordinatorUnreachable {
                        addr: coordinator.to_string(),
                        reason: format!("{} (gave up after {:?})", e.message(), shared.wait),
                    });
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

async fn work(
    config: &WorkerConfig,
    job: Option<Job>,
    shared: &Arc<Shared>,
    dir: &Path,
) -> Result<WorkerSummary, MrError> {
    let mut client = connect(&config.coordinator).await?;
    let reply = register(&mut client, shared, &config.coordinator).await?;
    let spec = reply
        .job
        .ok_or_else(|| MrError::Rpc("coordinator sent no job".into()))?;
    let job = match job {
        Some(j) => j,
        None => AppChoice::from_job_spec(&spec)
            .to_job()
            .map_err(MrError::Config)?,
    };
    let job = Arc::new(job);
    let spec = Arc::new(spec);
    tracing::info!(worker = %format!("{:016x}", shared.id), addr = %shared.addr, job = %spec.job_id, "worker registered");

    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        shared.clone(),
        Duration::from_millis(reply.heartbeat_interval_ms.max(50)),
    ));
    let mut tasks_run = 0;
    let reason = loop {
        if shared.exit.load(Ordering::Relaxed) {
            break if shared.gone() {
                ExitReason::CoordinatorGone
            } else {
                ExitReason::JobOver
            };
        }
        let task = match client
            .request_task(proto::TaskRequest { worker_id: shared.id })
            .await
        {
            Ok(r) => {
                shared.touch();
                r.into_inner()
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                register(&mut client, shared, &config.coordinator).await?;
                continue;
            }
            Err(e) => {
                if shared.gone() {
                    tracing::warn!(error = %e.message(), "coordinator gone; exiting");
                    break ExitReason::CoordinatorGone;
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        };
        use proto::task_reply::Kind;
        match Kind::try_from(task.kind).unwrap_or(Kind::Wait) {
            Kind::Wait => tokio::time::sleep(WAIT_POLL).await,
            Kind::Exit => break ExitReason::JobOver,
            kind @ (Kind::Map | Kind::Reduce) => {
                tasks_run += 1;
                let is_map = kind == Kind::Map;
                run_one(&mut client, shared, &job, &spec, dir, is_map, task).await;
            }
        }
    };
    shared.exit.store(true, Ordering::Relaxed);
    heartbeat.abort();
    Ok(WorkerSummary { tasks_run, reason })
}

enum Outcome {
    Map(TaskCounters),
    Reduce(TaskCounters, PathBuf),
    Failed(String, Option<PathBuf>),
    FetchFailed {
        map_idx: u32,
        map_attempt: u32,
        error: String,
    },
    Cancelled,
}

async fn run_one(
    client: &mut proto::coordinator_client::CoordinatorClient<Channel>,
    shared: &Arc<Shared>,
    job: &Arc<Job>,
    spec: &Arc<proto::JobSpec>,
    dir: &Path,
    is_map: bool,
    task: proto::TaskReply,
) {
    let (idx, attempt) = (task.task_idx, task.attempt);
    shared.current.start(is_map, idx, attempt);
    let started = Instant::now();
    let outcome = {
        let (shared2, job, spec, dir) = (shared.clone(), job.clone(), spec.clone(), dir.to_path_buf());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let ctx = TaskContext {
                dir: &dir,
                storage: shared2.storage.as_ref(),
                progress: &shared2.current.progress,
                cancel: &shared2.current.cancel,
            };
            if is_map {
                run_map(&job, &spec, &ctx, idx, attempt, &task.inputs)
            } else {
                run_reduce(&handle, &job, &spec, &ctx, shared2.id, idx, attempt, &task.maps)
            }
        })
        .await
        .unwrap_or_else(|e| Outcome::Failed(format!("task panicked: {e}"), None))
    };
    shared.current.finish();
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut report = proto::TaskReport {
        worker_id: shared.id,
        is_map,
        task_idx: idx,
        attempt,
        ..Default::default()
    };
    match outcome {
        Outcome::Cancelled => {
            tracing::info!(task = idx, attempt, is_map, "attempt cancelled");
            return;
        }
        Outcome::Map(c) => {
            report.ok = true;
            report.counters = Some(counters(&c, duration_ms));
        }
        Outcome::Reduce(c, temp) => {
            report.ok = true;
            report.counters = Some(counters(&c, duration_ms));
            report.temp_output = temp.display().to_string();
        }
        Outcome::Failed(error, temp) => {
            report.error = error;
            report.temp_output = temp.map(|p| p.display().to_string()).unwrap_or_default();
        }
        Outcome::FetchFailed {
            map_idx,
            map_attempt,
            error,
        } => {
            let req = proto::FetchFailure {
                worker_id: shared.id,
                reduce_idx: idx,
                reduce_attempt: attempt,
                map_idx,
                map_attempt,
                error,
            };
            while let Err(e) = client.report_fetch_failure(req.clone()).await {
                if shared.gone() || e.code() == tonic::Code::NotFound {
                    return;
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            return;
        }
    }
    // Keep trying while the coordinator may be restarting; a report it cannot place (it
    // forgot this worker) is dropped: the task runs again elsewhere.
    while let Err(e) = client.report_task(report.clone()).await {
        if shared.gone() || e.code() == tonic::Code::NotFound {
            return;
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
    shared.touch();
}

fn counters(c: &TaskCounters, duration_ms: u64) -> proto::Counters {
    proto::Counters {
        records_in: c.records_in,
        bytes_in: c.bytes_in,
        records_out: c.records_out,
        bytes_out: c.bytes_out,
        shuffle_bytes: c.shuffle_bytes,
        spills: c.spills,
        duration_ms,
    }
}

fn run_map(
    job: &Job,
    spec: &proto::JobSpec,
    ctx: &TaskContext<'_>,
    idx: u32,
    attempt: u32,
    inputs: &[proto::InputRange],
) -> Outcome {
    let inputs: Vec<InputRange> = inputs
        .iter()
        .map(|r| InputRange {
            path: r.path.clone(),
            start: r.start,
            end: r.end,
        })
        .collect();
    let name = format!("map-{idx:05}-{attempt}");
    let spec = MapTaskSpec {
        name: &name,
        n_reduce: spec.n_reduce,
        inputs: &inputs,
        buffer_bytes: spec.map_buffer_bytes as usize,
        bounds: &spec.partition_bounds,
    };
    match run_map_task(job, &spec, ctx) {
        Ok((_files, counters)) => Outcome::Map(counters),
        Err(TaskError::Cancelled) => Outcome::Cancelled,
        Err(TaskError::Failed(msg)) => Outcome::Failed(msg, None),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_reduce(
    handle: &tokio::runtime::Handle,
    job: &Job,
    spec: &proto::JobSpec,
    ctx: &TaskContext<'_>,
    worker_id: u64,
    idx: u32,
    attempt: u32,
    maps: &[proto::MapLocation],
) -> Outcome {
    let name = format!("reduce-{idx:05}-{attempt}");
    let mut inputs = ReduceInputs::new(ctx.dir, &name, spec.reduce_buffer_bytes as usize);
    let mut clients: HashMap<String, proto::map_output_client::MapOutputClient<Channel>> = HashMap::new();
    let mut shuffle_bytes = 0;
    for m in maps {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Outcome::Cancelled;
        }
        let mut last_error = String::new();
        let mut fetched = None;
        for i in 0..FETCH_ATTEMPTS_MAX {
            if i > 0 {
                std::thread::sleep(FETCH_BACKOFF * 2u32.pow(i - 1));
            }
            match handle.block_on(fetch(&mut clients, &mut inputs, m, idx)) {
                Ok(n) => {
                    fetched = Some(n);
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        match fetched {
            Some(n) => shuffle_bytes += n,
            None => {
                return Outcome::FetchFailed {
                    map_idx: m.map_idx,
                    map_attempt: m.attempt,
                    error: last_error,
                };
            }
        }
        ctx.progress.fetch_add(1, Ordering::Relaxed);
    }
    let merger = match inputs.into_merger() {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(format!("merging the shuffle input: {e}"), None),
    };
    let temp = attempt_path(Path::new(&spec.output_dir), idx, attempt, worker_id);
    match run_reduce_task(job, merger, &temp, ctx) {
        Ok(mut c) => {
            c.shuffle_bytes = shuffle_bytes;
            Outcome::Reduce(c, temp)
        }
        Err(TaskError::Cancelled) => {
            let _ = ctx.storage.remove_file(&temp);
            Outcome::Cancelled
        }
        Err(TaskError::Failed(msg)) => Outcome::Failed(msg, Some(temp)),
    }
}

/// Fetches one map output partition into `inputs`; returns its size.
async fn fetch(
    clients: &mut HashMap<String, proto::map_output_client::MapOutputClient<Channel>>,
    inputs: &mut ReduceInputs,
    m: &proto::MapLocation,
    partition: u32,
) -> Result<u64, String> {
    let client = match clients.get(&m.addr) {
        Some(c) => c.clone(),
        None => {
            let channel = Endpoint::from_shared(format!("http://{}", m.addr))
                .map_err(|e| format!("bad map worker address {:?}: {e}", m.addr))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            let c = proto::map_output_client::MapOutputClient::new(channel)
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX);
            clients.insert(m.addr.clone(), c.clone());
            c
        }
    };
    let mut client = client;
    let what = format!(
        "map task {} attempt {} partition {partition} from {}",
        m.map_idx, m.attempt, m.addr
    );
    let mut stream = client
        .fetch(proto::FetchRequest {
            map_idx: m.map_idx,
            attempt: m.attempt,
            partition,
        })
        .await
        .map_err(|e| format!("fetching {what}: {}", e.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| format!("fetching {what}: {}", e.message()))?
        .ok_or_else(|| format!("fetching {what}: empty stream"))?;
    let total = first.total_len;
    let expected_crc = first.crc32c;
    let mut crc = crc32c::crc32c(&first.data);
    let to_file = inputs.wants_file(total);
    let mut data = Vec::new();
    let mut file_path = None;
    let mut file = None;
    if to_file {
        let p = inputs.next_run_path();
        file = Some(std::fs::File::create(&p).map_err(|e| format!("spilling {what}: {e}"))?);
        file_path = Some(p);
    } else {
        data.reserve_exact(total as usize);
    }
    let mut received = 0u64;
    let mut chunk = first.data;
    loop {
        received += chunk.len() as u64;
        match &mut file {
            Some(f) => std::io::Write::write_all(f, &chunk).map_err(|e| format!("spilling {what}: {e}"))?,
            None => data.extend_from_slice(&chunk),
        }
        match stream
            .message()
            .await
            .map_err(|e| format!("fetching {what}: {}", e.message()))?
        {
            Some(next) => {
                crc = crc32c::crc32c_append(crc, &next.data);
                chunk = next.data;
            }
            None => break,
        }
    }
    if received != total || crc != expected_crc {
        return Err(format!(
            "fetching {what}: got {received} of {total} bytes or a bad checksum"
        ));
    }
    match file_path {
        Some(p) => inputs
            .add_file(p, total)
            .map_err(|e| format!("spilling {what}: {e}"))?,
        None => inputs
            .add_segment(data)
            .map_err(|e| format!("merging {what}: {e}"))?,
    }
    Ok(total)
}

async fn heartbeat_loop(
    mut client: proto::coordinator_client::CoordinatorClient<Channel>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let running = shared.current.task();
        let (is_running, is_map, task_idx, attempt) = match running {
            Some(t) => (true, t.is_map, t.idx, t.attempt),
            None => (false, false, 0, 0),
        };
        let req = proto::HeartbeatRequest {
            worker_id: shared.id,
            running: is_running,
            is_map,
            task_idx,
            attempt,
            progress: shared.current.progress.load(Ordering::Relaxed),
        };
        match client.heartbeat(req).await {
            Ok(reply) => {
                shared.touch();
                let reply = reply.into_inner();
                if reply.reregister {
                    let _ = client
                        .register(proto::RegisterRequest {
                            worker_id: shared.id,
                            addr: shared.addr.clone(),
                        })
                        .await;
                }
                if let (true, Some(task)) = (reply.cancel, running) {
                    shared.current.cancel_if_running(task);
                }
                if reply.exit {
                    shared.current.cancel.store(true, Ordering::Relaxed);
                    shared.exit.store(true, Ordering::Relaxed);
                    return;
                }
            }
            Err(_) => {
                if shared.gone() {
                    shared.current.cancel.store(true, Ordering::Relaxed);
                    shared.exit.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

struct MapOutputService {
    dir: PathBuf,
}

#[tonic::async_trait]
impl proto::map_output_server::MapOutput for MapOutputService {
    type FetchStream = tokio_stream::wrappers::ReceiverStream<Result<proto::FetchChunk, Status>>;

    async fn fetch(&self, req: Request<proto::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let r = req.into_inner();
        let name = format!("map-{:05}-{}", r.map_idx, r.attempt);
        let index = self.dir.join(format!("{name}.index"));
        let data = self.dir.join(format!("{name}.data"));
        let segments = record::read_index(&index).map_err(|e| {
            Status::not_found(format!(
                "no output of map task {} attempt {} here: {e}",
                r.map_idx, r.attempt
            ))
        })?;
        let seg: Segment = *segments
            .get(r.partition as usize)
            .ok_or_else(|| Status::invalid_argument(format!("partition {} out of range", r.partition)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(FETCH_CHUNKS_IN_FLIGHT_MAX);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let send = |chunk: Result<proto::FetchChunk, Status>| tx.blocking_send(chunk).is_ok();
            let mut f = match std::fs::File::open(&data)
                .and_then(|mut f| f.seek(SeekFrom::Start(seg.offset)).map(|_| f))
            {
                Ok(f) => f.take(seg.len),
                Err(e) => {
                    send(Err(Status::internal(format!("reading map output: {e}"))));
                    return;
                }
            };
            let mut first = true;
            loop {
                let mut buf = vec![0u8; FETCH_CHUNK_BYTES];
                let mut n = 0;
                while n < buf.len() {
                    match f.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            send(Err(Status::internal(format!("reading map output: {e}"))));
                            return;
                        }
                    }
                }
                buf.truncate(n);
                if n == 0 && !first {
                    return;
                }
                let chunk = proto::FetchChunk {
                    total_len: if first { seg.len } else { 0 },
                    crc32c: if first { seg.crc32c } else { 0 },
                    data: buf,
                };
                first = false;
                if !send(Ok(chunk)) || n < FETCH_CHUNK_BYTES {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_for_an_earlier_attempt_with_the_same_numbers_leaves_the_new_one_running() {
        // A restarted coordinator numbers attempts from its journal, so the attempt it hands
        // out can carry the same task and attempt numbers as the one this worker ran for the
        // coordinator before it. A heartbeat answered about the old one must not cancel it.
        let current = Current::default();
        let old = current.start(false, 1, 0);
        current.finish();
        let new = current.start(false, 1, 0);
        current.cancel_if_running(old);
        assert!(!current.cancel.load(Ordering::Relaxed));
        current.cancel_if_running(new);
        assert!(current.cancel.load(Ordering::Relaxed));
        // The next attempt starts uncancelled.
        current.finish();
        current.start(true, 0, 3);
        assert!(!current.cancel.load(Ordering::Relaxed));
        assert_eq!(
            current.task().map(|t| (t.is_map, t.idx, t.attempt)),
            Some((true, 0, 3))
        );
    }
}
