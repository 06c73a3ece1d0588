//! A job's functions ([`Job`]) and how one map or reduce attempt runs them on a worker:
//! reading the input split line by line, the map-side buffer, the reduce-side merge, and
//! streaming commands run through `sh -c` (Hadoop Streaming conventions).

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{BoxError, Combiner, Emit, HashPartitioner, Mapper, Partitioner, RangePartitioner, Reducer};
use crate::input::open_range;
use crate::merge::{for_each_group, GroupError, Merger};
use crate::shuffle::{
    MapCombiner, MapOutputBuffer, MapOutputFiles, PartitionCombiner, RecordSink, RecordSource,
};
use crate::storage::{OutputFile, Storage};

/// Lines of a failing command's stderr kept for the job's error. Cost: at most this many
/// lines of [`STDERR_LINE_BYTES_MAX`] bytes per running command.
pub const STDERR_TAIL_LINES_MAX: usize = 10;
pub const STDERR_LINE_BYTES_MAX: usize = 512;
/// Longest input line. Cost: one line is held in memory; longer lines fail the task clearly
/// instead of exhausting memory on a file without newlines.
pub const LINE_BYTES_MAX: usize = 64 << 20;
/// How often a watcher checks whether a running command must be killed.
const CANCEL_POLL_INTERVAL: Duration = Duration::from_millis(50);

pub type MapperFactory = Arc<dyn Fn() -> Box<dyn Mapper> + Send + Sync>;
pub type ReducerFactory = Arc<dyn Fn() -> Box<dyn Reducer> + Send + Sync>;
pub type CombinerFactory = Arc<dyn Fn() -> Box<dyn Combiner> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum MapFn {
    Rust(MapperFactory),
    Streaming(String),
}

#[derive(Clone)]
pub(crate) enum ReduceFn {
    Rust(ReducerFactory),
    Streaming(String),
}

/// A job's user functions. Build one with [`Job::new`] (Rust) or [`Job::streaming`] (commands),
/// then run it with [`crate::run_local`] or as a worker with [`crate::worker::run_worker`].
#[derive(Clone)]
pub struct Job {
    pub(crate) map: MapFn,
    pub(crate) reduce: ReduceFn,
    pub(crate) combine: Option<CombinerFactory>,
    pub(crate) combine_cmd: Option<String>,
    pub(crate) partitioner: Option<Arc<dyn Partitioner>>,
    /// Partition by sampled key ranges chosen by the coordinator (the `sort` app).
    pub(crate) range_partitioned: bool,
}

impl Job {
    pub fn new<M: Mapper + 'static, R: Reducer + 'static>(
        mapper: impl Fn() -> M + Send + Sync + 'static,
        reducer: impl Fn() -> R + Send + Sync + 'static,
    ) -> Self {
        Self {
            map: MapFn::Rust(Arc::new(move || Box::new(mapper()))),
            reduce: ReduceFn::Rust(Arc::new(move || Box::new(reducer()))),
            combine: None,
            combine_cmd: None,
            partitioner: None,
            range_partitioned: false,
        }
    }

    /// Hadoop Streaming: both run through `sh -c`.
    pub fn streaming(mapper_cmd: &str, reducer_cmd: &str) -> Self {
        Self {
            map: MapFn::Streaming(mapper_cmd.to_string()),
            reduce: ReduceFn::Streaming(reducer_cmd.to_string()),
            combine: None,
            combine_cmd: None,
            partitioner: None,
            range_partitioned: false,
        }
    }

    pub fn combiner<C: Combiner + 'static>(
        mut self,
        combiner: impl Fn() -> C + Send + Sync + 'static,
    ) -> Self {
        self.combine = Some(Arc::new(move || Box::new(combiner())));
        self
    }

    /// A streaming combiner: run through `sh -c` on each sorted partition of map output
    /// (`key<TAB>value` lines in, the same out, still sorted by key).
    pub fn streaming_combiner(mut self, cmd: &str) -> Self {
        self.combine_cmd = Some(cmd.to_string());
        self
    }

    pub fn partitioner(mut self, partitioner: impl Partitioner + 'static) -> Self {
        self.partitioner = Some(Arc::new(partitioner));
        self
    }

    pub(crate) fn range_partitioned(mut self) -> Self {
        self.range_partitioned = true;
        self
    }

    pub fn is_range_partitioned(&self) -> bool {
        self.range_partitioned
    }
}

/// Why an attempt did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl From<io::Error> for TaskError {
    fn from(e: io::Error) -> Self {
        TaskError::Failed(e.to_string())
    }
}

impl From<GroupError> for TaskError {
    fn from(e: GroupError) -> Self {
        TaskError::Failed(e.to_string())
    }
}

/// What an attempt can see of its worker.
pub struct TaskContext<'a> {
    /// Local directory for spills and map output.
    pub dir: &'a Path,
    /// Where the job's inputs are read and its reduce output written.
    pub storage: &'a dyn Storage,
    /// Bumped as the attempt reads and writes; the worker heartbeats it as progress.
    pub progress: &'a AtomicU64,
    /// Set when the coordinator cancels the attempt.
    pub cancel: &'a AtomicBool,
}

#[derive(Clone, Debug, Default)]
pub struct TaskCounters {
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    pub shuffle_bytes: u64,
    pub spills: u64,
}

/// One byte range of an input file: the lines whose first byte lies in `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRange {
    pub path: String,
    pub start: u64,
    pub end: u64,
}

pub struct MapTaskSpec<'a> {
    /// File name prefix of the task's output (`map-00003-1`).
    pub name: &'a str,
    pub n_reduce: u32,
    pub inputs: &'a [InputRange],
    pub buffer_bytes: usize,
    /// Range partitioner bounds (sort); empty for hash partitioning.
    pub bounds: &'a [Vec<u8>],
}

/// Reads the lines of `range`, calling `f` with each (without `\n` or `\r\n`).
fn for_each_line(
    range: &InputRange,
    ctx: &TaskContext<'_>,
    counters: &mut TaskCounters,
    mut f: impl FnMut(&[u8]) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let (mut r, mut pos) = open_range(ctx.storage, range)
        .map_err(|e| TaskError::Failed(format!("cannot read input {}: {e}", range.path)))?;
    let mut line = Vec::with_capacity(256);
    let mut n_lines: u64 = 0;
    while pos < range.end {
        line.clear();
        let n = (&mut r)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.len() > LINE_BYTES_MAX {
            return Err(TaskError::Failed(format!(
                "{}: a line at byte {pos} is longer than {LINE_BYTES_MAX} bytes (is this a text file?)",
                range.path
            )));
        }
        pos += n as u64;
        counters.bytes_in += n as u64;
        counters.records_in += 1;
        let mut l = line.as_slice();
        if let Some(s) = l.strip_suffix(b"\n") {
            l = s.strip_suffix(b"\r").unwrap_or(s);
        }
        f(l)?;
        n_lines += 1;
        if n_lines.is_multiple_of(1024) {
            ctx.progress.fetch_add(1024, Ordering::Relaxed);
            if ctx.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
        }
    }
    ctx.progress.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn user_error(what: &str, e: BoxError) -> TaskError {
    TaskError::Failed(format!("{what}: {e}"))
}

/// Runs one map attempt: input split → map → partition, sort, combine, spill → one data file
/// plus index in `ctx.dir`.
pub fn run_map_task(
    job: &Job,
    spec: &MapTaskSpec<'_>,
    ctx: &TaskContext<'_>,
) -> Result<(MapOutputFiles, TaskCounters), TaskError> {
    let partitioner: Arc<dyn Partitioner> = match (&job.partitioner, job.range_partitioned) {
        (Some(p), _) => p.clone(),
        (None, true) => Arc::new(RangePartitioner {
            bounds: spec.bounds.to_vec(),
        }),
        (None, false) => Arc::new(HashPartitioner),
    };
    let combiner = match (&job.combine, &job.combine_cmd) {
        (Some(f), _) => Some(MapCombiner::Keyed(f())),
        (None, Some(cmd)) => Some(MapCombiner::Partition(Box::new(StreamingCombiner {
            cmd: cmd.clone(),
        }))),
        (None, None) => None,
    };
    let mut buffer = MapOutputBuffer::new(
        ctx.dir,
        spec.name,
        spec.n_reduce,
        spec.buffer_bytes,
        partitioner.as_ref(),
        combiner,
    );
    let mut counters = TaskCounters::default();
    match &job.map {
        MapFn::Rust(factory) => {
            let mut mapper = factory();
            for range in spec.inputs {
                for_each_line(range, ctx, &mut counters, |line| {
                    mapper
                        .map(&range.path, line, &mut buffer)
                        .map_err(|e| user_error("map function failed", e))
                })?;
            }
            mapper
                .finish(&mut buffer)
                .map_err(|e| user_error("map function failed", e))?;
        }
        MapFn::Streaming(cmd) => {
            for range in spec.inputs {
                run_streaming_map(cmd, range, ctx, &mut counters, &mut buffer)?;
            }
        }
    }
    if ctx.cancel.load(Ordering::Relaxed) {
        return Err(TaskError::Cancelled);
    }
    let (files, stats) = buffer.finish()?;
    counters.records_out = stats.records_written;
    counters.bytes_out = stats.bytes_written;
    counters.spills = stats.n_spills;
    Ok((files, counters))
}

/// Writes reduce output: `key<TAB>value\n`, or `key\n` for an empty value.
struct TextEmit<W: Write> {
    w: W,
    records: u64,
    bytes: u64,
}

impl<W: Write> Emit for TextEmit<W> {
    fn emit(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.w.write_all(key)?;
        self.bytes += key.len() as u64 + 1;
        if !value.is_empty() {
            self.w.write_all(b"\t")?;
            self.w.write_all(value)?;
            self.bytes += value.len() as u64 + 1;
        }
        self.w.write_all(b"\n")?;
        self.records += 1;
        Ok(())
    }
}

/// Runs one reduce attempt over the merged shuffle input, writing `out_path` through the
/// job's storage (made durable before it returns).
pub fn run_reduce_task(
    job: &Job,
    mut merger: Merger,
    out_path: &Path,
    ctx: &TaskContext<'_>,
) -> Result<TaskCounters, TaskError> {
    let mut file = ctx
        .storage
        .create(out_path)
        .map_err(|e| TaskError::Failed(format!("cannot create reduce output {}: {e}", out_path.display())))?;
    let mut counters = TaskCounters::default();
    match &job.reduce {
        ReduceFn::Rust(factory) => {
            let mut reducer = factory();
            let mut out = TextEmit {
                w: BufWriter::with_capacity(1 << 20, file),
                records: 0,
                bytes: 0,
            };
            let mut n_keys: u64 = 0;
            let cancel = ctx.cancel;
            let result = for_each_group(&mut merger, |key, values| {
                n_keys += 1;
                if n_keys.is_multiple_of(1024) {
                    ctx.progress.fetch_add(1024, Ordering::Relaxed);
                    if cancel.load(Ordering::Relaxed) {
                        return Err("cancelled".into());
                    }
                }
                reducer.reduce(key, values, &mut out)
            });
            if cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            match result {
                Ok(()) => {}
                Err(GroupError::User(e)) => return Err(user_error("reduce function failed", e)),
                Err(e) => return Err(e.into()),
            }
            counters.records_in = n_keys;
            counters.records_out = out.records;
            counters.bytes_out = out.bytes;
            out.w.into_inner().map_err(|e| e.into_error())?.sync()?;
        }
        ReduceFn::Streaming(cmd) => {
            let copied = run_streaming_reduce(cmd, &mut merger, file.as_mut(), ctx, &mut counters)?;
            counters.bytes_out = copied.n_bytes;
            counters.records_out = copied.n_lines;
            file.sync()?;
        }
    }
    Ok(counters)
}

/// A running `sh -c` command in its own process group, killed (with its children) on cancel.
struct Streaming {
    child: Arc<Mutex<Child>>,
    pgid: u32,
    stderr: Option<std::thread::JoinHandle<VecDeque<String>>>,
    cmd: String,
}

impl Streaming {
    fn spawn(cmd: &str, input_path: Option<&str>, stdout: Stdio) -> Result<Self, TaskError> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(p) = input_path {
            command.env("SHOAL_MR_INPUT", p);
        }
        let mut child = command
            .spawn()
            .map_err(|e| TaskError::Failed(format!("cannot start `sh -c {cmd}`: {e}")))?;
        let pgid = child.id();
        let stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || stderr_tail(stderr));
        let child = Arc::new(Mutex::new(child));
        Ok(Self {
            child,
            pgid,
            stderr: Some(stderr),
            cmd: cmd.to_string(),
        })
    }

    fn kill(&self) {
        kill_process_group(self.pgid);
    }

    fn take_stdin(&self) -> Option<std::process::ChildStdin> {
        self.child.lock().expect("child lock").stdin.take()
    }

    fn take_stdout(&self) -> Option<std::process::ChildStdout> {
        self.child.lock().expect("child lock").stdout.take()
    }

    /// Waits for the command; an error names the command, its exit status and stderr tail.
    fn finish(mut self, role: &str, what: &str) -> Result<(), TaskError> {
        let status: ExitStatus = self.child.lock().expect("child lock").wait()?;
        let tail = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(TaskError::Failed(format!(
            "{role} command `{}` {} on {what}{}",
            self.cmd,
            describe_status(status),
            format_tail(&tail)
        )))
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_string(),
    }
}

fn format_tail(tail: &VecDeque<String>) -> String {
    if tail.is_empty() {
        return " (no stderr output)".to_string();
    }
    let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
    format!("; last stderr lines: {}", lines.join(" | "))
}

fn stderr_tail(stderr: impl Read) -> VecDeque<String> {
    let mut tail = VecDeque::new();
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                line.truncate(STDERR_LINE_BYTES_MAX);
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tail.len() == STDERR_TAIL_LINES_MAX {
                    tail.pop_front();
                }
                tail.push_back(text);
            }
        }
    }
    tail
}

/// Kills a whole process group (the `sh` and whatever it started) with SIGKILL.
fn kill_process_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `f` while a watcher kills the process group if `cancel` becomes set.
fn with_cancel_watch<T>(s: &Streaming, cancel: &AtomicBool, f: impl FnOnce() -> T) -> T {
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    s.kill();
                    return;
                }
                std::thread::sleep(CANCEL_POLL_INTERVAL);
            }
        });
        let out = f();
        finished.store(true, Ordering::Relaxed);
        out
    })
}

fn run_streaming_map(
    cmd: &str,
    range: &InputRange,
    ctx: &TaskContext<'_>,
    counters: &mut TaskCounters,
    buffer: &mut MapOutputBuffer<'_>,
) -> Result<(), TaskError> {
    let s = Streaming::spawn(cmd, Some(&range.path), Stdio::piped())?;
    let stdin = s.take_stdin().expect("piped");
    let stdout = s.take_stdout().expect("piped");
    let result = with_cancel_watch(&s, ctx.cancel, || {
        std::thread::scope(|scope| {
            let feeder = scope.spawn(|| {
                let mut w = BufWriter::with_capacity(1 << 16, stdin);
                let mut c = TaskCounters::default();
                let r = for_each_line(range, ctx, &mut c, |line| {
                    w.write_all(line)?;
                    w.write_all(b"\n")?;
                    Ok(())
                })
                .and_then(|()| w.flush().map_err(TaskError::from));
                // A mapper may stop reading early; its exit status decides.
                let r = match r {
                    Err(TaskError::Failed(msg)) if msg.contains("Broken pipe") => Ok(()),
                    other => other,
                };
                (r, c)
            });
            let mut out = BufReader::with_capacity(1 << 16, stdout);
            let mut line = Vec::new();
            let mut n: u64 = 0;
            let parsed: Result<(), TaskError> = loop {
                line.clear();
                // Output is progress too (as in Hadoop): a mapper that is slow but writing is a
                // straggler to back up, not a hang to kill. One count per read from the pipe.
                let reads_pipe = out.buffer().is_empty();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) => break Ok(()),
                    Ok(_) if reads_pipe => {
                        ctx.progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => break Err(e.into()),
                }
                n += 1;
                let l = line.strip_suffix(b"\n").unwrap_or(&line);
                let Some(tab) = l.iter().position(|b| *b == b'\t') else {
                    s.kill();
                    break Err(TaskError::Failed(format!(
                        "mapper command `{cmd}` wrote a malformed line {n} on {}: {:?} (expected key<TAB>value)",
                        range.path,
                        String::from_utf8_lossy(&l[..l.len().min(200)])
                    )));
                };
                if let Err(e) = buffer.emit(&l[..tab], &l[tab + 1..]) {
                    s.kill();
                    break Err(e.into());
                }
            };
            let (fed, c) = feeder.join().expect("feeder thread");
            counters.records_in += c.records_in;
            counters.bytes_in += c.bytes_in;
            parsed.and(fed.map(|_| ()))
        })
    });
    let status = s.finish("mapper", &range.path);
    if ctx.cancel.load(Ordering::Relaxed) {
        return Err(TaskError::Cancelled);
    }
    // A malformed line is the clearer error; otherwise the exit status.
    result?;
    status
}

/// Feeds the merged shuffle input to the reducer command and copies its stdout to `out`
/// (through the worker rather than straight to a file, so that any [`Storage`] can take it);
/// returns what it wrote.
fn run_streaming_reduce(
    cmd: &str,
    merger: &mut Merger,
    out: &mut dyn OutputFile,
    ctx: &TaskContext<'_>,
    counters: &mut TaskCounters,
) -> Result<Copied, TaskError> {
    let s = Streaming::spawn(cmd, None, Stdio::piped())?;
    let stdin = s.take_stdin().expect("piped");
    let stdout = s.take_stdout().expect("piped");
    let (fed, copied): (io::Result<()>, io::Result<Copied>) = with_cancel_watch(&s, ctx.cancel, || {
        std::thread::scope(|scope| {
            let copier = scope.spawn(|| {
                let copied = copy_output(stdout, out, ctx.progress);
                if copied.is_err() {
                    s.kill();
                }
                copied
            });
            let mut w = BufWriter::with_capacity(1 << 16, stdin);
            let fed = (|| {
                while let Some(kv) = merger.pop()? {
                    w.write_all(&kv.0)?;
                    w.write_all(b"\t")?;
                    w.write_all(&kv.1)?;
                    w.write_all(b"\n")?;
                    counters.records_in += 1;
                    if counters.records_in.is_multiple_of(1024) {
                        ctx.progress.fetch_add(1024, Ordering::Relaxed);
                    }
                    merger.recycle(kv);
                }
                w.flush()
            })();
            // End of input: the reducer finishes, and so does the copy of its output.
            drop(w);
            (fed, copier.join().expect("copier thread"))
        })
    });
    let status = s.finish("reducer", "its sorted input");
    if ctx.cancel.load(Ordering::Relaxed) {
        return Err(TaskError::Cancelled);
    }
    // A failed copy killed the command: its error is the cause, not the command's status.
    let copied = copied.map_err(|e| TaskError::Failed(format!("writing the reducer's output: {e}")))?;
    status?;
    match fed {
        Ok(()) => Ok(copied),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(copied),
        Err(e) => Err(e.into()),
    }
}

/// What a command wrote: bytes, and lines (a last line without a newline counts).
#[derive(Debug, Default, PartialEq, Eq)]
struct Copied {
    n_bytes: u64,
    n_lines: u64,
}

/// Copies a command's output to `out`; each read from the pipe counts as progress.
fn copy_output(mut from: impl Read, out: &mut dyn OutputFile, progress: &AtomicU64) -> io::Result<Copied> {
    let mut buf = vec![0u8; 1 << 16];
    let mut copied = Copied::default();
    let mut ends_with_newline = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                if !ends_with_newline {
                    copied.n_lines += 1;
                }
                return Ok(copied);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        copied.n_bytes += n as u64;
        copied.n_lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        ends_with_newline = buf[n - 1] == b'\n';
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// A streaming combiner command run once per sorted partition run.
struct StreamingCombiner {
    cmd: String,
}

impl PartitionCombiner for StreamingCombiner {
    fn combine_partition(
        &mut self,
        input: &mut RecordSource<'_>,
        out: &mut RecordSink<'_>,
    ) -> io::Result<()> {
        let to_io = |e: TaskError| io::Error::other(e.to_string());
        let s = Streaming::spawn(&self.cmd, None, Stdio::piped()).map_err(to_io)?;
        let stdin = s.take_stdin().expect("piped");
        let stdout = s.take_stdout().expect("piped");
        let parsed = std::thread::scope(|scope| {
            let feeder = scope.spawn(move || -> io::Result<()> {
                let mut w = BufWriter::with_capacity(1 << 16, stdin);
                while let Some((k, v)) = input()? {
                    w.write_all(&k)?;
                    w.write_all(b"\t")?;
                    w.write_all(&v)?;
                    w.write_all(b"\n")?;
                }
                w.flush()
            });
            let mut r = BufReader::with_capacity(1 << 16, stdout);
            let mut line = Vec::new();
            let mut n = 0u64;
            let parsed: io::Result<()> = loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
                n += 1;
                let l = line.strip_suffix(b"\n").unwrap_or(&line);
                let Some(tab) = l.iter().position(|b| *b == b'\t') else {
                    s.kill();
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "combiner command `{}` wrote a malformed line {n}: {:?} (expected key<TAB>value)",
                            self.cmd,
                            String::from_utf8_lossy(&l[..l.len().min(200)])
                        ),
                    ));
                };
                if let Err(e) = out(&l[..tab], &l[tab + 1..]) {
                    s.kill();
                    break Err(e);
                }
            };
            let fed = feeder.join().expect("feeder thread");
            parsed.and(match fed {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            })
        });
        let status = s.finish("combiner", "map output").map_err(to_io);
        parsed?;
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink(Vec<u8>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl OutputFile for Sink {
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copied_output_counts_its_lines() {
        // Goal: a streaming reducer's records out are its output lines, an unterminated
        // last line included.
        let progress = AtomicU64::new(0);
        for (text, n_lines) in [
            ("", 0),
            ("a\t1\n", 1),
            ("a\t1\nb\t2\n", 2),
            ("a\t1\nb", 2),
            ("\n\n", 2),
        ] {
            let mut sink = Sink(Vec::new());
            let copied = copy_output(text.as_bytes(), &mut sink, &progress).unwrap();
            assert_eq!(
                copied,
                Copied {
                    n_bytes: text.len() as u64,
                    n_lines
                },
                "{text:?}"
            );
            assert_eq!(sink.0, text.as_bytes());
        }
    }
}
