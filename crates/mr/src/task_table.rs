//! The coordinator's task table (Dean & Ghemawat, OSDI 2004, §3.1–§3.3) as a sans-IO state
//! machine: events in (a worker asks for a task, reports success, failure, progress or a fetch
//! failure; a worker is heard from; time passes), decisions out (assignments as return values,
//! [`Action`]s to drain for the shell to execute and journal).
//!
//! Time is a parameter (`now_ms`, milliseconds on any monotonic clock the caller chooses); the
//! table has no clock, no I/O and no randomness, so the same events give the same decisions.
//!
//! Rules it implements:
//! - Map tasks first; reduce tasks are assigned only while every map task is done (reducers
//!   fetch from every map task's output).
//! - An attempt with no progress for `task_timeout_ms` is failed (it counts towards
//!   `max_attempts`) and its worker is told to abandon it ([`Action::Cancel`]).
//! - A worker not heard from for `worker_timeout_ms` is lost: its running attempts are dropped
//!   without counting as failures, and its completed map tasks are re-executed while any reduce
//!   task still needs their output (§3.3 "Worker Failure").
//! - A reducer that cannot fetch a map output reports it; that map task is re-executed and the
//!   reduce attempt is dropped without counting as a failure.
//! - A failed attempt is retried, preferably on another worker, until `max_attempts` failures;
//!   then the job fails with the task's last error.
//! - A backup attempt (§3.6) is started only for a task whose single attempt has run for at
//!   least `task_timeout_ms` and at least twice the median duration of its finished peers, so a
//!   job without stragglers runs each task exactly once.
//! - The first successful attempt wins; the others are cancelled.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A worker, named by the worker itself (a random 64-bit id per worker process).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskKind {
    Map,
    Reduce,
}

/// A map task (`idx` < M) or a reduce task (`idx` = partition < R).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    pub kind: TaskKind,
    pub idx: u32,
}

impl TaskId {
    pub fn map(idx: u32) -> Self {
        Self {
            kind: TaskKind::Map,
            idx,
        }
    }
    pub fn reduce(idx: u32) -> Self {
        Self {
            kind: TaskKind::Reduce,
            idx,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TaskKind::Map => write!(f, "map task {}", self.idx),
            TaskKind::Reduce => write!(f, "reduce task {}", self.idx),
        }
    }
}

/// One execution of a task. Attempt numbers of a task are unique and increasing.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub task: TaskId,
    pub attempt: u32,
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attempt {}", self.task, self.attempt)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskTableConfig {
    pub n_map: u32,
    pub n_reduce: u32,
    /// An attempt without progress for this long is failed and re-assigned.
    pub task_timeout_ms: u64,
    /// A worker not heard from for this long is lost.
    pub worker_timeout_ms: u64,
    /// Failed attempts (errors and timeouts) after which a task fails the job.
    pub max_attempts: u32,
    /// Start backup attempts for stragglers (§3.6).
    pub speculation: bool,
}

/// What a worker asking for work is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Run this attempt. For a reduce attempt, [`TaskTable::map_outputs`] says where to fetch.
    Run(AttemptId),
    /// Nothing to do now; ask again soon.
    Wait,
    /// The job is over (done or failed); exit.
    Exit,
}

/// Decisions for the shell, drained with [`TaskTable::take_actions`] and executed in order.
/// The shell journals `MapCommitted`, `MapLost` and `ReduceCommitted` before it replies to
/// the worker whose event caused them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A map attempt's output is now the task's output, served by `worker`.
    MapCommitted {
        map_idx: u32,
        attempt: u32,
        worker: WorkerId,
    },
    /// A completed map task's output is no longer usable; the task runs again.
    MapLost { map_idx: u32 },
    /// A reduce attempt won: move its temporary output to `part-r-NNNNN`, then journal it.
    ReduceCommitted {
        partition: u32,
        attempt: u32,
        worker: WorkerId,
    },
    /// Tell `worker` to abandon `attempt` (timed out, or another attempt won).
    Cancel { worker: WorkerId, attempt: AttemptId },
    /// Every reduce task is committed.
    JobDone,
    /// A task failed `max_attempts` times.
    JobFailed { task: TaskId, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed { task: TaskId, reason: String },
}

/// The answer to an event naming an unknown worker: it must register (again) first, e.g.
/// after a coordinator restart.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("worker {0} is not registered with this coordinator")]
pub struct UnknownWorker(pub WorkerId);

/// Whether a reported result was used.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Accepted,
    /// The attempt is no longer running (cancelled, timed out, lost the race): ignored.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RunningAttempt {
    attempt: u32,
    worker: WorkerId,
    started_ms: u64,
    last_progress_ms: u64,
    /// The highest progress counter the worker reported for this attempt.
    progress: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Done {
    attempt: u32,
    worker: WorkerId,
}

#[derive(Clone, Debug, Default)]
struct Task {
    next_attempt: u32,
    running: Vec<RunningAttempt>,
    done: Option<Done>,
    n_failures: u32,
    failed_on: Vec<WorkerId>,
    last_error: Option<String>,
}

#[derive(Clone, Debug)]
struct Worker {
    addr: String,
    last_seen_ms: u64,
    alive: bool,
}

/// Counts for status displays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseCounts {
    pub total: u32,
    pub done: u32,
    pub running: u32,
    pub idle: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    pub maps: PhaseCounts,
    pub reduces: PhaseCounts,
    pub attempts_started: u64,
    pub attempts_failed: u64,
    pub attempts_lost: u64,
    pub backup_attempts: u64,
    pub map_reexecutions: u64,
    pub workers_alive: u32,
    pub workers_lost: u32,
}

/// Where reducers fetch a completed map task's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOutputLocation {
    pub map_idx: u32,
    pub attempt: u32,
    pub worker: WorkerId,
    pub addr: String,
}

pub struct TaskTable {
    config: TaskTableConfig,
    maps: Vec<Task>,
    reduces: Vec<Task>,
    workers: BTreeMap<WorkerId, Worker>,
    state: JobState,
    actions: Vec<Action>,
    finished_map_ms: Vec<u64>,
    finished_reduce_ms: Vec<u64>,
    counts: TableCounts,
}

impl TaskTable {
    pub fn new(config: TaskTableConfig) -> Self {
        assert!(config.n_reduce > 0, "a job needs at least one reduce task");
        assert!(config.max_attempts > 0, "max_attempts must be at least 1");
        let maps = vec![Task::default(); config.n_map as usize];
        let reduces = vec![Task::default(); config.n_reduce as usize];
        let mut table = Self {
            config,
            maps,
            reduces,
            workers: BTreeMap::new(),
            state: JobState::Running,
            actions: Vec::new(),
            finished_map_ms: Vec::new(),
            finished_reduce_ms: Vec::new(),
            counts: TableCounts::default(),
        };
        table.check_done();
        table
    }

    pub fn config(&self) -> &TaskTableConfig {
        &self.config
    }

    pub fn state(&self) -> &JobState {
        &self.state
    }

    /// Decisions taken since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Journal replay: a map attempt's output was committed before a restart.
    pub fn restore_map_committed(&mut self, map_idx: u32, attempt: u32, worker: WorkerId, addr: &str) {
        let task = &mut self.maps[map_idx as usize];
        task.done = Some(Done { attempt, worker });
        task.next_attempt = task.next_attempt.max(attempt + 1);
        // The worker may be gone; it is not known alive until it registers again. A reducer
        // that cannot fetch from it reports it and the map task runs again.
        self.workers.entry(worker).or_insert(Worker {
            addr: addr.to_string(),
            last_seen_ms: 0,
            alive: false,
        });
    }

    /// Journal replay: a committed map output was lost before a restart.
    pub fn restore_map_lost(&mut self, map_idx: u32) {
        self.maps[map_idx as usize].done = None;
    }

    /// Journal replay: a reduce task was committed before a restart.
    pub fn restore_reduce_committed(&mut self, partition: u32, attempt: u32, worker: WorkerId) {
        let task = &mut self.reduces[partition as usize];
        task.done = Some(Done { attempt, worker });
        task.next_attempt = task.next_attempt.max(attempt + 1);
        self.check_done();
        // Replay must not ask the shell to do anything again.
        self.actions.retain(|a| !matches!(a, Action::JobDone));
    }

    /// A worker announces itself (again). Idempotent.
    pub fn register_worker(&mut self, now_ms: u64, worker: WorkerId, addr: &str) {
        let entry = self.workers.entry(worker).or_insert(Worker {
            addr: addr.to_string(),
            last_seen_ms: now_ms,
            alive: true,
        });
        entry.addr = addr.to_string();
        entry.last_seen_ms = now_ms;
        entry.alive = true;
    }

    /// A worker was heard from (heartbeat or any request).
    pub fn heartbeat(&mut self, now_ms: u64, worker: WorkerId) -> Result<(), UnknownWorker> {
        match self.workers.get_mut(&worker) {
            Some(w) if w.alive => {
                w.last_seen_ms = now_ms;
                Ok(())
            }
            _ => Err(UnknownWorker(worker)),
        }
    }

    /// A worker reports `attempt`'s progress counter (it starts at 0 for each attempt and
    /// goes up as records are read and written). A higher value than before is progress.
    pub fn progress(&mut self, now_ms: u64, worker: WorkerId, attempt: AttemptId, counter: u64) {
        let n_tasks = match attempt.task.kind {
            TaskKind::Map => self.maps.len(),
            TaskKind::Reduce => self.reduces.len(),
        };
        if attempt.task.idx as usize >= n_tasks {
            return;
        }
        if let Some(r) = self
            .task_mut(attempt.task)
            .running
            .iter_mut()
            .find(|r| r.attempt == attempt.attempt && r.worker == worker)
        {
            if counter > r.progress {
                r.progress = counter;
                r.last_progress_ms = now_ms;
            }
        }
    }

    /// An idle worker asks for work.
    pub fn request_task(&mut self, now_ms: u64, worker: WorkerId) -> Result<Assignment, UnknownWorker> {
        self.heartbeat(now_ms, worker)?;
        if self.state != JobState::Running {
            return Ok(Assignment::Exit);
        }
        // A worker asks only when it runs nothing: whatever it was running is gone.
        self.drop_attempts_of(worker);

        if let Some(idx) = self.pick_idle(TaskKind::Map, worker) {
            return Ok(Assignment::Run(self.start_attempt(
                now_ms,
                TaskId::map(idx),
                worker,
            )));
        }
        let all_maps_done = self.maps.iter().all(|t| t.done.is_some());
        if all_maps_done {
            if let Some(idx) = self.pick_idle(TaskKind::Reduce, worker) {
                return Ok(Assignment::Run(self.start_attempt(
                    now_ms,
                    TaskId::reduce(idx),
                    worker,
                )));
            }
        }
        if self.config.speculation {
            let kind = if all_maps_done {
                TaskKind::Reduce
            } else {
                TaskKind::Map
            };
            if let Some(idx) = self.pick_straggler(now_ms, kind, worker) {
                self.counts.backup_attempts += 1;
                let task = TaskId { kind, idx };
                return Ok(Assignment::Run(self.start_attempt(now_ms, task, worker)));
            }
        }
        Ok(Assignment::Wait)
    }

    /// Where every map task's output is. Complete only while every map task is done.
    pub fn map_outputs(&self) -> Vec<MapOutputLocation> {
        self.maps
            .iter()
            .enumerate()
            .filter_map(|(idx, t)| {
                let done = t.done.as_ref()?;
                Some(MapOutputLocation {
                    map_idx: idx as u32,
                    attempt: done.attempt,
                    worker: done.worker,
                    addr: self
                        .workers
                        .get(&done.worker)
                        .map(|w| w.addr.clone())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// An attempt finished successfully. The first success of a task wins.
    pub fn task_succeeded(&mut self, now_ms: u64, worker: WorkerId, attempt: AttemptId) -> Report {
        let Some(run) = self.take_running(attempt, worker) else {
            return Report::Stale;
        };
        if self.state != JobState::Running || self.task_mut(attempt.task).done.is_some() {
            return Report::Stale;
        }
        let duration_ms = now_ms.saturating_sub(run.started_ms);
        let task = self.task_mut(attempt.task);
        task.done = Some(Done {
            attempt: attempt.attempt,
            worker,
        });
        let losers = std::mem::take(&mut task.running);
        for loser in losers {
            self.actions.push(Action::Cancel {
                worker: loser.worker,
                attempt: AttemptId {
                    task: attempt.task,
                    attempt: loser.attempt,
                },
            });
        }
        match attempt.task.kind {
            TaskKind::Map => {
                self.finished_map_ms.push(duration_ms);
                self.actions.push(Action::MapCommitted {
                    map_idx: attempt.task.idx,
                    attempt: attempt.attempt,
                    worker,
                });
            }
            TaskKind::Reduce => {
                self.finished_reduce_ms.push(duration_ms);
                self.actions.push(Action::ReduceCommitted {
                    partition: attempt.task.idx,
                    attempt: attempt.attempt,
                    worker,
                });
                self.check_done();
            }
        }
        Report::Accepted
    }

    /// An attempt failed (the user function returned an error or its command exited non-zero).
    /// Counts towards `max_attempts`.
    pub fn task_failed(
        &mut self,
        _now_ms: u64,
        worker: WorkerId,
        attempt: AttemptId,
        reason: &str,
    ) -> Report {
        if self.take_running(attempt, worker).is_none() {
            return Report::Stale;
        }
        self.record_failure(attempt.task, worker, reason.to_string());
        Report::Accepted
    }

    /// A reducer could not fetch `map_idx`'s output (attempt `map_attempt`): run that map task
    /// again. The reduce attempt is dropped without counting as a failure.
    pub fn fetch_failed(
        &mut self,
        _now_ms: u64,
        reporter: WorkerId,
        reduce_attempt: AttemptId,
        map_idx: u32,
        map_attempt: u32,
    ) -> Report {
        if self.take_running(reduce_attempt, reporter).is_some() {
            self.counts.attempts_lost += 1;
        }
        if self.state != JobState::Running {
            return Report::Stale;
        }
        let Some(map) = self.maps.get_mut(map_idx as usize) else {
            return Report::Stale;
        };
        match &map.done {
            Some(done) if done.attempt == map_attempt => {
                map.done = None;
                self.counts.map_reexecutions += 1;
                self.actions.push(Action::MapLost { map_idx });
                Report::Accepted
            }
            _ => Report::Stale,
        }
    }

    /// Time passes: detect lost workers and attempts without progress.
    pub fn tick(&mut self, now_ms: u64) {
        if self.state != JobState::Running {
            return;
        }
        let lost: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.alive && now_ms.saturating_sub(w.last_seen_ms) >= self.config.worker_timeout_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for worker in lost {
            self.worker_lost(worker);
        }

        let timeout_ms = self.config.task_timeout_ms;
        let mut timed_out = Vec::new();
        for (kind, tasks) in [(TaskKind::Map, &self.maps), (TaskKind::Reduce, &self.reduces)] {
            for (idx, task) in tasks.iter().enumerate() {
                for r in &task.running {
                    // A hang is no progress while the worker kept reporting. A worker that went
                    // silent is judged by the worker timeout instead, and its attempts are then
                    // lost, not failed (a dead worker must not use up a task's attempts).
                    let seen_ms = self
                        .workers
                        .get(&r.worker)
                        .map_or(now_ms, |w| w.last_seen_ms.min(now_ms));
                    if seen_ms.saturating_sub(r.last_progress_ms) >= timeout_ms {
                        let attempt = AttemptId {
                            task: TaskId {
                                kind,
                                idx: idx as u32,
                            },
                            attempt: r.attempt,
                        };
                        timed_out.push((r.worker, attempt));
                    }
                }
            }
        }
        for (worker, attempt) in timed_out {
            if self.state != JobState::Running {
                break;
            }
            self.take_running(attempt, worker);
            self.actions.push(Action::Cancel { worker, attempt });
            let reason = format!("{attempt} timed out: no progress for {} ms", timeout_ms);
            self.record_failure(attempt.task, worker, reason);
        }
    }

    /// A worker is known dead (e.g. its process exited): as if it had timed out.
    pub fn worker_lost(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if !w.alive {
            return;
        }
        w.alive = false;
        self.counts.workers_lost += 1;
        self.drop_attempts_of(worker);
        // §3.3: completed map tasks are re-executed because their output is on the failed
        // machine's local disk — but only while some reduce task still needs it.
        if self.state == JobState::Running && self.reduces.iter().any(|t| t.done.is_none()) {
            for (idx, task) in self.maps.iter_mut().enumerate() {
                if task.done.as_ref().is_some_and(|d| d.worker == worker) {
                    task.done = None;
                    self.counts.map_reexecutions += 1;
                    self.actions.push(Action::MapLost { map_idx: idx as u32 });
                }
            }
        }
    }

    pub fn counts(&self) -> TableCounts {
        let phase = |tasks: &[Task]| {
            let mut c = PhaseCounts {
                total: tasks.len() as u32,
                ..Default::default()
            };
            for t in tasks {
                if t.done.is_some() {
                    c.done += 1;
                } else if !t.running.is_empty() {
                    c.running += 1;
                } else {
                    c.idle += 1;
                }
            }
            c
        };
        TableCounts {
            maps: phase(&self.maps),
            reduces: phase(&self.reduces),
            workers_alive: self.workers.values().filter(|w| w.alive).count() as u32,
            ..self.counts.clone()
        }
    }

    /// Live workers, for the shell to tell them to exit when the job is over.
    pub fn live_workers(&self) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| w.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Running attempts, for status displays.
    pub fn running_attempts(&self) -> Vec<(AttemptId, WorkerId)> {
        let mut out = Vec::new();
        for (kind, tasks) in [(TaskKind::Map, &self.maps), (TaskKind::Reduce, &self.reduces)] {
            for (idx, t) in tasks.iter().enumerate() {
                for r in &t.running {
                    let attempt = AttemptId {
                        task: TaskId {
                            kind,
                            idx: idx as u32,
                        },
                        attempt: r.attempt,
                    };
                    out.push((attempt, r.worker));
                }
            }
        }
        out
    }

    /// Whether `attempt` is still running on `worker` (a worker checks before committing work).
    pub fn is_running(&self, attempt: AttemptId, worker: WorkerId) -> bool {
        self.task(attempt.task)
            .running
            .iter()
            .any(|r| r.attempt == attempt.attempt && r.worker == worker)
    }

    fn task(&self, id: TaskId) -> &Task {
        match id.kind {
            TaskKind::Map => &self.maps[id.idx as usize],
            TaskKind::Reduce => &self.reduces[id.idx as usize],
        }
    }

    fn task_mut(&mut self, id: TaskId) -> &mut Task {
        match id.kind {
            TaskKind::Map => &mut self.maps[id.idx as usize],
            TaskKind::Reduce => &mut self.reduces[id.idx as usize],
        }
    }

    fn take_running(&mut self, attempt: AttemptId, worker: WorkerId) -> Option<RunningAttempt> {
        let n_tasks = match attempt.task.kind {
            TaskKind::Map => self.maps.len(),
            TaskKind::Reduce => self.reduces.len(),
        };
        if attempt.task.idx as usize >= n_tasks {
            return None;
        }
        let task = self.task_mut(attempt.task);
        let pos = task
            .running
            .iter()
            .position(|r| r.attempt == attempt.attempt && r.worker == worker)?;
        Some(task.running.swap_remove(pos))
    }

    fn drop_attempts_of(&mut self, worker: WorkerId) {
        let mut n_lost = 0;
        for task in self.maps.iter_mut().chain(self.reduces.iter_mut()) {
            let before = task.running.len();
            task.running.retain(|r| r.worker != worker);
            n_lost += before - task.running.len();
        }
        self.counts.attempts_lost += n_lost as u64;
    }

    fn record_failure(&mut self, id: TaskId, worker: WorkerId, reason: String) {
        self.counts.attempts_failed += 1;
        let max_attempts = self.config.max_attempts;
        let task = self.task_mut(id);
        task.n_failures += 1;
        task.failed_on.push(worker);
        task.last_error = Some(reason.clone());
        if task.n_failures >= max_attempts && task.done.is_none() {
            let reason = format!(
                "{id} failed {} times (--max-attempts {max_attempts}); last error: {reason}",
                task.n_failures
            );
            let mut running: Vec<(WorkerId, AttemptId)> = Vec::new();
            for (attempt, w) in self.running_attempts() {
                running.push((w, attempt));
            }
            for (worker, attempt) in running {
                self.actions.push(Action::Cancel { worker, attempt });
            }
            for t in self.maps.iter_mut().chain(self.reduces.iter_mut()) {
                t.running.clear();
            }
            self.state = JobState::Failed {
                task: id,
                reason: reason.clone(),
            };
            self.actions.push(Action::JobFailed { task: id, reason });
        }
    }

    fn start_attempt(&mut self, now_ms: u64, id: TaskId, worker: WorkerId) -> AttemptId {
        self.counts.attempts_started += 1;
        let task = self.task_mut(id);
        let attempt = task.next_attempt;
        task.next_attempt += 1;
        task.running.push(RunningAttempt {
            attempt,
            worker,
            started_ms: now_ms,
            last_progress_ms: now_ms,
            progress: 0,
        });
        AttemptId { task: id, attempt }
    }

    /// The lowest idle task, avoiding tasks that already failed on this worker while another
    /// live worker has not tried them ("retried on another worker").
    fn pick_idle(&self, kind: TaskKind, worker: WorkerId) -> Option<u32> {
        let tasks = match kind {
            TaskKind::Map => &self.maps,
            TaskKind::Reduce => &self.reduces,
        };
        let mut fallback = None;
        for (idx, t) in tasks.iter().enumerate() {
            if t.done.is_some() || !t.running.is_empty() {
                continue;
            }
            if !t.failed_on.contains(&worker) {
                return Some(idx as u32);
            }
            let someone_else = self
                .workers
                .iter()
                .any(|(id, w)| w.alive && *id != worker && !t.failed_on.contains(id));
            if !someone_else && fallback.is_none() {
                fallback = Some(idx as u32);
            }
        }
        fallback
    }

    fn pick_straggler(&self, now_ms: u64, kind: TaskKind, worker: WorkerId) -> Option<u32> {
        let (tasks, finished) = match kind {
            TaskKind::Map => (&self.maps, &self.finished_map_ms),
            TaskKind::Reduce => (&self.reduces, &self.finished_reduce_ms),
        };
        let median_ms = median(finished)?;
        let threshold_ms = self.config.task_timeout_ms.max(2 * median_ms);
        tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.done.is_none() && t.running.len() == 1 && t.running[0].worker != worker)
            .map(|(idx, t)| (idx, now_ms.saturating_sub(t.running[0].started_ms)))
            .filter(|(_, elapsed_ms)| *elapsed_ms >= threshold_ms)
            .max_by_key(|(_, elapsed_ms)| *elapsed_ms)
            .map(|(idx, _)| idx as u32)
    }

    fn check_done(&mut self) {
        if self.state == JobState::Running && self.reduces.iter().all(|t| t.done.is_some()) {
            self.state = JobState::Done;
            self.actions.push(Action::JobDone);
        }
    }
}

fn median(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    Some(sorted[sorted.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: WorkerId = WorkerId(1);
    const W2: WorkerId = WorkerId(2);

    fn table(n_map: u32, n_reduce: u32) -> TaskTable {
        let mut t = TaskTable::new(TaskTableConfig {
            n_map,
            n_reduce,
            task_timeout_ms: 10_000,
            worker_timeout_ms: 5_000,
            max_attempts: 3,
            speculation: true,
        });
        t.register_worker(0, W1, "w1:1");
        t.register_worker(0, W2, "w2:1");
        t
    }

    fn run(t: &mut TaskTable, now: u64, w: WorkerId) -> AttemptId {
        match t.request_task(now, w).unwrap() {
            Assignment::Run(a) => a,
            other => panic!("expected an attempt, got {other:?}"),
        }
    }

    fn att(task: TaskId, attempt: u32) -> AttemptId {
        AttemptId { task, attempt }
    }

    #[test]
    fn maps_then_reduces_then_exit() {
        // Goal: maps are handed out first, reduces only when all maps are done, Exit at the end,
        // and each task runs exactly once without failures.
        let mut t = table(2, 1);
        assert_eq!(run(&mut t, 0, W1), att(TaskId::map(0), 0));
        assert_eq!(run(&mut t, 0, W2), att(TaskId::map(1), 0));
        assert_eq!(t.task_succeeded(5, W1, att(TaskId::map(0), 0)), Report::Accepted);
        // Map 1 still runs: no reduce yet, and no backup before the task timeout.
        assert_eq!(t.request_task(6, W1).unwrap(), Assignment::Wait);
        assert_eq!(t.task_succeeded(7, W2, att(TaskId::map(1), 0)), Report::Accepted);
        assert_eq!(
            t.take_actions(),
            vec![
                Action::MapCommitted {
                    map_idx: 0,
                    attempt: 0,
                    worker: W1
                },
                Action::MapCommitted {
                    map_idx: 1,
                    attempt: 0,
                    worker: W2
                },
            ]
        );
        assert_eq!(run(&mut t, 8, W1), att(TaskId::reduce(0), 0));
        assert_eq!(t.map_outputs().len(), 2);
        assert_eq!(t.map_outputs()[1].addr, "w2:1");
        assert_eq!(
            t.task_succeeded(9, W1, att(TaskId::reduce(0), 0)),
            Report::Accepted
        );
        assert_eq!(
            t.take_actions(),
            vec![
                Action::ReduceCommitted {
                    partition: 0,
                    attempt: 0,
                    worker: W1
                },
                Action::JobDone
            ]
        );
        assert_eq!(t.request_task(10, W2).unwrap(), Assignment::Exit);
        assert_eq!(t.counts().attempts_started, 3);
    }

    #[test]
    fn timeout_fails_attempt_and_reassigns() {
        // Goal: an attempt without progress for the task timeout is cancelled, counts as a
        // failure, and the task goes to another worker; progress postpones the timeout.
        let mut t = table(1, 1);
        let a = run(&mut t, 0, W1);
        t.progress(9_000, W1, a, 1);
        t.heartbeat(9_000, W1).unwrap();
        t.heartbeat(9_000, W2).unwrap();
        t.tick(12_000);
        assert!(t.take_actions().is_empty());
        t.heartbeat(19_000, W1).unwrap();
        t.heartbeat(19_000, W2).unwrap();
        t.tick(19_000);
        assert_eq!(
            t.take_actions(),
            vec![Action::Cancel {
                worker: W1,
                attempt: a
            }]
        );
        // W1 failed it, W2 has not tried: W1 gets nothing, W2 gets attempt 1.
        assert_eq!(t.request_task(19_001, W1).unwrap(), Assignment::Wait);
        assert_eq!(run(&mut t, 19_002, W2), att(TaskId::map(0), 1));
        // The late success of the timed-out attempt is ignored.
        assert_eq!(t.task_succeeded(19_003, W1, a), Report::Stale);
        assert_eq!(t.counts().attempts_failed, 1);
    }

    #[test]
    fn progress_is_judged_per_attempt() {
        // Goal: a worker's progress counter restarts at 0 with each attempt; a new attempt's
        // rising counter is progress even while it is below the previous attempt's final value,
        // and a counter that stops rising is no progress (the attempt times out).
        let mut t = table(2, 1);
        let first = run(&mut t, 0, W1);
        t.progress(100, W1, first, 50_000);
        t.task_succeeded(200, W1, first);
        let second = run(&mut t, 300, W1);
        for now in [5_000, 9_000, 13_000] {
            t.heartbeat(now, W1).unwrap();
            t.heartbeat(now, W2).unwrap();
            t.progress(now, W1, second, now);
            t.tick(now);
        }
        assert_eq!(t.counts().attempts_failed, 0, "a rising counter was not progress");
        t.heartbeat(23_000, W1).unwrap();
        t.heartbeat(23_000, W2).unwrap();
        t.progress(23_000, W1, second, 13_000);
        t.tick(23_000);
        assert_eq!(
            t.counts().attempts_failed,
            1,
            "a counter that stopped rising was progress"
        );
    }

    #[test]
    fn silent_worker_loses_its_attempt_without_a_failure() {
        // Goal: when the task timeout is shorter than the worker timeout, an attempt whose worker
        // went silent (died) is not failed at the task timeout; the worker is lost at the worker
        // timeout and the attempt does not count against max_attempts.
        let mut t = TaskTable::new(TaskTableConfig {
            n_map: 1,
            n_reduce: 1,
            task_timeout_ms: 3_000,
            worker_timeout_ms: 5_000,
            max_attempts: 1,
            speculation: false,
        });
        t.register_worker(0, W1, "w1:1");
        t.register_worker(0, W2, "w2:1");
        let a = run(&mut t, 0, W1);
        t.heartbeat(1_000, W1).unwrap(); // W1 dies after this heartbeat
        for now in [2_000, 4_000, 5_500] {
            t.heartbeat(now, W2).unwrap();
            t.tick(now);
        }
        assert!(
            t.take_actions().is_empty(),
            "no failure before the worker timeout"
        );
        t.heartbeat(6_000, W2).unwrap();
        t.tick(6_000);
        assert_eq!(t.counts().attempts_failed, 0);
        assert_eq!(t.counts().attempts_lost, 1);
        assert_eq!(*t.state(), JobState::Running);
        assert_eq!(run(&mut t, 6_001, W2), att(a.task, 1));
    }

    #[test]
    fn max_attempts_fails_job_with_reason() {
        // Goal: the job fails after max_attempts failures of one task, with that task's error,
        // and every worker is then told to exit.
        let mut t = table(1, 1);
        for i in 0..3 {
            let w = if i % 2 == 0 { W1 } else { W2 };
            let a = run(&mut t, i, w);
            assert_eq!(a, att(TaskId::map(0), i as u32));
            t.task_failed(i, w, a, "exit status 3: boom");
        }
        match t.state() {
            JobState::Failed { task, reason } => {
                assert_eq!(*task, TaskId::map(0));
                assert!(reason.contains("boom") && reason.contains("3 times"), "{reason}");
            }
            other => panic!("job should have failed, is {other:?}"),
        }
        assert!(matches!(t.take_actions().last(), Some(Action::JobFailed { .. })));
        assert_eq!(t.request_task(10, W1).unwrap(), Assignment::Exit);
    }

    #[test]
    fn lost_worker_reexecutes_completed_maps_without_counting_failures() {
        // Goal (§3.3): a worker that stops heartbeating loses its running attempts (not counted as
        // failures) and its completed map tasks run again while a reduce task needs them.
        let mut t = table(2, 1);
        let m0 = run(&mut t, 0, W1);
        let m1 = run(&mut t, 0, W2);
        t.task_succeeded(1, W1, m0);
        t.task_succeeded(1, W2, m1);
        let r0 = run(&mut t, 2, W2);
        assert_eq!(r0.task, TaskId::reduce(0));
        t.take_actions();
        t.heartbeat(4_000, W2).unwrap();
        t.tick(6_000); // W1 silent since 0 ms > 5 s worker timeout.
        assert_eq!(t.take_actions(), vec![Action::MapLost { map_idx: 0 }]);
        assert_eq!(t.counts().attempts_failed, 0);
        // The reducer's fetch from W1 fails too; that is reported, and not counted.
        assert_eq!(t.fetch_failed(6_001, W2, r0, 0, 0), Report::Stale);
        assert_eq!(run(&mut t, 6_002, W2), att(TaskId::map(0), 1));
        assert_eq!(t.heartbeat(6_003, W1), Err(UnknownWorker(W1)));
        assert_eq!(t.counts().attempts_failed, 0);
    }

    #[test]
    fn fetch_failure_reexecutes_that_map_task() {
        // Goal: a reducer's fetch failure makes exactly the reported map output run again, and the
        // reduce task is retried after it without counting as a failure.
        let mut t = table(2, 1);
        let m0 = run(&mut t, 0, W1);
        let m1 = run(&mut t, 0, W2);
        t.task_succeeded(1, W1, m0);
        t.task_succeeded(1, W2, m1);
        let r0 = run(&mut t, 2, W2);
        t.take_actions();
        assert_eq!(t.fetch_failed(3, W2, r0, 0, 0), Report::Accepted);
        assert_eq!(t.take_actions(), vec![Action::MapLost { map_idx: 0 }]);
        // A second report for the same lost output changes nothing.
        assert_eq!(t.fetch_failed(3, W2, r0, 0, 0), Report::Stale);
        let m0b = run(&mut t, 4, W2);
        assert_eq!(m0b, att(TaskId::map(0), 1));
        assert_eq!(t.request_task(4, W1).unwrap(), Assignment::Wait);
        t.task_succeeded(5, W2, m0b);
        assert_eq!(run(&mut t, 6, W1), att(TaskId::reduce(0), 1));
        assert_eq!(t.counts().attempts_failed, 0);
    }

    #[test]
    fn backup_only_for_real_stragglers() {
        // Goal (§3.6): no backup before the task timeout and 2× the median of finished peers;
        // then one backup, and the first success wins while the other attempt is cancelled.
        let mut t = table(3, 1);
        let w3 = WorkerId(3);
        t.register_worker(0, w3, "w3:1");
        let a = run(&mut t, 0, W1);
        let c = run(&mut t, 0, W2);
        let b = run(&mut t, 0, w3);
        assert_eq!(c.task, TaskId::map(1));
        t.task_succeeded(1_000, W1, a);
        t.task_succeeded(2_000, w3, b);
        t.take_actions();
        for now in [5_000, 9_999] {
            t.progress(now, W2, c, now);
            assert_eq!(t.request_task(now, W1).unwrap(), Assignment::Wait);
        }
        t.progress(10_000, W2, c, 10_000);
        let backup = run(&mut t, 10_000, W1);
        assert_eq!(backup, att(c.task, c.attempt + 1));
        assert_eq!(t.task_succeeded(10_500, W1, backup), Report::Accepted);
        let actions = t.take_actions();
        assert!(
            actions.contains(&Action::Cancel {
                worker: W2,
                attempt: c
            }),
            "{actions:?}"
        );
        assert_eq!(t.task_succeeded(10_600, W2, c), Report::Stale);
        assert_eq!(t.counts().backup_attempts, 1);
    }

    #[test]
    fn backup_waits_for_twice_the_median_of_finished_peers() {
        // Goal (§3.6): when peers take longer than the task timeout, a running attempt gets no
        // backup until it has run twice their median, though it is long past the timeout; a
        // task with no finished peer never gets one.
        let mut t = TaskTable::new(TaskTableConfig {
            n_map: 3,
            n_reduce: 1,
            task_timeout_ms: 1_000,
            worker_timeout_ms: 60_000,
            max_attempts: 3,
            speculation: true,
        });
        let (w3, idle) = (WorkerId(3), WorkerId(4));
        for w in [W1, W2, w3, idle] {
            t.register_worker(0, w, "w:1");
        }
        let a = run(&mut t, 0, W1);
        let b = run(&mut t, 0, W2);
        let c = run(&mut t, 0, w3);
        // No finished peer yet: no backup, whatever the time.
        t.progress(7_000, w3, c, 7_000);
        assert_eq!(t.request_task(7_000, idle).unwrap(), Assignment::Wait);
        t.task_succeeded(8_000, W1, a);
        t.task_succeeded(8_000, W2, b);
        // Median of finished peers: 8 s. The straggler has run 10 s and 15.9 s: no backup.
        for now in [10_000, 15_999] {
            t.progress(now, w3, c, now);
            assert_eq!(
                t.request_task(now, idle).unwrap(),
                Assignment::Wait,
                "at {now} ms"
            );
        }
        t.progress(16_000, w3, c, 16_000);
        assert_eq!(run(&mut t, 16_000, idle), att(c.task, c.attempt + 1));
        assert_eq!(t.counts().backup_attempts, 1);
    }

    #[test]
    fn failed_task_prefers_another_worker_but_runs_alone() {
        // Goal: a failed task is retried on a worker that has not failed it; with one worker left
        // it still runs there.
        let mut t = table(1, 1);
        let a = run(&mut t, 0, W1);
        t.task_failed(1, W1, a, "boom");
        assert_eq!(t.request_task(2, W1).unwrap(), Assignment::Wait);
        t.worker_lost(W2);
        assert_eq!(run(&mut t, 3, W1), att(TaskId::map(0), 1));
    }

    #[test]
    fn journal_replay_resumes() {
        // Goal: a restarted table given the journal's records hands out only the missing work.
        let mut t = table(2, 2);
        t.restore_map_committed(0, 0, WorkerId(9), "old:1");
        t.restore_map_committed(1, 2, WorkerId(9), "old:1");
        t.restore_reduce_committed(1, 0, WorkerId(9));
        assert!(t.take_actions().is_empty());
        assert_eq!(run(&mut t, 0, W1), att(TaskId::reduce(0), 0));
        assert_eq!(t.map_outputs()[1].attempt, 2);
        assert_eq!(t.map_outputs()[1].addr, "old:1");
    }

    #[test]
    fn unknown_worker_must_register() {
        // Goal: events from a worker the table does not know are refused so it registers again.
        let mut t = table(1, 1);
        assert_eq!(t.request_task(0, WorkerId(77)), Err(UnknownWorker(WorkerId(77))));
    }
}
