//! `shoal bench kv`: a load generator for the coordination store in the spirit of etcd's
//! `benchmark` tool; it can drive etcd too, so both are measured by the same code.

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Args, Debug)]
pub struct BenchKvArgs {}

pub fn run(_global: &GlobalArgs, _args: BenchKvArgs) -> anyhow::Result<()> {
    anyhow::bail!("shoal bench kv is not implemented yet")
}
