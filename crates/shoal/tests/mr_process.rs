//! MapReduce against real processes, modelled on MIT 6.824's `test-mr.sh`: a `shoal mr
//! coordinator` and several `shoal mr worker` processes (started before the coordinator, so
//! they must wait for it), outputs compared with a sequential reference computed here.
//!
//! Faults: workers killed with SIGKILL at random, user functions that fail or hang past the
//! task timeout. Waits poll for an event with a deadline; the sleeps that remain are the
//! user functions' own work (to make tasks overlap) and the killer's pace.
//!
//! The random choices (which worker to kill, when) come from `SHOAL_TEST_SEED` (else the
//! clock; printed). Real processes make interleavings differ between runs.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shoal_mr::apps::for_each_word;
use shoal_mr::corpus::{SplitMix64, TextGenerator};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
/// Longest wait for a job. Generous: tests share two cores with other builds.
const WAIT_MAX: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n_files` files of `bytes_each` generated text under `dir/in`.
fn corpus(dir: &Path, n_files: usize, bytes_each: u64, seed: u64) -> Vec<PathBuf> {
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    (0..n_files)
        .map(|i| {
            let p = input.join(format!("text-{i}.txt"));
            let mut f = std::io::BufWriter::new(fs::File::create(&p).unwrap());
            TextGenerator::new(seed + i as u64)
                .write(&mut f, bytes_each)
                .unwrap();
            p
        })
        .collect()
}

fn reference_wordcount(files: &[PathBuf]) -> Vec<String> {
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for f in files {
        for_each_word(&fs::read(f).unwrap(), |w| {
            *counts.entry(w.to_vec()).or_default() += 1
        });
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|(w, c)| format!("{}\t{c}", String::from_utf8(w).unwrap()))
        .collect();
    lines.sort();
    lines
}

fn reference_indexer(files: &[PathBuf]) -> Vec<String> {
    let mut docs: BTreeMap<Vec<u8>, std::collections::BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let name = f.display().to_string();
        for_each_word(&fs::read(f).unwrap(), |w| {
            docs.entry(w.to_vec()).or_default().insert(name.clone());
        });
    }
    let mut lines: Vec<String> = docs
        .into_iter()
        .map(|(w, d)| {
            let list: Vec<String> = d.into_iter().collect();
            format!(
                "{}\t{}\t{}",
                String::from_utf8(w).unwrap(),
                list.len(),
                list.join(",")
            )
        })
        .collect();
    lines.sort();
    lines
}

/// All lines of `dir/part-r-*`, sorted.
fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for p in part_files(dir) {
        lines.extend(fs::read_to_string(p).unwrap().lines().map(str::to_string));
    }
    lines.sort();
    lines
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-r-"))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(SHOAL)
        .args(args)
        .env("SHOAL_LOG", "info")
        .stdout(fs::File::create(log.with_extension("out")).unwrap())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_until(child: &mut Child, deadline: Instant) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit in time", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|x| x.to_string()).collect()
}

/// A streaming mapper writing `word<TAB>1` per word (words as `tr -cs A-Za-z` cuts them).
const WORD_MAPPER: &str = "tr -cs A-Za-z '\\n' | grep . | sed 's/$/\\t1/'";
/// A streaming reducer summing each key's values.
const SUM_REDUCER: &str = "awk -F'\\t' '{c[$1]+=$2} END {for (k in c) print k \"\\t\" c[k]}'";

/// A job's command line as a test states it: only what differs from the defaults (input
/// `DIR/in/*.txt`, output `DIR/out`, and `shoal mr`'s own defaults for everything else).
#[derive(Clone, Debug)]
struct Job {
    input: Option<String>,
    output: PathBuf,
    flags: Vec<String>,
}

impl Job {
    fn new(dir: &Path) -> Self {
        Self {
            input: Some(format!("{}/in/*.txt", dir.display())),
            output: dir.join("out"),
            flags: Vec::new(),
        }
    }

    fn app(self, name: &str) -> Self {
        self.flag("--app", name)
    }

    /// Streaming mapper and reducer commands.
    fn streaming(self, mapper: &str, reducer: &str) -> Self {
        self.flag("--mapper", mapper).flag("--reducer", reducer)
    }

    fn reducers(self, n: u32) -> Self {
        self.flag("--reducers", &n.to_string())
    }

    /// The summary as JSON on stdout.
    fn json(self) -> Self {
        self.flag("-o", "json")
    }

    fn flag(mut self, name: &str, value: &str) -> Self {
        self.flags.extend([name.to_string(), value.to_string()]);
        self
    }

    fn switch(mut self, name: &str) -> Self {
        self.flags.push(name.to_string());
        self
    }

    fn input(mut self, input: &str) -> Self {
        self.input = Some(input.to_string());
        self
    }

    fn without_input(mut self) -> Self {
        self.input = None;
        self
    }

    fn output(mut self, output: &Path) -> Self {
        self.output = output.to_path_buf();
        self
    }

    fn out(&self) -> &Path {
        &self.output
    }

    /// `shoal mr coordinator --listen ADDR --output OUT FLAGS… INPUT`.
    fn coordinator_args(&self, addr: &str) -> Vec<String> {
        let mut args = s(&["mr", "coordinator", "--listen", addr]);
        args.extend(s(&["--output", self.output.to_str().unwrap()]));
        args.extend(self.flags.iter().cloned());
        args.extend(self.input.iter().cloned());
        args
    }

    /// `shoal mr run --input INPUT --output OUT FLAGS…`.
    fn run_args(&self) -> Vec<String> {
        let mut args = s(&["mr", "run"]);
        if let Some(input) = &self.input {
            args.extend(s(&["--input", input]));
        }
        args.extend(s(&["--output", self.output.to_str().unwrap()]));
        args.extend(self.flags.iter().cloned());
        args
    }

    /// Runs `shoal mr run` to completion: (exit code, stdout, stderr).
    fn run(&self) -> (i32, String, String) {
        let args = self.run_args();
        shoal(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs `shoal mr run … -o json`, which must succeed; returns its summary.
    fn run_summary(&self) -> serde_json::Value {
        let (code, stdout, err) = self.clone().json().run();
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&stdout).unwrap()
    }
}

struct Cluster {
    dir: PathBuf,
    addr: String,
    job: Job,
    coordinator: Child,
    workers: Vec<Child>,
    n_spawned: usize,
}

impl Cluster {
    /// Workers first (they must wait for the coordinator), then the coordinator, in `dir`.
    fn start(dir: &Path, job: &Job, n_workers: usize) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            addr: addr.clone(),
            job: job.clone(),
            coordinator: Command::new("true").spawn().unwrap(),
            workers: Vec::new(),
            n_spawned: 0,
        };
        for _ in 0..n_workers {
            c.add_worker();
        }
        c.coordinator = spawn(&job.coordinator_args(&addr), &dir.join("coordinator.log"));
        c
    }

    /// The coordinator again, with the same command line (after it was killed).
    fn restart_coordinator(&mut self) {
        let args = self.job.coordinator_args(&self.addr);
        self.coordinator = spawn(&args, &self.dir.join("coordinator.log"));
    }

    /// A worker working under `DIR/work` (so that killed ones do not litter the system temp
    /// folder).
    fn add_worker(&mut self) {
        let work = self.dir.join("work");
        let args = s(&[
            "mr",
            "worker",
            "--coordinator",
            &self.addr,
            "--work-dir",
            work.to_str().unwrap(),
        ]);
        let log = self.dir.join(format!("worker-{}.log", self.n_spawned));
        self.n_spawned += 1;
        self.workers.push(spawn(&args, &log));
    }

    /// Waits for the coordinator and then every worker; returns the coordinator's status.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT_MAX;
        let status = wait_until(&mut self.coordinator, deadline);
        for w in &mut self.workers {
            wait_until(w, deadline);
        }
        let log = fs::read_to_string(self.dir.join("coordinator.log")).unwrap_or_default();
        (status, log)
    }

    /// Like [`Cluster::finish`], for a job that must succeed.
    fn finish_ok(self) {
        let dir = self.dir.clone();
        let (status, _) = self.finish();
        assert!(status.success(), "{}", dump_logs_on_failure(&dir));
    }
}

/// Runs `job` on a coordinator and `n_workers` worker processes in `dir`; it must succeed.
fn run_cluster(dir: &Path, job: &Job, n_workers: usize) {
    Cluster::start(dir, job, n_workers).finish_ok();
}

/// The summary a cluster's coordinator printed (a job run with `-o json`).
fn coordinator_summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("coordinator.out")).unwrap()).unwrap()
}

/// The worker folders (`shoal-mr-worker-*`) under a `--work-dir` root, sorted.
fn worker_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("shoal-mr-worker-")
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// A process killed (SIGKILL) when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `lines_max` lines of every process log in `dir` (`usize::MAX`: whole logs).
fn logs(dir: &Path, lines_max: usize) -> String {
    let mut out = String::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(lines_max)..];
            out += &format!("--- {}\n{}\n", p.display(), tail.join("\n"));
        }
    }
    out
}

fn dump_logs_on_failure(dir: &Path) -> String {
    logs(dir, 15)
}

#[test]
fn mr_wordcount_equals_sequential_reference() {
    // Goal (test-mr.sh "wc"): wordcount over three worker processes equals a sequential count,
    // and the workers leave no work folder behind.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 6, 300_000, 1);
    let job = Job::new(tmp.path()).app("wordcount").reducers(3);
    run_cluster(tmp.path(), &job, 3);
    assert_eq!(worker_dirs(&tmp.path().join("work")), Vec::<PathBuf>::new());
    let out = job.out();
    assert_eq!(part_files(out).len(), 3);
    assert!(out.join("_SUCCESS").exists());
    assert!(!out.join("_temporary").exists());
    assert_eq!(output_lines(out), reference_wordcount(&files));
}

#[test]
fn mr_indexer_equals_sequential_reference() {
    // Goal (test-mr.sh "indexer"): the inverted index over two workers equals a sequential one.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 4, 100_000, 7);
    let job = Job::new(tmp.path()).app("indexer").reducers(2);
    run_cluster(tmp.path(), &job, 2);
    assert_eq!(output_lines(job.out()), reference_indexer(&files));
}

/// Intervals `(worker pid, start ns, end ns)` appended by a streaming function.
fn intervals(path: &Path) -> Vec<(u32, u128, u128)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

fn overlapping_workers(iv: &[(u32, u128, u128)]) -> bool {
    iv.iter()
        .any(|a| iv.iter().any(|b| a.0 != b.0 && a.1 < b.2 && b.1 < a.2))
}

/// A shell snippet that records `worker-pid start end` around `body` into `file`.
fn timed(file: &Path, body: &str) -> String {
    format!(
        "s=$(date +%s%N); {body}; sleep 0.5; e=$(date +%s%N); echo \"$PPID $s $e\" >> {}",
        file.display()
    )
}

#[test]
fn mr_map_parallelism() {
    // Goal (test-mr.sh "map parallelism"): map tasks of two workers run at the same time.
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path(), 4, 1000, 3);
    let times = tmp.path().join("map-times");
    let mapper = format!("{}; printf 'k\\t1\\n'", timed(&times, "cat > /dev/null"));
    let job = Job::new(tmp.path()).streaming(&mapper, "cat").reducers(1);
    run_cluster(tmp.path(), &job, 2);
    let iv = intervals(&times);
    assert_eq!(iv.len(), 4);
    assert!(
        overlapping_workers(&iv),
        "no two workers mapped at the same time: {iv:?}"
    );
}

#[test]
fn mr_reduce_parallelism() {
    // Goal (test-mr.sh "reduce parallelism"): reduce tasks of two workers run at the same time.
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path(), 2, 5000, 4);
    let times = tmp.path().join("reduce-times");
    let reducer = timed(&times, "cat");
    let job = Job::new(tmp.path()).streaming(WORD_MAPPER, &reducer).reducers(4);
    run_cluster(tmp.path(), &job, 2);
    let iv = intervals(&times);
    assert_eq!(iv.len(), 4);
    assert!(
        overlapping_workers(&iv),
        "no two workers reduced at the same time: {iv:?}"
    );
}

#[test]
fn mr_job_count_each_map_task_runs_once() {
    // Goal (test-mr.sh "job count"): without failures each map task runs exactly once.
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path(), 8, 2000, 5);
    let count = tmp.path().join("count");
    let mapper = format!(
        "cat > /dev/null; echo run >> {}; printf 'k\\t1\\n'",
        count.display()
    );
    let job = Job::new(tmp.path()).streaming(&mapper, "cat").reducers(2).json();
    run_cluster(tmp.path(), &job, 3);
    assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 8);
    let summary = coordinator_summary(tmp.path());
    assert_eq!(summary["attempts_started"], 8 + 2, "{summary}");
    assert_eq!(summary["attempts_failed"], 0);
    assert_eq!(summary["backup_attempts"], 0, "{summary}");
}

/// A streaming mapper that counts words, writing its `word<TAB>1` lines one by one with
/// `pause` between them: slow, but always progressing (each line is output).
fn slow_word_mapper(pause: &str) -> String {
    format!(
        "tr -cs A-Za-z '\\n' | grep . | while IFS= read -r w; do printf '%s\\t1\\n' \"$w\"; sleep {pause}; done"
    )
}

/// How many times each line occurs in `file`.
fn line_counts(file: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in fs::read_to_string(file).unwrap_or_default().lines() {
        *counts.entry(l.to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn mr_straggler_gets_one_backup_that_wins_and_output_stays_exact() {
    // Goal (§3.6): a map task whose first attempt is slow but progressing gets exactly one backup
    // attempt, once it has run --task-timeout and twice the median of its finished peers; the
    // backup finishes first and wins, the straggler is killed, every other task runs exactly
    // once, and the output equals the reference: no duplicate or partial output. The peers take
    // about as long as the task timeout, so the straggler must progress (not hang) for the
    // backup to start before the timeout would fail it.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 6, 300, 61);
    let slow = files[2].display().to_string();
    let started = tmp.path().join("map-started");
    let finished = tmp.path().join("map-finished");
    let marker = tmp.path().join("slowed-once");
    // About 40 words a file: some 1 s per task at 0.02 s a word, and 20 s at 0.5 s a word for
    // the first attempt on the slow file only (the marker directory makes later ones fast).
    let fast = slow_word_mapper("0.02");
    let mapper = format!(
        "echo \"$SHOAL_MR_INPUT\" >> '{started}'; \
         if [ \"$SHOAL_MR_INPUT\" = '{slow}' ] && mkdir '{marker}' 2>/dev/null; then {slow_map}; else {fast}; fi; \
         echo \"$SHOAL_MR_INPUT\" >> '{finished}'",
        started = started.display(),
        finished = finished.display(),
        marker = marker.display(),
        slow_map = slow_word_mapper("0.5"),
    );
    let job = Job::new(tmp.path())
        .streaming(&mapper, SUM_REDUCER)
        .reducers(2)
        .flag("--task-timeout", "1s")
        .json();
    run_cluster(tmp.path(), &job, 3);
    let summary = coordinator_summary(tmp.path());
    assert_eq!(summary["backup_attempts"], 1, "{summary}");
    assert_eq!(summary["attempts_started"], 6 + 1 + 2, "{summary}");
    assert_eq!(
        summary["attempts_failed"], 0,
        "the straggler was failed, not backed up: {summary}"
    );
    let starts = line_counts(&started);
    for f in &files {
        let expected = if f.display().to_string() == slow { 2 } else { 1 };
        assert_eq!(
            starts.get(&f.display().to_string()),
            Some(&expected),
            "{f:?}: {starts:?}"
        );
    }
    // The backup won; the straggler was killed before it finished.
    assert_eq!(
        line_counts(&finished).get(&slow),
        Some(&1),
        "{:?}",
        line_counts(&finished)
    );
    assert_eq!(part_files(job.out()).len(), 2);
    assert_eq!(output_lines(job.out()), reference_wordcount(&files));
}

#[test]
fn mr_tasks_slower_than_the_task_timeout_but_not_than_their_peers_get_no_backup() {
    // Goal (§3.6): every map task runs well past --task-timeout (progressing) while an idle worker
    // keeps asking for work, but none runs twice the median of its finished peers: no backup
    // is started and every task runs exactly once.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 3, 300, 71);
    let started = tmp.path().join("map-started");
    // About 50 words a file at 0.05 s each: some 2.5 s per task against a 1 s task timeout.
    let mapper = format!(
        "echo \"$SHOAL_MR_INPUT\" >> '{}'; {}",
        started.display(),
        slow_word_mapper("0.05")
    );
    let job = Job::new(tmp.path())
        .streaming(&mapper, "cat")
        .reducers(2)
        .flag("--task-timeout", "1s")
        .json();
    // Four workers for three map tasks: one is idle and asks for work the whole time.
    run_cluster(tmp.path(), &job, 4);
    let summary = coordinator_summary(tmp.path());
    assert_eq!(summary["backup_attempts"], 0, "{summary}");
    assert_eq!(summary["attempts_started"], 3 + 2, "{summary}");
    assert!(
        summary["map_phase_ms"].as_u64().unwrap() > 2_000,
        "the tasks were not slow: {summary}"
    );
    let starts = line_counts(&started);
    assert_eq!(starts.len(), files.len(), "{starts:?}");
    assert!(starts.values().all(|n| *n == 1), "{starts:?}");
}

#[test]
fn mr_early_exit_no_process_exits_before_output_is_final() {
    // Goal (test-mr.sh "early exit"): when the first process exits, the output is already final.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 5, 100_000, 9);
    // A slow reducer keeps the job going while the maps are long done.
    let reducer = format!("sleep 0.3; {SUM_REDUCER}");
    let job = Job::new(tmp.path()).streaming(WORD_MAPPER, &reducer).reducers(3);
    let out = job.out();
    let mut cluster = Cluster::start(tmp.path(), &job, 3);
    let deadline = Instant::now() + WAIT_MAX;
    let first_exit_snapshot = loop {
        let any_exited = cluster.coordinator.try_wait().unwrap().is_some()
            || cluster
                .workers
                .iter_mut()
                .any(|w| w.try_wait().unwrap().is_some());
        if any_exited {
            break output_lines(out);
        }
        assert!(Instant::now() < deadline, "no process exited in time");
        std::thread::sleep(Duration::from_millis(10));
    };
    cluster.finish_ok();
    let final_output = output_lines(out);
    assert_eq!(
        first_exit_snapshot, final_output,
        "output changed after the first process exited"
    );
    assert_eq!(final_output, reference_wordcount(&files));
}

#[test]
fn mr_crash_killed_workers_and_failing_or_hanging_functions() {
    // Goal (test-mr.sh "crash"): with workers SIGKILLed at random and user functions that fail
    // or hang past the task timeout, the output still equals the sequential reference.
    let seed = std::env::var("SHOAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("SHOAL_TEST_SEED={seed}");
    let mut rng = SplitMix64::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 10, 60_000, 11);
    // About 15% of attempts fail, 10% hang (killed after the 2 s task timeout).
    // The dice come from /dev/urandom; the very first map and reduce attempts fail for sure,
    // so that a lucky roll cannot leave the job without a failure.
    let dice = "r=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')";
    let first = |what: &str| format!("mkdir '{}' 2>/dev/null && r=0", tmp.path().join(what).display());
    let mapper = format!(
        "{dice}; {}; if [ $r -lt 38 ]; then echo crash >&2; exit 3; fi; if [ $r -lt 64 ]; then sleep 30; fi; \
         {WORD_MAPPER}",
        first("first-map-failed")
    );
    let reducer = format!(
        "{dice}; {}; if [ $r -lt 38 ]; then exit 4; fi; if [ $r -lt 64 ]; then sleep 30; fi; \
         {SUM_REDUCER}",
        first("first-reduce-failed")
    );
    let job = Job::new(tmp.path())
        .streaming(&mapper, &reducer)
        .reducers(3)
        .flag("--task-timeout", "2s")
        .flag("--worker-timeout", "1s")
        .flag("--max-attempts", "30")
        .json();
    let mut cluster = Cluster::start(tmp.path(), &job, 3);
    let deadline = Instant::now() + WAIT_MAX;
    let mut kills = 0;
    while cluster.coordinator.try_wait().unwrap().is_none() && kills < 8 {
        assert!(Instant::now() < deadline, "job did not finish in time");
        std::thread::sleep(Duration::from_millis(400 + rng.next_u64() % 800));
        let live: Vec<usize> = (0..cluster.workers.len())
            .filter(|i| cluster.workers[*i].try_wait().unwrap().is_none())
            .collect();
        if live.is_empty() {
            break;
        }
        let victim = live[(rng.next_u64() % live.len() as u64) as usize];
        let _ = cluster.workers[victim].kill(); // SIGKILL
        let _ = cluster.workers[victim].wait();
        kills += 1;
        cluster.add_worker();
    }
    let (status, _) = cluster.finish();
    assert!(
        status.success(),
        "seed {seed}\n{}",
        dump_logs_on_failure(tmp.path())
    );
    assert_eq!(
        output_lines(job.out()),
        reference_wordcount(&files),
        "seed {seed}"
    );
    let summary = coordinator_summary(tmp.path());
    eprintln!("kills {kills}, summary {summary}");
    // The faults really happened: failed or timed-out attempts, and attempts lost with killed workers.
    assert!(summary["attempts_failed"].as_u64().unwrap() > 0, "{summary}");
    assert!(kills > 0, "the job ended before the first kill");
}

#[test]
fn mr_sigkilled_workers_folder_is_swept_by_the_next_worker() {
    // Goal: a worker killed with SIGKILL leaves its work folder behind; the next worker started
    // under the same --work-dir removes it, and leaves alone a live worker's folder and anything
    // without a worker's marker.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("work");
    // Nobody listens there: the workers wait for their coordinator, and stay up.
    let addr = format!("127.0.0.1:{}", free_port());
    let start_worker = |name: &str| {
        let args = s(&[
            "mr",
            "worker",
            "--coordinator",
            &addr,
            "--work-dir",
            root.to_str().unwrap(),
            "--coordinator-wait",
            "120s",
        ]);
        KillOnDrop(spawn(&args, &tmp.path().join(format!("{name}.log"))))
    };
    // Waits for a worker folder not in `known`, with its marker: the worker is up (and has swept).
    let await_new_dir = |worker: &mut KillOnDrop, known: &[PathBuf]| {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let new: Vec<PathBuf> = worker_dirs(&root)
                .into_iter()
                .filter(|d| !known.contains(d) && d.join("lock").exists())
                .collect();
            if let [dir] = new.as_slice() {
                return dir.clone();
            }
            assert!(new.len() < 2, "{new:?}");
            assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
            assert!(Instant::now() < deadline, "no work folder appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut live = start_worker("live");
    let live_dir = await_new_dir(&mut live, &[]);
    let mut victim = start_worker("victim");
    let victim_dir = await_new_dir(&mut victim, std::slice::from_ref(&live_dir));
    fs::write(victim_dir.join("map-00000-0.data"), b"map output").unwrap();
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    assert!(victim_dir.join("map-00000-0.data").exists());
    // Not a worker's: no marker, or not the worker prefix.
    let unmarked = root.join("shoal-mr-worker-unmarked");
    fs::create_dir(&unmarked).unwrap();
    let foreign = root.join("notes");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("lock"), b"").unwrap();

    let mut next = start_worker("next");
    let next_dir = await_new_dir(
        &mut next,
        &[live_dir.clone(), victim_dir.clone(), unmarked.clone()],
    );
    assert!(!victim_dir.exists(), "the dead worker's folder was not swept");
    for kept in [&live_dir, &next_dir, &unmarked, &foreign] {
        assert!(kept.exists(), "{} was swept", kept.display());
    }
}

#[test]
fn mr_failing_mapper_fails_job_with_its_stderr_and_leaves_no_output() {
    // Goal: a mapper that always fails makes the coordinator exit 1 with the command's exit
    // status and stderr in the error, its workers exit, and no part-r-* file is left.
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path(), 3, 1000, 2);
    let job = Job::new(tmp.path())
        .streaming("echo the input is cursed >&2; exit 7", "cat")
        .flag("--max-attempts", "3");
    let (status, log) = Cluster::start(tmp.path(), &job, 2).finish();
    assert_eq!(status.code(), Some(1));
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("exited with status 7")
            && last.contains("the input is cursed")
            && last.contains("3 times"),
        "{last}"
    );
    assert!(part_files(job.out()).is_empty());
    assert!(!job.out().join("_temporary").exists());
}

/// Runs `shoal ARGS…` to completion: (exit code, stdout, stderr).
fn shoal(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SHOAL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn mr_run_bad_inputs_give_clear_errors() {
    // Goal: missing input, an input under a file, an unknown app, a mapper that does not exist,
    // malformed streaming lines, an unwritable output folder, existing output, and usage errors
    // each fail with a reason naming the problem (exit 1; usage errors exit 2).
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 1, 1000, 1);
    let input = files[0].to_str().unwrap();
    let job = Job::new(tmp.path()).input(input);
    let cases: Vec<(Job, i32, &str)> = vec![
        (
            job.clone().input("/no/such/input.txt").app("wordcount"),
            1,
            "cannot read input /no/such/input.txt",
        ),
        (
            job.clone().input(&format!("{input}/x")).app("wordcount"),
            1,
            "Not a directory",
        ),
        (
            job.clone().input("/no/such/*.txt").app("wordcount"),
            1,
            "matches no file",
        ),
        (job.clone().app("nope"), 1, "built-in apps are wordcount"),
        (
            job.clone()
                .streaming("no-such-mapper-cmd", "cat")
                .flag("--max-attempts", "1"),
            1,
            "not found",
        ),
        (
            job.clone()
                .streaming("echo no tab here", "cat")
                .flag("--max-attempts", "1"),
            1,
            "malformed line 1",
        ),
        (
            job.clone().output(&files[0].join("out")).app("wordcount"),
            1,
            "cannot write output folder",
        ),
        (job.clone().app("grep"), 1, "needs --pattern"),
        (job.clone().without_input().app("wordcount"), 2, "--input"),
        (job.clone(), 1, "--mapper CMD --reducer CMD"),
    ];
    for (case, code, needle) in cases {
        let args = case.run_args();
        let (got, _, stderr) = case.run();
        assert_eq!(got, code, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
        assert!(part_files(job.out()).is_empty(), "{args:?} left output");
    }
    // Existing output is refused without --overwrite, replaced with it.
    let (code, _, err) = job.clone().app("wordcount").run();
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = job.clone().app("wordcount").run();
    assert_eq!(code, 1);
    assert!(err.contains("--overwrite"), "{err}");
    let (code, _, err) = job.clone().app("distinct").switch("--overwrite").run();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn mr_run_shuffle_larger_than_memory_spills_and_merges() {
    // Goal: with map and reduce buffers far smaller than the data, the job spills and merges on
    // disk and still equals the reference.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 3, 400_000, 21);
    let job = Job::new(tmp.path())
        .app("wordcount")
        .reducers(2)
        .flag("--workers", "2")
        .flag("--map-buffer", "16KiB")
        .flag("--reduce-buffer", "16KiB");
    let summary = job.run_summary();
    assert!(summary["counters"]["spills"].as_u64().unwrap() > 30, "{summary}");
    assert_eq!(output_lines(job.out()), reference_wordcount(&files));
}

#[test]
fn mr_run_sort_is_globally_sorted_and_distinct_grep_work() {
    // Goal: the sort app's part-r-* concatenate to the sorted input; distinct and grep agree with
    // references computed here.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 2, 200_000, 31);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for f in &files {
        lines.extend(
            fs::read(f)
                .unwrap()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    let job = Job::new(tmp.path());
    let sort = job
        .clone()
        .output(&tmp.path().join("sorted"))
        .app("sort")
        .reducers(4);
    let (code, _, err) = sort.run();
    assert_eq!(code, 0, "{err}");
    let mut concat = Vec::new();
    let parts = part_files(sort.out());
    assert_eq!(parts.len(), 4);
    for p in &parts {
        concat.extend(
            fs::read(p)
                .unwrap()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(concat, sorted);
    // Range partitions are not wildly skewed.
    let sizes: Vec<u64> = parts.iter().map(|p| fs::metadata(p).unwrap().len()).collect();
    assert!(sizes.iter().all(|s| *s > 0), "{sizes:?}");

    let distinct = job.clone().output(&tmp.path().join("distinct")).app("distinct");
    let (code, _, err) = distinct.run();
    assert_eq!(code, 0, "{err}");
    let mut expected: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(output_lines(distinct.out()), expected);

    let grep = job
        .output(&tmp.path().join("grep"))
        .app("grep")
        .flag("--pattern", "[A-Z][a-z]+");
    let (code, _, err) = grep.run();
    assert_eq!(code, 0, "{err}");
    let re = regex::Regex::new("[A-Z][a-z]+").unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        for m in re.find_iter(std::str::from_utf8(l).unwrap()) {
            *counts.entry(m.as_str().to_string()).or_default() += 1;
        }
    }
    let mut expected: Vec<String> = counts.into_iter().map(|(k, v)| format!("{k}\t{v}")).collect();
    expected.sort();
    assert_eq!(output_lines(grep.out()), expected);
}

#[test]
fn mr_coordinator_restarted_after_sigkill_resumes_from_its_journal() {
    // Goal: a coordinator SIGKILLed mid-job and restarted with the same command line resumes
    // from its journal: committed work is not redone (each map task ran once), the workers
    // carry on, and the output equals the reference.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 4, 50_000, 41);
    let count = tmp.path().join("map-runs");
    let mapper = format!("echo run >> {}; {WORD_MAPPER}", count.display());
    let reducer = format!("sleep 0.5; {SUM_REDUCER}");
    let job = Job::new(tmp.path())
        .streaming(&mapper, &reducer)
        .reducers(6)
        .json();
    let mut cluster = Cluster::start(tmp.path(), &job, 2);
    let journal = job.out().join("_temporary").join("journal");
    let deadline = Instant::now() + WAIT_MAX;
    while !fs::read_to_string(&journal)
        .unwrap_or_default()
        .contains("ReduceCommitted")
    {
        assert!(Instant::now() < deadline, "no reduce committed in time");
        assert!(
            cluster.coordinator.try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.coordinator.kill().unwrap();
    cluster.coordinator.wait().unwrap();
    // The reduces the restarted coordinator finds committed: whole journal lines only (a
    // line torn by the kill is dropped on replay).
    let journaled = fs::read_to_string(&journal).unwrap();
    let committed = journaled
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains("ReduceCommitted"))
        .count() as u64;
    assert!(committed >= 1, "{journaled}");
    cluster.restart_coordinator();
    cluster.finish_ok();
    let summary = coordinator_summary(tmp.path());
    assert_eq!(summary["resumed"], true, "{summary}");
    // Each reduce not yet committed runs once more; an attempt the coordinator lost (and so
    // ran again) and a backup attempt are counted apart. A committed reduce run again would
    // make one more.
    let n = |field: &str| summary[field].as_u64().unwrap();
    assert_eq!(
        n("attempts_started") - n("attempts_lost") - n("backup_attempts"),
        6 - committed,
        "committed reduces ran again ({committed} committed before the kill): {summary}\n{}",
        logs(tmp.path(), usize::MAX)
    );
    assert_eq!(
        fs::read_to_string(&count).unwrap().lines().count(),
        4,
        "map tasks ran again"
    );
    assert_eq!(output_lines(job.out()), reference_wordcount(&files));
}

#[test]
fn mr_run_combine_small_files_packs_inputs_into_few_tasks() {
    // Goal: a thousand tiny inputs with --combine-small-files make one map task, not a thousand,
    // and the indexer still names each input file.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir_all(&input).unwrap();
    let mut files = Vec::new();
    for i in 0..1000 {
        let p = input.join(format!("f{i:04}.txt"));
        fs::write(
            &p,
            format!("alpha beta{}\n", if i % 2 == 0 { " gamma" } else { "" }),
        )
        .unwrap();
        files.push(p);
    }
    let job = Job::new(tmp.path())
        .app("indexer")
        .switch("--combine-small-files");
    let summary = job.run_summary();
    assert_eq!(summary["maps"]["total"], 1, "{summary}");
    assert_eq!(output_lines(job.out()), reference_indexer(&files));
}

#[test]
fn mr_run_streaming_with_combiner_equals_reference() {
    // Goal: a streaming job with a streaming combiner (run on each sorted spill partition)
    // counts words like the reference, and the combiner really shrinks the map output.
    let tmp = tempfile::tempdir().unwrap();
    let files = corpus(tmp.path(), 2, 300_000, 51);
    // Groups adjacent keys, so its output stays sorted.
    let sum_sorted = "awk -F'\\t' '$1 != k { if (NR > 1) print k \"\\t\" c; k = $1; c = 0 } { c += $2 } END { if (NR > 0) print k \"\\t\" c }'";
    let mut map_bytes = Vec::new();
    for (name, combiner) in [("plain", None), ("combined", Some(sum_sorted))] {
        let mut job = Job::new(tmp.path())
            .output(&tmp.path().join(name))
            .streaming(WORD_MAPPER, sum_sorted)
            .reducers(2)
            .flag("--map-buffer", "256KiB");
        if let Some(c) = combiner {
            job = job.flag("--combiner", c);
        }
        let summary = job.run_summary();
        map_bytes.push(summary["counters"]["map_bytes_out"].as_u64().unwrap());
        let lines = output_lines(job.out());
        assert_eq!(lines, reference_wordcount(&files), "{name}");
        // A streaming reducer's records out are the lines it wrote.
        assert_eq!(
            summary["counters"]["reduce_records_out"].as_u64(),
            Some(lines.len() as u64),
            "{name}: {summary}"
        );
    }
    assert!(
        map_bytes[1] * 2 < map_bytes[0],
        "the combiner did not shrink map output: {map_bytes:?}"
    );
}

#[test]
fn mr_worker_and_status_without_a_coordinator_give_up_clearly() {
    // Goal: a worker whose coordinator never appears keeps trying for --coordinator-wait, then
    // exits 1 saying so; `mr status` against nothing exits 1 naming the address.
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let (code, _, err) = shoal(&[
        "mr",
        "worker",
        "--coordinator",
        &addr,
        "--coordinator-wait",
        "1500ms",
    ]);
    let waited = started.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(waited >= Duration::from_millis(1500), "gave up after {waited:?}");
    let (code, _, err) = shoal(&["mr", "status", "--coordinator", &addr, "--timeout", "500ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach coordinator") && err.contains(&addr),
        "{err}"
    );
}
