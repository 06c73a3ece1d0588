//! Whole jobs on [`MemoryStorage`]: the coordinator and its in-process workers reach inputs,
//! the journal and the output folder only through the `Storage` seam, so a job whose paths
//! exist nowhere on disk runs, and leaves nothing on disk. The same job on the local file
//! system writes the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_mr::apps::for_each_word;
use shoal_mr::corpus::TextGenerator;
use shoal_mr::{
    AppChoice, Coordinator, CoordinatorConfig, JobConfig, LocalStorage, MemoryStorage, MrError, Storage,
};

fn text(seed: u64, bytes: u64) -> Vec<u8> {
    let mut out = Vec::new();
    TextGenerator::new(seed).write(&mut out, bytes).unwrap();
    out
}

fn reference_wordcount(texts: &[Vec<u8>]) -> Vec<String> {
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for t in texts {
        for_each_word(t, |w| *counts.entry(w.to_vec()).or_default() += 1);
    }
    counts
        .into_iter()
        .map(|(w, c)| format!("{}\t{c}", String::from_utf8(w).unwrap()))
        .collect()
}

fn job(root: &Path, app: AppChoice, storage: Arc<dyn Storage>) -> CoordinatorConfig {
    CoordinatorConfig::new(JobConfig {
        inputs: vec![format!("{}/in/*.txt", root.display())],
        output: root.join("out"),
        n_reduce: 3,
        app,
        // Several splits per file: split boundaries fall inside lines.
        split_size_bytes: 40_000,
        combine_small_files: false,
        overwrite: false,
        map_buffer_bytes: 64 << 10,
        reduce_buffer_bytes: 64 << 10,
    })
    .with_storage(storage)
}

async fn run(config: CoordinatorConfig) -> Result<Result<(), String>, MrError> {
    let coordinator = Coordinator::new(config)?;
    Ok(shoal_mr::run_local(coordinator, 2, None).await?.result)
}

fn wordcount() -> AppChoice {
    AppChoice::Builtin {
        name: "wordcount".into(),
        pattern: None,
    }
}

/// (file name, bytes) of every file under `dir` in memory, sorted.
fn files_under(mem: &MemoryStorage, dir: &Path) -> Vec<(String, Vec<u8>)> {
    mem.file_paths()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .map(|p| {
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            (name, mem.read_file(&p).unwrap())
        })
        .collect()
}

fn sorted_lines(files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut lines: Vec<String> = files
        .iter()
        .filter(|(name, _)| name.starts_with("part-r-"))
        .flat_map(|(_, bytes)| {
            String::from_utf8(bytes.clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// A root that does not exist on disk, with three generated inputs in `mem`.
fn memory_inputs(tmp: &Path, mem: &MemoryStorage) -> (PathBuf, Vec<Vec<u8>>) {
    let root = tmp.join("only-in-memory");
    let texts: Vec<Vec<u8>> = (0..3).map(|i| text(60 + i, 100_000)).collect();
    for (i, t) in texts.iter().enumerate() {
        mem.write_file(&root.join(format!("in/text-{i}.txt")), t).unwrap();
    }
    (root, texts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordcount_runs_entirely_on_memory_storage_and_matches_local_bytes() {
    // Goal: a whole job (splits inside lines, spills, shuffle, commit by rename, journal,
    // _SUCCESS) runs on MemoryStorage with nothing on disk, counts like the reference, and
    // writes byte for byte the part files the same job writes on the local file system.
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let (root, texts) = memory_inputs(tmp.path(), &mem);
    run(job(&root, wordcount(), Arc::new(mem.clone())))
        .await
        .unwrap()
        .unwrap();
    assert!(!root.exists(), "the job touched the disk at {}", root.display());
    let out = files_under(&mem, &root.join("out"));
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["_SUCCESS", "part-r-00000", "part-r-00001", "part-r-00002"]
    );
    assert_eq!(sorted_lines(&out), reference_wordcount(&texts));

    // The same job on the local file system.
    let disk = tmp.path().join("on-disk");
    for (i, t) in texts.iter().enumerate() {
        std::fs::create_dir_all(disk.join("in")).unwrap();
        std::fs::write(disk.join(format!("in/text-{i}.txt")), t).unwrap();
    }
    run(job(&disk, wordcount(), Arc::new(LocalStorage)))
        .await
        .unwrap()
        .unwrap();
    for (name, bytes) in &out {
        assert_eq!(
            &std::fs::read(disk.join("out").join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    assert!(!disk.join("out/_temporary").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_sort_jobs_on_memory_storage() {
    // Goal: streaming commands (fed from memory, their output copied into memory) and the sort
    // app (whose coordinator samples the inputs) run on MemoryStorage and equal references.
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let (root, texts) = memory_inputs(tmp.path(), &mem);
    let streaming = AppChoice::Streaming {
        mapper: "tr -cs A-Za-z '\\n' | grep . | sed 's/$/\\t1/'".into(),
        reducer: "awk -F'\\t' '{c[$1]+=$2} END {for (k in c) print k \"\\t\" c[k]}'".into(),
        combiner: None,
    };
    run(job(&root, streaming, Arc::new(mem.clone())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sorted_lines(&files_under(&mem, &root.join("out"))),
        reference_wordcount(&texts)
    );

    let sort = AppChoice::Builtin {
        name: "sort".into(),
        pattern: None,
    };
    let mut config = job(&root, sort, Arc::new(mem.clone()));
    config.job.output = root.join("sorted");
    run(config).await.unwrap().unwrap();
    let concat: Vec<u8> = files_under(&mem, &root.join("sorted"))
        .into_iter()
        .filter(|(name, _)| name.starts_with("part-r-"))
        .flat_map(|(_, bytes)| bytes)
        .collect();
    let mut lines: Vec<&[u8]> = texts
        .iter()
        .flat_map(|t| t.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    let expected: Vec<u8> = lines.iter().flat_map(|l| [*l, b"\n"].concat()).collect();
    assert_eq!(concat, expected);
    assert!(!root.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rules_hold_on_memory_storage() {
    // Goal: the output folder's rules are the committer's, not the local file system's: existing
    // output is refused without --overwrite and replaced with it, and a failed job leaves no
    // part-r-*, _SUCCESS or _temporary behind.
    let tmp = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::new();
    let (root, _) = memory_inputs(tmp.path(), &mem);
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    run(job(&root, wordcount(), storage.clone()))
        .await
        .unwrap()
        .unwrap();
    match run(job(&root, wordcount(), storage.clone())).await {
        Err(MrError::OutputExists(dir)) => assert_eq!(dir, root.join("out").display().to_string()),
        other => panic!("existing output was not refused: {other:?}"),
    }
    let failing = AppChoice::Streaming {
        mapper: "echo doomed >&2; exit 3".into(),
        reducer: "cat".into(),
        combiner: None,
    };
    let mut config = job(&root, failing, storage);
    config.job.overwrite = true;
    config.max_attempts = 1;
    let reason = run(config).await.unwrap().unwrap_err();
    assert!(reason.contains("doomed"), "{reason}");
    assert_eq!(files_under(&mem, &root.join("out")), Vec::new());
    assert!(!root.exists());
}
