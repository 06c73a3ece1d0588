//! `shoal mr …` and `shoal gen …`: MapReduce from the command line.
//!
//! Both take their arguments raw from the top-level parser and parse them here, because their
//! contract has `--output DIR` (a folder or file) while the global `--output`/`-o` is the output
//! format. Here `-o json` still selects the format and `--output` names the folder.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shoal_mr::coordinator::{fetch_status, JobStatus};
use shoal_mr::corpus::{parse_size, write_records, TextGenerator, RECORD_BYTES};
use shoal_mr::{AppChoice, Coordinator, CoordinatorConfig, JobConfig, WorkerConfig};

use crate::cli::{parse_duration, GlobalArgs, OutputFormat};

/// How often progress is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    name = "shoal mr",
    about = "MapReduce: run jobs locally or as a coordinator with workers."
)]
struct MrCli {
    #[command(subcommand)]
    command: MrCommand,
    /// Accepted like on every shoal command; MapReduce finds its coordinator with --coordinator.
    #[arg(
        long,
        global = true,
        hide = true,
        value_delimiter = ',',
        env = "SHOAL_ENDPOINTS"
    )]
    endpoints: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum MrCommand {
    /// Run a whole job here: a coordinator and local workers (talking gRPC as remote ones would).
    #[command(
        after_help = "Examples:\n  shoal mr run --input 'books/*.txt' --output out --app wordcount\n  shoal mr run --input logs/ --output out --mapper 'grep -o ERROR.* | sed s/$/\\t1/' --reducer 'uniq -c' --reducers 2"
    )]
    Run(RunArgs),
    /// Coordinate a job for workers started separately; exits 0 when the job is done, 1 when it failed.
    #[command(
        after_help = "Example:\n  shoal mr coordinator --listen 127.0.0.1:7100 --output out --app wordcount --reducers 4 'books/*.txt'\n  shoal mr worker --coordinator 127.0.0.1:7100     # as many as you like"
    )]
    Coordinator(CoordinatorArgs),
    /// Work for a coordinator until its job is over.
    #[command(after_help = "Example:\n  shoal mr worker --coordinator 127.0.0.1:7100")]
    Worker(WorkerArgs),
    /// Show a running job's progress, counters and failures.
    #[command(after_help = "Example:\n  shoal mr status --coordinator 127.0.0.1:7100 -o json")]
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
struct AppArgs {
    /// Built-in app: wordcount, grep, indexer, sort, distinct.
    #[arg(long, conflicts_with_all = ["mapper", "reducer", "combiner"])]
    app: Option<String>,
    /// Streaming mapper command (run with `sh -c`; input split on stdin, env SHOAL_MR_INPUT).
    #[arg(long, requires = "reducer")]
    mapper: Option<String>,
    /// Streaming reducer command (reads sorted key<TAB>value lines).
    #[arg(long, requires = "mapper")]
    reducer: Option<String>,
    /// Streaming combiner command.
    #[arg(long, requires = "mapper")]
    combiner: Option<String>,
    /// Regular expression for the grep app.
    #[arg(long)]
    pattern: Option<String>,
}

impl AppArgs {
    fn choice(&self) -> anyhow::Result<Option<AppChoice>> {
        match (&self.app, &self.mapper, &self.reducer) {
            (Some(name), _, _) => Ok(Some(AppChoice::Builtin {
                name: name.clone(),
                pattern: self.pattern.clone(),
            })),
            (None, Some(m), Some(r)) => Ok(Some(AppChoice::Streaming {
                mapper: m.clone(),
                reducer: r.clone(),
                combiner: self.combiner.clone(),
            })),
            _ => Ok(None),
        }
    }

    fn required(&self) -> anyhow::Result<AppChoice> {
        self.choice()?
            .context("say what to run: --app NAME, or --mapper CMD --reducer CMD")
    }
}

#[derive(Args, Debug, Clone)]
struct JobArgs {
    /// Output folder (created; refused if it already holds output, unless --overwrite).
    #[arg(long)]
    output: PathBuf,
    /// Number of reduce tasks (R), hence of part-r-* files.
    #[arg(long, default_value_t = 4)]
    reducers: u32,
    /// Replace the output folder's existing output.
    #[arg(long)]
    overwrite: bool,
    /// Largest input per map task; bigger files are split at line boundaries.
    #[arg(long, value_parser = parse_size, default_value = "128MiB")]
    split_size: u64,
    /// Pack small input files together into tasks of up to --split-size.
    #[arg(long)]
    combine_small_files: bool,
    /// An attempt without progress for this long is failed and re-assigned.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    task_timeout: Duration,
    /// A worker not heard from for this long is lost (its tasks re-run).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    worker_timeout: Duration,
    /// Failed attempts (errors, timeouts) of one task before the job fails.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    /// Do not start backup attempts for stragglers.
    #[arg(long)]
    no_speculation: bool,
    /// Map-side sort buffer per task (spills to disk past it).
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    map_buffer: u64,
    /// Reduce-side in-memory shuffle budget per task (merges runs on disk past it).
    #[arg(long, value_parser = parse_size, default_value = "128MiB")]
    reduce_buffer: u64,
    /// Output format.
    #[arg(short = 'o', value_enum)]
    format: Option<OutputFormat>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Input files, folders or globs.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<String>,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    app: AppArgs,
    /// Local workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Args, Debug)]
struct CoordinatorArgs {
    /// Address to serve workers on, HOST:PORT.
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    app: AppArgs,
    /// Input files, folders or globs.
    #[arg(required = true)]
    inputs: Vec<String>,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The coordinator's HOST:PORT.
    #[arg(long)]
    coordinator: String,
    #[command(flatten)]
    app: AppArgs,
    /// Where to serve map outputs to reducers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Host name reducers use to reach this worker (default: the --listen host).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Root folder of workers' spills and map outputs, on a local disk. Each worker works in a
    /// subfolder of its own, removed when it exits; a worker starting up removes the subfolders
    /// of workers that died without cleaning up (killed with SIGKILL, say), and nothing else.
    #[arg(long, default_value_os_t = shoal_mr::work_dir::default_root())]
    work_dir: PathBuf,
    /// How long to keep trying an unreachable coordinator before exiting.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    coordinator_wait: Duration,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The coordinator's HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum)]
    format: Option<OutputFormat>,
    /// How long to wait for the coordinator.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

fn parse_or_exit<P: Parser>(bin: &str, args: &[String]) -> Result<P, ExitCode> {
    let argv = std::iter::once(bin.to_string()).chain(args.iter().cloned());
    P::try_parse_from(argv).map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { 2 } else { 0 })
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run_mr(global: &GlobalArgs, args: &[String]) -> anyhow::Result<ExitCode> {
    let cli: MrCli = match parse_or_exit("shoal mr", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.command {
        MrCommand::Run(a) => run_job(global, a),
        MrCommand::Coordinator(a) => run_coordinator(global, a),
        MrCommand::Worker(a) => run_worker(a),
        MrCommand::Status(a) => status(global, a),
    }
}

fn coordinator_config(inputs: Vec<String>, job: &JobArgs, app: AppChoice) -> CoordinatorConfig {
    let mut config = CoordinatorConfig::new(JobConfig {
        inputs,
        output: job.output.clone(),
        n_reduce: job.reducers,
        app,
        split_size_bytes: job.split_size,
        combine_small_files: job.combine_small_files,
        overwrite: job.overwrite,
        map_buffer_bytes: job.map_buffer,
        reduce_buffer_bytes: job.reduce_buffer,
    });
    config.task_timeout = job.task_timeout;
    config.worker_timeout = job.worker_timeout;
    config.max_attempts = job.max_attempts;
    config.speculation = !job.no_speculation;
    config
}

/// Progress on stderr: bars on a terminal, a plain line per change otherwise.
struct Progress {
    bars: Option<(indicatif::ProgressBar, indicatif::ProgressBar)>,
    last_line: String,
}

impl Progress {
    fn new() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template("{prefix:>6} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            let map = multi.add(
                indicatif::ProgressBar::new(0)
                    .with_style(style.clone())
                    .with_prefix("map"),
            );
            let reduce = multi.add(
                indicatif::ProgressBar::new(0)
                    .with_style(style)
                    .with_prefix("reduce"),
            );
            (map, reduce)
        });
        Self {
            bars,
            last_line: String::new(),
        }
    }

    fn update(&mut self, s: &JobStatus) {
        match &self.bars {
            Some((map, reduce)) => {
                map.set_length(u64::from(s.table.maps.total));
                map.set_position(u64::from(s.table.maps.done));
                map.set_message(format!("{} running", s.table.maps.running));
                reduce.set_length(u64::from(s.table.reduces.total));
                reduce.set_position(u64::from(s.table.reduces.done));
                reduce.set_message(format!("{} running", s.table.reduces.running));
            }
            None => {
                let line = format!(
                    "map {}/{} done, {} running; reduce {}/{} done, {} running; {} failed attempts",
                    s.table.maps.done,
                    s.table.maps.total,
                    s.table.maps.running,
                    s.table.reduces.done,
                    s.table.reduces.total,
                    s.table.reduces.running,
                    s.table.attempts_failed
                );
                if line != self.last_line {
                    eprintln!("{line}");
                    self.last_line = line;
                }
            }
        }
    }

    fn finish(&self) {
        if let Some((map, reduce)) = &self.bars {
            map.finish();
            reduce.finish();
        }
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn print_summary(format: OutputFormat, s: &JobStatus) {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    let c = &s.counters;
    println!(
        "job {} {} in {} (map phase {}, reduce phase {})",
        s.job_id,
        s.state,
        secs(s.elapsed_ms),
        secs(s.map_phase_ms),
        secs(s.reduce_phase_ms)
    );
    println!(
        "tasks:     {} map, {} reduce; attempts {} started, {} failed, {} lost to dead workers, {} backups; {} map re-executions",
        s.table.maps.total, s.table.reduces.total, s.table.attempts_started, s.table.attempts_failed, s.table.attempts_lost, s.table.backup_attempts, s.table.map_reexecutions
    );
    println!(
        "map:       {} records, {} in -> {} records, {} out ({} spills)",
        c.map_records_in,
        bytes(c.map_bytes_in),
        c.map_records_out,
        bytes(c.map_bytes_out),
        c.spills
    );
    println!("shuffle:   {}", bytes(c.shuffle_bytes));
    println!(
        "reduce:    {} keys in -> {} records, {} out",
        c.reduce_keys_in,
        c.reduce_records_out,
        bytes(c.reduce_bytes_out)
    );
    if let (Some((lp, lb)), Some((sp, sb))) = (s.largest_partition, s.smallest_partition) {
        println!(
            "partitions: largest {} ({}), smallest {} ({})",
            shoal_mr::coordinator::part_name(lp),
            bytes(lb),
            shoal_mr::coordinator::part_name(sp),
            bytes(sb)
        );
    }
    if s.state == "done" {
        println!(
            "output:    {}/part-r-* ({} files)",
            s.output, s.table.reduces.total
        );
    }
    for f in &s.recent_failures {
        println!("failure:   {f}");
    }
}

fn format_of(global: &GlobalArgs, local: Option<OutputFormat>) -> OutputFormat {
    local.unwrap_or(global.output)
}

fn run_job(global: &GlobalArgs, a: RunArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(global, a.job.format);
    let app = a.app.required()?;
    let config = coordinator_config(a.input.clone(), &a.job, app);
    let n_workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let rt = runtime()?;
    let report = rt.block_on(async {
        let coordinator = Coordinator::new(config)?;
        let progress_task = {
            let c = coordinator.clone();
            tokio::spawn(async move {
                let mut progress = Progress::new();
                loop {
                    progress.update(&c.status());
                    tokio::time::sleep(PROGRESS_INTERVAL).await;
                }
            })
        };
        let report = shoal_mr::run_local(coordinator.clone(), n_workers, None).await;
        progress_task.abort();
        let mut p = Progress::new();
        if let Ok(r) = &report {
            p.update(&r.status);
        }
        p.finish();
        anyhow::Ok(report?)
    })?;
    print_summary(format, &report.status);
    match report.result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(reason) => bail!("job failed: {reason}"),
    }
}

fn run_coordinator(global: &GlobalArgs, a: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(global, a.job.format);
    let app = a.app.required()?;
    let config = coordinator_config(a.inputs.clone(), &a.job, app);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let coordinator = Coordinator::new(config)?;
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        eprintln!(
            "coordinator for job {} listening on {} ({} map tasks, {} reduce tasks)",
            coordinator.job_id(),
            listener.local_addr()?,
            coordinator.n_map_tasks(),
            a.job.reducers
        );
        anyhow::Ok(coordinator.serve(listener).await?)
    })?;
    print_summary(format, &report.status);
    match report.result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(reason) => bail!("job failed: {reason}"),
    }
}

fn run_worker(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let job = match a.app.choice()? {
        Some(choice) => Some(choice.to_job().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let config = WorkerConfig {
        listen: a.listen.clone(),
        advertise_host: a.advertise_host.clone(),
        work_dir: Some(a.work_dir.clone()),
        coordinator_wait: a.coordinator_wait,
        ..WorkerConfig::new(&a.coordinator)
    };
    let rt = runtime()?;
    let summary = rt.block_on(shoal_mr::run_worker(config, job))?;
    match summary.reason {
        shoal_mr::worker::ExitReason::JobOver => {
            eprintln!("worker done: ran {} tasks; the job is over", summary.tasks_run);
            Ok(ExitCode::SUCCESS)
        }
        shoal_mr::worker::ExitReason::CoordinatorGone => {
            bail!(
                "the coordinator at {} stopped answering (waited {:?}); ran {} tasks",
                a.coordinator,
                a.coordinator_wait,
                summary.tasks_run
            )
        }
    }
}

fn status(global: &GlobalArgs, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(global, a.format);
    let timeout = a.timeout.unwrap_or(global.timeout);
    let rt = runtime()?;
    let value = rt.block_on(fetch_status(&a.coordinator, timeout))?;
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let get = |path: &[&str]| {
        let mut v = &value;
        for p in path {
            v = &v[*p];
        }
        v.clone()
    };
    println!(
        "job {} {} ({} elapsed)",
        get(&["job_id"]).as_str().unwrap_or("?"),
        get(&["state"]).as_str().unwrap_or("?"),
        secs(get(&["elapsed_ms"]).as_u64().unwrap_or(0))
    );
    for phase in ["maps", "reduces"] {
        println!(
            "{phase:8} {}/{} done, {} running, {} idle",
            get(&[phase, "done"]),
            get(&[phase, "total"]),
            get(&[phase, "running"]),
            get(&[phase, "idle"])
        );
    }
    println!(
        "attempts {} started, {} failed, {} lost, {} backups; workers {} alive, {} lost",
        get(&["attempts_started"]),
        get(&["attempts_failed"]),
        get(&["attempts_lost"]),
        get(&["backup_attempts"]),
        get(&["workers_alive"]),
        get(&["workers_lost"])
    );
    if let Some(running) = value["running"].as_array() {
        for r in running {
            println!("running  {}", r.as_str().unwrap_or(""));
        }
    }
    if let Some(failures) = value["recent_failures"].as_array() {
        for f in failures {
            println!("failure  {}", f.as_str().unwrap_or(""));
        }
    }
    if let Some(e) = value["error"].as_str() {
        println!("error    {e}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser, Debug)]
#[command(name = "shoal gen", about = "Generate deterministic test data.")]
struct GenCli {
    #[command(subcommand)]
    command: GenCommand,
}

#[derive(Subcommand, Debug)]
enum GenCommand {
    /// Text of Zipf-distributed words (like natural language), the same bytes for the same seed.
    #[command(
        after_help = "Examples:\n  shoal gen text --size 1GiB --seed 1 --output corpus.txt\n  shoal gen text --size 1GiB --seed 1 --output corpus/   # files of --file-size each"
    )]
    Text {
        /// Total size (e.g. 64MiB, 1GiB).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A file, or a folder (existing, or ending in /) to fill with files of --file-size.
        #[arg(long)]
        output: PathBuf,
        /// Size of each file when --output is a folder.
        #[arg(long, value_parser = parse_size, default_value = "128MiB")]
        file_size: u64,
    },
    /// 100-byte records with 10-byte random keys (gensort-like), for sort benchmarks.
    #[command(
        after_help = "Example:\n  shoal gen records --size 1GiB --seed 1 --output records.txt\n  shoal mr run --input records.txt --output sorted --app sort"
    )]
    Records {
        /// Total size, rounded down to whole 100-byte records.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The file to write.
        #[arg(long)]
        output: PathBuf,
    },
}

pub fn run_gen(args: &[String]) -> anyhow::Result<ExitCode> {
    let cli: GenCli = match parse_or_exit("shoal gen", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (size, seed, output, file_size) = match cli.command {
        GenCommand::Text {
            size,
            seed,
            output,
            file_size,
        } => (size, seed, output, file_size),
        GenCommand::Records { size, seed, output } => {
            let started = Instant::now();
            let f = std::fs::File::create(&output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            write_records(&mut w, seed, size).with_context(|| format!("writing {}", output.display()))?;
            std::io::Write::flush(&mut w).with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "wrote {} records to {} in {:.1} s",
                size / RECORD_BYTES,
                output.display(),
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    if file_size == 0 {
        bail!("--file-size must be more than 0");
    }
    let started = Instant::now();
    let mut generator = TextGenerator::new(seed);
    let is_dir = output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/');
    let mut files = Vec::new();
    if is_dir {
        std::fs::create_dir_all(&output)
            .with_context(|| format!("cannot create folder {}", output.display()))?;
        let mut left = size;
        let mut i = 0;
        while left > 0 || i == 0 {
            let n = left.min(file_size);
            files.push((output.join(format!("text-{i:05}.txt")), n));
            left -= n;
            i += 1;
        }
    } else {
        files.push((output.clone(), size));
    }
    for (path, n) in &files {
        let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        generator
            .write(&mut w, *n)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::flush(&mut w).with_context(|| format!("writing {}", path.display()))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} in {} file(s) to {} in {:.1} s",
        bytes(size),
        files.len(),
        output.display(),
        elapsed
    );
    Ok(ExitCode::SUCCESS)
}
