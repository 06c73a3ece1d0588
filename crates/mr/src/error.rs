use std::io;

/// Errors of the MapReduce library, worded for the person running the job.
#[derive(Debug, thiserror::Error)]
pub enum MrError {
    #[error("cannot read input {path}: {error}")]
    Input { path: String, error: io::Error },
    #[error("{0}")]
    NoInput(String),
    #[error("output folder {0} already holds output (part-r-* or _SUCCESS); pass --overwrite to replace it")]
    OutputExists(String),
    #[error("cannot write output folder {path}: {error}")]
    Output { path: String, error: io::Error },
    #[error("journal {path}: {reason}")]
    Journal { path: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot reach coordinator at {addr}: {reason}")]
    CoordinatorUnreachable { addr: String, reason: String },
    #[error("job failed: {0}")]
    JobFailed(String),
    #[error("{0}")]
    Rpc(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}
