//! The coordinator: a thin tokio/tonic shell around the sans-IO [`TaskTable`]. It serves the
//! `Coordinator` gRPC service, ticks the table, executes its [`Action`]s (journal, commit a
//! reduce output by rename, finish the job) and exposes a status document.
//!
//! Output commit protocol ([`OutputCommitter`]): a reduce attempt writes
//! `OUTPUT/_temporary/attempt-…`; when its success report wins in the table the coordinator
//! renames it to `OUTPUT/part-r-NNNNN`, then journals it. A failed job removes every
//! `part-r-*` it committed and `_temporary/`; a done job writes `_SUCCESS` and removes
//! `_temporary/`. Inputs, the journal and the output folder are all reached through the
//! configured [`Storage`].
//!
//! Journal (`OUTPUT/_temporary/journal`): JSON lines, a header naming the job, then committed
//! and lost map outputs and committed reduce tasks, each fsynced before the worker that caused
//! it hears back. A coordinator restarted with the same command line replays it and resumes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::apps::{builtin_job, AppParams};
use crate::error::MrError;
use crate::input::{expand_inputs, plan_splits, InputSplit};
use crate::job::Job;
pub use crate::output::part_name;
use crate::output::OutputCommitter;
use crate::proto;
use crate::storage::{OutputFile, Storage};
use crate::task_table::{
    Action, Assignment, AttemptId, JobState, TableCounts, TaskId, TaskKind, TaskTable, TaskTableConfig,
    WorkerId,
};

/// How often the table is ticked (timeouts are detected within this much).
const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest the coordinator waits after the job is over for its workers to hear so.
const EXIT_LINGER_MAX: Duration = Duration::from_secs(3);
/// Failure messages kept for `mr status`. Cost: this many strings of at most a few KiB.
const FAILURES_KEPT_MAX: usize = 32;
/// Keys sampled from the input to choose the `sort` app's partition bounds. Cost: this many
/// lines in memory at job start.
const SAMPLE_KEYS_MAX: usize = 100_000;
/// Bytes read at the start of each split for sampling.
const SAMPLE_BYTES_PER_SPLIT: u64 = 256 << 10;
/// Largest gRPC message (a reduce assignment lists every map output's location).
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Which functions a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum AppChoice {
    Builtin {
        name: String,
        pattern: Option<String>,
    },
    Streaming {
        mapper: String,
        reducer: String,
        combiner: Option<String>,
    },
    /// A Rust job: its workers are built with its code ([`crate::run_worker`] with the `Job`).
    Custom {
        name: String,
    },
}

impl AppChoice {
    pub fn to_job(&self) -> Result<Job, String> {
        match self {
            AppChoice::Builtin { name, pattern } => builtin_job(name, &AppParams { pattern: pattern.clone() }),
            AppChoice::Custom { name } => Err(format!(
                "job {name:?} is a Rust job: its workers must be built with its code (shoal_mr::run_worker with the Job)"
            )),
            AppChoice::Streaming { mapper, reducer, combiner } => {
                let job = Job::streaming(mapper, reducer);
                Ok(match combiner {
                    Some(c) => job.streaming_combiner(c),
                    None => job,
                })
            }
        }
    }

    fn from_spec(spec: &proto::JobSpec) -> Self {
        if let Some(name) = spec.app.strip_prefix("custom:") {
            return AppChoice::Custom {
                name: name.to_string(),
            };
        }
        if spec.app.is_empty() {
            AppChoice::Streaming {
                mapper: spec.mapper_cmd.clone(),
                reducer: spec.reducer_cmd.clone(),
                combiner: (!spec.combiner_cmd.is_empty()).then(|| spec.combiner_cmd.clone()),
            }
        } else {
            AppChoice::Builtin {
                name: spec.app.clone(),
                pattern: (!spec.pattern.is_empty()).then(|| spec.pattern.clone()),
            }
        }
    }

    pub(crate) fn from_job_spec(spec: &proto::JobSpec) -> Self {
        Self::from_spec(spec)
    }
}

#[derive(Clone, Debug)]
pub struct JobConfig {
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub n_reduce: u32,
    pub app: AppChoice,
    pub split_size_bytes: u64,
    pub combine_small_files: bool,
    pub overwrite: bool,
    /// Map-side sort buffer per task.
    pub map_buffer_bytes: u64,
    /// Reduce-side in-memory shuffle budget per task.
    pub reduce_buffer_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub job: JobConfig,
    pub task_timeout: Duration,
    pub worker_timeout: Duration,
    pub max_attempts: u32,
    pub speculation: bool,
    pub heartbeat_interval: Duration,
    /// Where the inputs are and the output goes (and the journal, inside the output folder).
    /// Its workers must use the same storage.
    pub storage: Arc<dyn Storage>,
}

impl CoordinatorConfig {
    /// Defaults: local storage, 10 s task timeout, 5 s worker timeout, 4 attempts, speculation.
    pub fn new(job: JobConfig) -> Self {
        Self {
            job,
            task_timeout: Duration::from_secs(10),
            worker_timeout: Duration::from_secs(5),
            max_attempts: 4,
            speculation: true,
            heartbeat_interval: Duration::from_millis(300),
            storage: crate::storage::local(),
        }
    }

    /// The same job on another storage.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    pub fn validate(&self) -> Result<(), MrError> {
        if self.job.n_reduce == 0 {
            return Err(MrError::Config("--reducers must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(MrError::Config("--max-attempts must be at least 1".into()));
        }
        if self.job.split_size_bytes == 0 {
            return Err(MrError::Config("--split-size must be more than 0".into()));
        }
        if self.task_timeout < Duration::from_millis(100) {
            return Err(MrError::Config("--task-timeout must be at least 100ms".into()));
        }
        if !matches!(self.job.app, AppChoice::Custom { .. }) {
            self.job.app.to_job().map_err(MrError::Config)?;
        }
        Ok(())
    }
}

/// Job-wide counters, summed over winning attempts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobCounters {
    pub map_records_in: u64,
    pub map_bytes_in: u64,
    pub map_records_out: u64,
    pub map_bytes_out: u64,
    pub spills: u64,
    pub shuffle_bytes: u64,
    pub reduce_keys_in: u64,
    pub reduce_records_out: u64,
    pub reduce_bytes_out: u64,
}

/// The document `shoal mr status -o json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub error: Option<String>,
    pub output: String,
    pub elapsed_ms: u64,
    /// Tasks, attempts and workers, as the task table counts them (inlined in the JSON).
    #[serde(flatten)]
    pub table: TableCounts,
    pub counters: JobCounters,
    pub map_phase_ms: u64,
    pub reduce_phase_ms: u64,
    /// (partition, output bytes) of the largest and smallest committed reduce partitions.
    pub largest_partition: Option<(u32, u64)>,
    pub smallest_partition: Option<(u32, u64)>,
    pub running: Vec<String>,
    pub recent_failures: Vec<String>,
    pub resumed: bool,
}

#[derive(Serialize, Deserialize, Debug)]
enum JournalRecord {
    Header {
        job_id: String,
        fingerprint: String,
    },
    MapCommitted {
        map_idx: u32,
        attempt: u32,
        worker: u64,
        addr: String,
    },
    MapLost {
        map_idx: u32,
    },
    ReduceCommitted {
        partition: u32,
        attempt: u32,
        worker: u64,
    },
}

struct Journal {
    path: PathBuf,
    file: Box<dyn OutputFile>,
}

fn journal_line(rec: &JournalRecord) -> Vec<u8> {
    let mut line = serde_json::to_vec(rec).expect("journal records serialize");
    line.push(b'\n');
    line
}

impl Journal {
    /// Opens the journal for appending. After a crash mid-append its last line may be torn:
    /// then the good records (`records`, `good_bytes` long) are first rewritten to a new file
    /// renamed over it, so new records start on a line of their own.
    fn open(storage: &dyn Storage, path: PathBuf, records: &[JournalRecord]) -> Result<Self, MrError> {
        let err = |e: std::io::Error| MrError::Journal {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let good: Vec<u8> = records.iter().flat_map(journal_line).collect();
        let len = match storage.stat(&path) {
            Ok(s) => s.len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e)),
        };
        if len > good.len() as u64 {
            let tmp = path.with_extension("rewrite");
            let mut f = storage.create(&tmp).map_err(err)?;
            f.write_all(&good).map_err(err)?;
            f.sync().map_err(err)?;
            drop(f);
            storage.rename(&tmp, &path).map_err(err)?;
        }
        let file = storage.append(&path).map_err(err)?;
        Ok(Self { path, file })
    }

    fn append(&mut self, rec: &JournalRecord) -> Result<(), MrError> {
        let err = |e: std::io::Error| MrError::Journal {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        self.file.write_all(&journal_line(rec)).map_err(err)?;
        self.file.sync().map_err(err)
    }
}

struct State {
    table: TaskTable,
    spec: proto::JobSpec,
    splits: Vec<InputSplit>,
    output: OutputCommitter,
    journal: Journal,
    worker_addrs: HashMap<WorkerId, String>,
    temp_outputs: HashMap<(u32, u32), PathBuf>,
    counters: JobCounters,
    partition_bytes: HashMap<u32, u64>,
    map_phase_start_ms: Option<u64>,
    map_phase_end_ms: Option<u64>,
    reduce_phase_end_ms: Option<u64>,
    failures: VecDeque<String>,
    /// Set when the coordinator itself cannot continue (journal or commit I/O failed).
    fatal: Option<String>,
    told_exit: HashSet<WorkerId>,
    resumed: bool,
}

/// A running job's coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    start: Instant,
    config: Arc<CoordinatorConfig>,
}

/// How a job ended.
#[derive(Debug)]
pub struct JobReport {
    pub status: JobStatus,
    pub result: Result<(), String>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_journal(storage: &dyn Storage, path: &Path) -> Vec<JournalRecord> {
    let Ok(f) = storage.open_read(path, 0) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        // A torn last line (crash mid-append) ends the replay.
        let Ok(line) = line else { break };
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
    }
    out
}

/// Chooses R-1 bounds from a sample of input lines so that range partitions are about equal.
fn sample_bounds(
    storage: &dyn Storage,
    splits: &[InputSplit],
    n_reduce: u32,
) -> Result<Vec<Vec<u8>>, MrError> {
    let mut sample = Vec::new();
    let per_split = (SAMPLE_KEYS_MAX / splits.len().max(1)).max(1);
    for split in splits {
        let r = &split.ranges[0];
        let f = storage
            .open_read(Path::new(&r.path), r.start)
            .map_err(|e| MrError::Input {
                path: r.path.clone(),
                error: e,
            })?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        if r.start > 0 {
            reader.read_until(b'\n', &mut line)?;
        }
        let mut read = 0u64;
        let mut n = 0;
        while read < SAMPLE_BYTES_PER_SPLIT.min(r.end - r.start) && n < per_split {
            line.clear();
            let got = reader.read_until(b'\n', &mut line)?;
            if got == 0 {
                break;
            }
            read += got as u64;
            let l = line.strip_suffix(b"\n").unwrap_or(&line);
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            sample.push(l.to_vec());
            n += 1;
        }
    }
    sample.sort();
    if sample.is_empty() {
        return Ok(Vec::new());
    }
    Ok((1..n_reduce as usize)
        .map(|i| sample[i * sample.len() / n_reduce as usize].clone())
        .collect())
}

impl Coordinator {
    /// Checks the job, prepares the output folder and resumes from its journal if there is one.
    pub fn new(config: CoordinatorConfig) -> Result<Self, MrError> {
        config.validate()?;
        let job = &config.job;
        let storage = config.storage.as_ref();
        let files = expand_inputs(storage, &job.inputs)?;
        let splits = plan_splits(&files, job.split_size_bytes, job.combine_small_files);
        let output = OutputCommitter::new(config.storage.clone(), job.output.clone());
        let journal_path = output.journal_path();
        let fingerprint = serde_json::to_string(&(
            files
                .iter()
                .map(|(p, l)| (p.display().to_string(), *l))
                .collect::<Vec<_>>(),
            job.n_reduce,
            &job.app,
            job.split_size_bytes,
            job.combine_small_files,
        ))
        .expect("fingerprint serializes");

        let records = read_journal(storage, &journal_path);
        let resumed_id = match records.first() {
            Some(JournalRecord::Header {
                job_id,
                fingerprint: f,
            }) if *f == fingerprint => Some(job_id.clone()),
            _ => None,
        };
        let resumed = resumed_id.is_some();
        output.setup_job(job.overwrite, resumed)?;

        let job_id = resumed_id.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!(
                "job-{:012x}",
                crate::record::fnv1a64(format!("{fingerprint}{nanos}{}", std::process::id()).as_bytes())
                    >> 16
            )
        });
        let records = if resumed { records } else { Vec::new() };
        let mut journal = Journal::open(storage, journal_path, &records)?;
        if !resumed {
            journal.append(&JournalRecord::Header {
                job_id: job_id.clone(),
                fingerprint,
            })?;
        }

        let range_partitioned = match &job.app {
            AppChoice::Custom { .. } => false,
            app => app.to_job().map_err(MrError::Config)?.is_range_partitioned(),
        };
        let bounds = if range_partitioned {
            sample_bounds(storage, &splits, job.n_reduce)?
        } else {
            Vec::new()
        };
        let (app, mapper_cmd, reducer_cmd, combiner_cmd, pattern) = match &job.app {
            AppChoice::Builtin { name, pattern } => (
                name.clone(),
                String::new(),
                String::new(),
                String::new(),
                pattern.clone().unwrap_or_default(),
            ),
            AppChoice::Streaming {
                mapper,
                reducer,
                combiner,
            } => (
                String::new(),
                mapper.clone(),
                reducer.clone(),
                combiner.clone().unwrap_or_default(),
                String::new(),
            ),
            AppChoice::Custom { name } => (
                format!("custom:{name}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let spec = proto::JobSpec {
            job_id,
            n_reduce: job.n_reduce,
            app,
            mapper_cmd,
            reducer_cmd,
            combiner_cmd,
            pattern,
            partition_bounds: bounds,
            output_dir: output.qualified_dir().display().to_string(),
            map_buffer_bytes: job.map_buffer_bytes,
            reduce_buffer_bytes: job.reduce_buffer_bytes,
        };
        let mut table = TaskTable::new(TaskTableConfig {
            n_map: splits.len() as u32,
            n_reduce: job.n_reduce,
            task_timeout_ms: config.task_timeout.as_millis() as u64,
            worker_timeout_ms: config.worker_timeout.as_millis() as u64,
            max_attempts: config.max_attempts,
            speculation: config.speculation,
        });
        let mut worker_addrs = HashMap::new();
        for rec in records.iter().skip(1) {
            match rec {
                JournalRecord::MapCommitted {
                    map_idx,
                    attempt,
                    worker,
                    addr,
                } if *map_idx < splits.len() as u32 => {
                    table.restore_map_committed(*map_idx, *attempt, WorkerId(*worker), addr);
                    worker_addrs.insert(WorkerId(*worker), addr.clone());
                }
                JournalRecord::MapLost { map_idx } if *map_idx < splits.len() as u32 => {
                    table.restore_map_lost(*map_idx)
                }
                JournalRecord::ReduceCommitted {
                    partition,
                    attempt,
                    worker,
                } if *partition < job.n_reduce && output.is_committed(*partition) => {
                    table.restore_reduce_committed(*partition, *attempt, WorkerId(*worker));
                }
                _ => {}
            }
        }
        let state = State {
            table,
            spec,
            splits,
            output,
            journal,
            worker_addrs,
            temp_outputs: HashMap::new(),
            counters: JobCounters::default(),
            partition_bytes: HashMap::new(),
            map_phase_start_ms: None,
            map_phase_end_ms: None,
            reduce_phase_end_ms: None,
            failures: VecDeque::new(),
            fatal: None,
            told_exit: HashSet::new(),
            resumed,
        };
        // A job with nothing left (every reduce committed before a restart, or no input at all
        // with every partition done) finishes at once.
        let start = Instant::now();
        let coordinator = Self {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(Notify::new()),
            start,
            config: Arc::new(config),
        };
        {
            let mut st = lock(&coordinator.state);
            coordinator.process_actions(&mut st);
        }
        Ok(coordinator)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn job_id(&self) -> String {
        lock(&self.state).spec.job_id.clone()
    }

    /// Where this job's inputs and output are.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.config.storage.clone()
    }

    pub fn n_map_tasks(&self) -> u32 {
        lock(&self.state).splits.len() as u32
    }

    fn process_actions(&self, st: &mut State) {
        let now = self.now_ms();
        for action in st.table.take_actions() {
            let result = match action {
                Action::MapCommitted {
                    map_idx,
                    attempt,
                    worker,
                } => {
                    let addr = st.worker_addrs.get(&worker).cloned().unwrap_or_default();
                    let maps = st.table.counts().maps;
                    if maps.done == maps.total {
                        st.map_phase_end_ms = Some(now);
                    }
                    st.journal.append(&JournalRecord::MapCommitted {
                        map_idx,
                        attempt,
                        worker: worker.0,
                        addr,
                    })
                }
                Action::MapLost { map_idx } => {
                    st.map_phase_end_ms = None;
                    st.journal.append(&JournalRecord::MapLost { map_idx })
                }
                Action::ReduceCommitted {
                    partition,
                    attempt,
                    worker,
                } => match st.temp_outputs.remove(&(partition, attempt)) {
                    Some(temp) => st.output.commit_task(&temp, partition).and_then(|()| {
                        st.journal.append(&JournalRecord::ReduceCommitted {
                            partition,
                            attempt,
                            worker: worker.0,
                        })
                    }),
                    None => Err(MrError::Config(format!(
                        "reduce task {partition} attempt {attempt} reported no output"
                    ))),
                },
                Action::Cancel { worker, attempt } => {
                    tracing::info!(%worker, %attempt, "attempt cancelled");
                    Ok(())
                }
                Action::JobDone => {
                    st.reduce_phase_end_ms = Some(now);
                    Ok(())
                }
                Action::JobFailed { task, reason } => {
                    tracing::warn!(%task, %reason, "job failed");
                    Ok(())
                }
            };
            if let Err(e) = result {
                if st.fatal.is_none() {
                    st.fatal = Some(e.to_string());
                }
            }
        }
        self.changed.notify_waiters();
    }

    fn is_over(st: &State) -> bool {
        st.fatal.is_some() || *st.table.state() != JobState::Running
    }

    /// The job's progress, counters and failures.
    pub fn status(&self) -> JobStatus {
        let st = lock(&self.state);
        self.status_of(&st)
    }

    fn status_of(&self, st: &State) -> JobStatus {
        let c = st.table.counts();
        let (state, error) = match (&st.fatal, st.table.state()) {
            (Some(f), _) => ("failed", Some(f.clone())),
            (None, JobState::Running) => ("running", None),
            (None, JobState::Done) => ("done", None),
            (None, JobState::Failed { reason, .. }) => ("failed", Some(reason.clone())),
        };
        let now = self.now_ms();
        let map_start = st.map_phase_start_ms.unwrap_or(now);
        let map_end = st.map_phase_end_ms.unwrap_or(now);
        let reduce_end = st.reduce_phase_end_ms.unwrap_or(now);
        let largest = st
            .partition_bytes
            .iter()
            .max_by_key(|(p, b)| (**b, std::cmp::Reverse(**p)))
            .map(|(p, b)| (*p, *b));
        let smallest = st
            .partition_bytes
            .iter()
            .min_by_key(|(p, b)| (**b, **p))
            .map(|(p, b)| (*p, *b));
        JobStatus {
            job_id: st.spec.job_id.clone(),
            state: state.to_string(),
            error,
            output: st.output.dir().display().to_string(),
            elapsed_ms: now,
            table: c,
            counters: st.counters.clone(),
            map_phase_ms: map_end.saturating_sub(map_start),
            reduce_phase_ms: if st.map_phase_end_ms.is_some() {
                reduce_end.saturating_sub(map_end)
            } else {
                0
            },
            largest_partition: largest,
            smallest_partition: smallest,
            running: st
                .table
                .running_attempts()
                .iter()
                .map(|(a, w)| format!("{a} on worker {w}"))
                .collect(),
            recent_failures: st.failures.iter().cloned().collect(),
            resumed: st.resumed,
        }
    }

    /// Serves workers on `listener` until the job is over and its workers were told to exit
    /// (or [`EXIT_LINGER_MAX`] passed), then commits or cleans up the output.
    pub async fn serve(&self, listener: TcpListener) -> Result<JobReport, MrError> {
        let local = listener.local_addr()?;
        let shutdown = Arc::new(Notify::new());
        let service = proto::coordinator_server::CoordinatorServer::new(Service {
            coordinator: self.clone(),
        })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let server = {
            let shutdown = shutdown.clone();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async move { shutdown.notified().await },
                    ),
            )
        };
        tracing::info!(address = %local, job = %self.job_id(), "coordinator serving");
        let mut ticker = tokio::time::interval(TICK_INTERVAL);
        let mut over_since: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let mut st = lock(&self.state);
            let now = self.now_ms();
            st.table.tick(now);
            self.process_actions(&mut st);
            if Self::is_over(&st) {
                let since = *over_since.get_or_insert_with(Instant::now);
                let all_told = st.table.live_workers().iter().all(|w| st.told_exit.contains(w));
                if all_told || since.elapsed() >= EXIT_LINGER_MAX {
                    break;
                }
            }
        }
        shutdown.notify_one();
        let _ = server.await;
        let mut st = lock(&self.state);
        let status = self.status_of(&st);
        let result = match status.error.clone() {
            None => {
                st.output.commit_job();
                Ok(())
            }
            Some(reason) => {
                st.output.abort_job();
                Err(reason)
            }
        };
        st.told_exit.clear();
        Ok(JobReport { status, result })
    }
}

struct Service {
    coordinator: Coordinator,
}

fn attempt_of(is_map: bool, task_idx: u32, attempt: u32) -> AttemptId {
    let kind = if is_map { TaskKind::Map } else { TaskKind::Reduce };
    AttemptId {
        task: TaskId { kind, idx: task_idx },
        attempt,
    }
}

fn reregister() -> Status {
    Status::not_found("unknown worker (the coordinator restarted?); register again")
}

#[tonic::async_trait]
impl proto::coordinator_server::Coordinator for Service {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterReply>, Status> {
        let req = req.into_inner();
        let c = &self.coordinator;
        let mut st = lock(&c.state);
        let worker = WorkerId(req.worker_id);
        st.table.register_worker(c.now_ms(), worker, &req.addr);
        st.worker_addrs.insert(worker, req.addr.clone());
        tracing::info!(%worker, addr = %req.addr, "worker registered");
        Ok(Response::new(proto::RegisterReply {
            job: Some(st.spec.clone()),
            heartbeat_interval_ms: c.config.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn request_task(
        &self,
        req: Request<proto::TaskRequest>,
    ) -> Result<Response<proto::TaskReply>, Status> {
        let worker = WorkerId(req.into_inner().worker_id);
        let c = &self.coordinator;
        let mut st = lock(&c.state);
        let now = c.now_ms();
        let assignment = if st.fatal.is_some() {
            Assignment::Exit
        } else {
            st.table.request_task(now, worker).map_err(|_| reregister())?
        };
        let reply = match assignment {
            Assignment::Wait => proto::TaskReply {
                kind: proto::task_reply::Kind::Wait as i32,
                ..Default::default()
            },
            Assignment::Exit => {
                st.told_exit.insert(worker);
                proto::TaskReply {
                    kind: proto::task_reply::Kind::Exit as i32,
                    ..Default::default()
                }
            }
            Assignment::Run(attempt) => {
                tracing::info!(%worker, %attempt, "assigned");
                match attempt.task.kind {
                    TaskKind::Map => {
                        st.map_phase_start_ms.get_or_insert(now);
                        let inputs = st.splits[attempt.task.idx as usize]
                            .ranges
                            .iter()
                            .map(|r| proto::InputRange {
                                path: r.path.clone(),
                                start: r.start,
                                end: r.end,
                            })
                            .collect();
                        proto::TaskReply {
                            kind: proto::task_reply::Kind::Map as i32,
                            task_idx: attempt.task.idx,
                            attempt: attempt.attempt,
                            inputs,
                            maps: Vec::new(),
                        }
                    }
                    TaskKind::Reduce => {
                        st.map_phase_end_ms.get_or_insert(now);
                        let maps = st
                            .table
                            .map_outputs()
                            .into_iter()
                            .map(|m| proto::MapLocation {
                                map_idx: m.map_idx,
                                attempt: m.attempt,
                                addr: m.addr,
                            })
                            .collect();
                        proto::TaskReply {
                            kind: proto::task_reply::Kind::Reduce as i32,
                            task_idx: attempt.task.idx,
                            attempt: attempt.attempt,
                            inputs: Vec::new(),
                            maps,
                        }
                    }
                }
            }
        };
        c.process_actions(&mut st);
        Ok(Response::new(reply))
    }

    async fn report_task(
        &self,
        req: Request<proto::TaskReport>,
    ) -> Result<Response<proto::ReportReply>, Status> {
        let r = req.into_inner();
        let c = &self.coordinator;
        let mut st = lock(&c.state);
        let now = c.now_ms();
        let worker = WorkerId(r.worker_id);
        st.table.heartbeat(now, worker).map_err(|_| reregister())?;
        let attempt = attempt_of(r.is_map, r.task_idx, r.attempt);
        if r.ok {
            if !r.is_map {
                let temp = PathBuf::from(&r.temp_output);
                if !st.output.is_attempt_path(&temp) {
                    return Err(Status::invalid_argument(format!(
                        "reduce output {} is not in {}",
                        temp.display(),
                        st.output.temp_dir().display()
                    )));
                }
                st.temp_outputs.insert((r.task_idx, r.attempt), temp);
            }
            let report = st.table.task_succeeded(now, worker, attempt);
            if report == crate::task_table::Report::Accepted {
                let k = r.counters.unwrap_or_default();
                let counters = &mut st.counters;
                if r.is_map {
                    counters.map_records_in += k.records_in;
                    counters.map_bytes_in += k.bytes_in;
                    counters.map_records_out += k.records_out;
                    counters.map_bytes_out += k.bytes_out;
                    counters.spills += k.spills;
                } else {
                    counters.shuffle_bytes += k.shuffle_bytes;
                    counters.reduce_keys_in += k.records_in;
                    counters.reduce_records_out += k.records_out;
                    counters.reduce_bytes_out += k.bytes_out;
                    st.partition_bytes.insert(r.task_idx, k.bytes_out);
                }
            } else if !r.is_map {
                if let Some(temp) = st.temp_outputs.remove(&(r.task_idx, r.attempt)) {
                    st.output.abort_task(&temp);
                }
            }
        } else {
            let msg = format!("{attempt} on worker {worker}: {}", r.error);
            tracing::warn!(%worker, %attempt, error = %r.error, "attempt failed");
            if st.failures.len() == FAILURES_KEPT_MAX {
                st.failures.pop_front();
            }
            st.failures.push_back(msg);
            st.table.task_failed(now, worker, attempt, &r.error);
            if !r.temp_output.is_empty() && st.output.is_attempt_path(Path::new(&r.temp_output)) {
                st.output.abort_task(Path::new(&r.temp_output));
            }
        }
        c.process_actions(&mut st);
        Ok(Response::new(proto::ReportReply {}))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let c = &self.coordinator;
        let mut st = lock(&c.state);
        let now = c.now_ms();
        let worker = WorkerId(r.worker_id);
        if st.table.heartbeat(now, worker).is_err() {
            return Ok(Response::new(proto::HeartbeatReply {
                cancel: r.running,
                reregister: true,
                exit: false,
            }));
        }
        let mut cancel = false;
        if r.running {
            let attempt = attempt_of(r.is_map, r.task_idx, r.attempt);
            st.table.progress(now, worker, attempt, r.progress);
            cancel = !st.table.is_running(attempt, worker);
        }
        let exit = Coordinator::is_over(&st);
        if exit {
            st.told_exit.insert(worker);
        }
        Ok(Response::new(proto::HeartbeatReply {
            cancel: cancel || exit,
            reregister: false,
            exit,
        }))
    }

    async fn report_fetch_failure(
        &self,
        req: Request<proto::FetchFailure>,
    ) -> Result<Response<proto::ReportReply>, Status> {
        let r = req.into_inner();
        let c = &self.coordinator;
        let mut st = lock(&c.state);
        let now = c.now_ms();
        let worker = WorkerId(r.worker_id);
        st.table.heartbeat(now, worker).map_err(|_| reregister())?;
        let reduce = attempt_of(false, r.reduce_idx, r.reduce_attempt);
        tracing::warn!(%worker, %reduce, map_idx = r.map_idx, error = %r.error, "fetch failure");
        st.table
            .fetch_failed(now, worker, reduce, r.map_idx, r.map_attempt);
        c.process_actions(&mut st);
        Ok(Response::new(proto::ReportReply {}))
    }

    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let status = self.coordinator.status();
        Ok(Response::new(proto::StatusReply {
            json: serde_json::to_string(&status).expect("status serializes"),
        }))
    }
}

/// Fetches a running coordinator's status document ([`JobStatus`] as JSON).
pub async fn fetch_status(addr: &str, timeout: Duration) -> Result<serde_json::Value, MrError> {
    let unreachable = |reason: String| MrError::CoordinatorUnreachable {
        addr: addr.to_string(),
        reason,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| MrError::Config(format!("bad coordinator address {addr:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut client = proto::coordinator_client::CoordinatorClient::new(channel);
    let reply = client
        .status(proto::StatusRequest {})
        .await
        .map_err(|e| unreachable(e.message().to_string()))?;
    serde_json::from_str(&reply.into_inner().json)
        .map_err(|e| MrError::Rpc(format!("bad status document: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn journal_with_a_torn_tail_is_cut_before_new_records() {
        // Goal: after a crash mid-append, reopening the journal keeps its whole records, drops
        // the torn last line, and a record appended then is read back on a line of its own.
        let storage = MemoryStorage::new();
        let path = Path::new("/out/_temporary/journal");
        let header = JournalRecord::Header {
            job_id: "job-1".into(),
            fingerprint: "f".into(),
        };
        let mut bytes = journal_line(&header);
        bytes.extend_from_slice(b"{\"MapLost\":{\"map_i");
        storage.write_file(path, &bytes).unwrap();
        let records = read_journal(&storage, path);
        assert_eq!(records.len(), 1);
        let mut journal = Journal::open(&storage, path.to_path_buf(), &records).unwrap();
        journal.append(&JournalRecord::MapLost { map_idx: 3 }).unwrap();
        let replayed = read_journal(&storage, path);
        assert_eq!(replayed.len(), 2, "{replayed:?}");
        assert!(matches!(replayed[1], JournalRecord::MapLost { map_idx: 3 }));
        // A journal without a torn tail is appended to as it is.
        let mut journal = Journal::open(&storage, path.to_path_buf(), &replayed).unwrap();
        journal.append(&JournalRecord::MapLost { map_idx: 4 }).unwrap();
        assert_eq!(read_journal(&storage, path).len(), 3);
    }
}
