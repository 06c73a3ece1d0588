//! A MapReduce job written in Rust: how long are the lines of some text files? Build your own
//! binary like this one (as a Hadoop user builds a jar): `run_local` runs it here with local
//! workers; `shoal_mr::run_worker(WorkerConfig::new(COORDINATOR), Some(job()))` makes the same
//! binary a worker for a coordinator started with `AppChoice::Custom`.
//!
//! cargo run --release -p shoal-mr --example custom_job -- OUTPUT_DIR FILE_OR_GLOB…

use shoal_mr::api::read_u64;
use shoal_mr::{
    AppChoice, BoxError, Combiner, Coordinator, CoordinatorConfig, Emit, Job, JobConfig, Mapper, Reducer,
    Values,
};

/// Emits (line length rounded down to a multiple of 10, 1).
struct LengthMapper;

impl Mapper for LengthMapper {
    fn map(&mut self, _input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        let bucket = line.len() / 10 * 10;
        // Zero-padded so that the byte order of keys is their numeric order.
        out.emit_u64(format!("{bucket:06}").as_bytes(), 1)?;
        Ok(())
    }
}

/// Adds counts on the map side (the key stays the same, as a combiner must).
struct Sum;

impl Combiner for Sum {
    fn combine(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        let mut n = 0;
        while let Some(v) = values.next_value() {
            n += read_u64(v)?;
        }
        out.emit_u64(key, n)?;
        Ok(())
    }
}

/// Writes `bucket<TAB>lines`.
struct Histogram;

impl Reducer for Histogram {
    fn reduce(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        let mut n = 0;
        while let Some(v) = values.next_value() {
            n += read_u64(v)?;
        }
        let bucket: u64 = std::str::from_utf8(key)?.parse()?;
        out.emit(
            format!("{bucket}-{}", bucket + 9).as_bytes(),
            n.to_string().as_bytes(),
        )?;
        Ok(())
    }
}

fn job() -> Job {
    Job::new(|| LengthMapper, || Histogram).combiner(|| Sum)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let output = args.next().ok_or("usage: custom_job OUTPUT_DIR FILE_OR_GLOB…")?;
    let inputs: Vec<String> = args.collect();
    let config = CoordinatorConfig::new(JobConfig {
        inputs,
        output: output.clone().into(),
        n_reduce: 2,
        app: AppChoice::Custom {
            name: "line-lengths".into(),
        },
        split_size_bytes: shoal_mr::SPLIT_SIZE_BYTES_DEFAULT,
        combine_small_files: true,
        overwrite: true,
        map_buffer_bytes: shoal_mr::MAP_BUFFER_BYTES_DEFAULT,
        reduce_buffer_bytes: shoal_mr::REDUCE_BUFFER_BYTES_DEFAULT,
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let coordinator = Coordinator::new(config)?;
        shoal_mr::run_local(coordinator, 2, Some(job())).await
    })?;
    match report.result {
        Ok(()) => {
            println!("done: {}/part-r-00000, part-r-00001", output);
            Ok(())
        }
        Err(reason) => Err(reason.into()),
    }
}
