//! `shoal dev`: a whole local cluster for development: N `shoal server` child processes on
//! consecutive loopback ports, stopped together on Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of members (1, 3, 5 or 7; an odd number tolerates the most failures).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Where the members keep their data (kept after exit). Default: a temporary directory,
    /// deleted on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of member 1; member i listens on BASE_PORT + i - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
}

struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 7 {
        bail!("--nodes {} is out of range: give 1 to 7 members", args.nodes);
    }
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let base = args.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let endpoints: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", args.base_port as usize + i))
        .collect();
    for endpoint in &endpoints {
        if std::net::TcpListener::bind(endpoint).is_err() {
            bail!("{endpoint} is in use (another shoal dev?); pick other ports with --base-port");
        }
    }
    let peers = crate::server::peers_arg(&endpoints);
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    let mut members = Members(Vec::new());
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = i + 1;
        let dir = base.join(format!("node-{id}"));
        let log_path = base.join(format!("node-{id}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(&exe)
            .args([
                "server",
                "--id",
                &id.to_string(),
                "--listen",
                endpoint,
                "--peers",
                &peers,
            ])
            .arg("--data-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a member")?;
        members.0.push(child);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let client = shoal_meta::client::MetaClient::new(endpoints.clone())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if client.get("shoal/dev").await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster did not elect a leader within 30 s; see the logs in {}", base.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outln!("shoal dev: {} members up, data and logs in {}", args.nodes, base.display());
        outln!("  export SHOAL_ENDPOINTS={}", endpoints.join(","));
        outln!("  shoal kv put hello world && shoal kv get hello");
        outln!("Ctrl-C stops the cluster.");
        let mut check = tokio::time::interval(Duration::from_millis(500));
        // SIGTERM and SIGHUP stop the members too (Drop kills them); only SIGKILL of this
        // process leaves them running.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = hangup.recv() => return Ok(()),
                _ = check.tick() => {
                    for (i, child) in members.0.iter_mut().enumerate() {
                        if let Ok(Some(status)) = child.try_wait() {
                            bail!("member {} exited ({status}); see {}", i + 1, base.join(format!("node-{}.log", i + 1)).display());
                        }
                    }
                }
            }
        }
    })
}
