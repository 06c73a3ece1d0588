//! Shoal MapReduce (Dean & Ghemawat, OSDI 2004; MIT 6.824 lab 1), built to be used.
//!
//! Layout:
//! - [`task_table`]: the coordinator's decisions as a sans-IO state machine (events and time in,
//!   assignments and [`task_table::Action`]s out). No clock, no I/O.
//! - [`coordinator`]: the tokio/tonic shell that feeds the table, journals its decisions,
//!   commits reduce output by rename, and serves `shoal mr status`.
//! - [`worker`]: asks for tasks, runs them, heartbeats, serves its map outputs to reducers;
//!   [`work_dir`]: its local folder, locked while it lives, swept by the next worker after a
//!   SIGKILL.
//! - [`job`] (running one attempt), [`shuffle`] (map-side sort/spill into one data file plus
//!   index; reduce-side bounded-memory merge), [`merge`] (k-way merge, grouping by key),
//!   [`record`] (intermediate record format).
//! - [`api`] (the `Mapper`/`Reducer`/`Combiner`/`Partitioner` traits), [`apps`] (built-ins),
//!   [`input`] (globs, splits, a split's lines), [`corpus`] (the deterministic test corpus).
//! - The two seams to the rest of Shoal: [`storage::Storage`] (where inputs and outputs live;
//!   [`output`] keeps the output folder's commit protocol over it) and [`WorkerLauncher`]
//!   (where workers run).
//!
//! The contract between the table and its shell:
//! 1. Every event is fed with the current monotonic time; `tick` is called periodically.
//! 2. After each event the shell drains `take_actions()` and executes them in order: it
//!    journals `MapCommitted`/`MapLost`/`ReduceCommitted` (renaming the reduce output first)
//!    before replying to the worker whose event caused them.
//! 3. On restart the shell replays the journal into a fresh table (`restore_*`) before it
//!    serves anyone; replay emits no actions.
//!
//! **Architecture invariant:** the task table knows nothing of files, sockets or time sources;
//! user functions know nothing of the network (they see records, not tasks).

pub mod api;
pub mod apps;
pub mod coordinator;
pub mod corpus;
mod error;
pub mod input;
pub mod job;
pub mod merge;
pub mod output;
pub mod record;
pub mod shuffle;
pub mod storage;
pub mod task_table;
pub mod work_dir;
pub mod worker;

pub mod proto {
    tonic::include_proto!("shoal.mr.v1");
}

pub use api::{
    BoxError, Codec, Combiner, Emit, EmitTyped, HashPartitioner, Mapper, Partitioner, RangePartitioner,
    Reducer, Values,
};
pub use coordinator::{AppChoice, Coordinator, CoordinatorConfig, JobConfig, JobReport, JobStatus};
pub use error::MrError;
pub use job::Job;
pub use storage::{LocalStorage, MemoryStorage, Storage};
pub use worker::{run_worker, WorkerConfig, WorkerSummary};

/// Default map-side sort buffer per task. Cost: this much memory per running map task.
pub const MAP_BUFFER_BYTES_DEFAULT: u64 = 64 << 20;
/// Default reduce-side in-memory shuffle budget per task. Cost: this much memory per running
/// reduce task, plus one read buffer per on-disk run during the final merge.
pub const REDUCE_BUFFER_BYTES_DEFAULT: u64 = 128 << 20;
/// Default split size (`--split-size`).
pub const SPLIT_SIZE_BYTES_DEFAULT: u64 = 128 << 20;

/// Starts the workers of a job run by [`run_with`]. The seam where the scheduler will launch
/// workers on the cluster's machines; [`InProcessLauncher`] runs them as tasks of this process.
pub trait WorkerLauncher {
    /// Starts `n_workers` workers configured like `worker` (the coordinator's address and
    /// storage are set).
    fn launch(
        &self,
        worker: &WorkerConfig,
        n_workers: usize,
        job: Option<Job>,
    ) -> Vec<tokio::task::JoinHandle<Result<WorkerSummary, MrError>>>;
}

/// Workers as tokio tasks of this process, talking gRPC to the coordinator like remote ones.
pub struct InProcessLauncher;

impl WorkerLauncher for InProcessLauncher {
    fn launch(
        &self,
        worker: &WorkerConfig,
        n_workers: usize,
        job: Option<Job>,
    ) -> Vec<tokio::task::JoinHandle<Result<WorkerSummary, MrError>>> {
        (0..n_workers.max(1))
            .map(|_| tokio::spawn(run_worker(worker.clone(), job.clone())))
            .collect()
    }
}

/// Runs a whole job in this process: the coordinator on a loopback port and `n_workers`
/// workers talking to it over gRPC exactly as remote ones would. `job` overrides the
/// coordinator's functions (a Rust job); `None` runs the app or commands it names.
pub async fn run_local(
    coordinator: Coordinator,
    n_workers: usize,
    job: Option<Job>,
) -> Result<JobReport, MrError> {
    run_with(coordinator, &InProcessLauncher, n_workers, job).await
}

/// Serves `coordinator` on a loopback port and has `launcher` start the workers, on the
/// coordinator's storage.
pub async fn run_with(
    coordinator: Coordinator,
    launcher: &dyn WorkerLauncher,
    n_workers: usize,
    job: Option<Job>,
) -> Result<JobReport, MrError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let serve = {
        let c = coordinator.clone();
        tokio::spawn(async move { c.serve(listener).await })
    };
    let worker = WorkerConfig::new(&addr).with_storage(coordinator.storage());
    let workers = launcher.launch(&worker, n_workers, job);
    let report = serve
        .await
        .map_err(|e| MrError::Rpc(format!("coordinator task: {e}")))??;
    for w in workers {
        match w.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "worker ended with an error"),
            Err(e) => tracing::warn!(error = %e, "worker task failed"),
        }
    }
    Ok(report)
}
