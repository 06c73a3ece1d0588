//! `shoal kv …` and `shoal lease …`: the coordination store from the command line.
//!
//! Output: text for people (`kv get` prints just the value), `-o json` for programs. Keys and
//! values are printed as the strings that were put; bytes that are not UTF-8 are escaped as
//! `\xNN` and the exact bytes are added in base64 (`key_base64`, `value_base64`), so nothing
//! is lost. Exit codes: 0 success, 1 failure (reason on stderr), 2 usage error, 3 a compare
//! that failed (`kv cas`, `kv txn`: nothing changed).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shoal_meta::client::{self, ClientOptions, MetaClient};
use shoal_meta::proto::{self, compare, request_op, response_op, KeyValue};
use shoal_meta::store::prefix_end;

use crate::cli::{GlobalArgs, OutputFormat};

/// Exit code of a compare that failed (nothing changed).
pub const EXIT_COMPARE_FAILED: u8 = 3;

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a value.
    #[command(
        after_help = "Examples:\n  shoal kv put greeting hello\n  shoal kv put config.json < config.json   # value from standard input\n  shoal kv put session/a alive --lease 7\n  shoal kv put queue/ job --sequential    # creates queue/000…0042"
    )]
    Put(PutArgs),
    /// Read a key, a prefix or a range (linearizable unless --serializable).
    #[command(
        after_help = "Examples:\n  shoal kv get greeting\n  shoal kv get config/ --prefix -o json\n  shoal kv get greeting --rev 12\n  shoal kv get greeting --serializable    # any member, possibly stale"
    )]
    Get(GetArgs),
    /// Delete a key or every key under a prefix.
    #[command(after_help = "Examples:\n  shoal kv del greeting\n  shoal kv del config/ --prefix")]
    Del(DelArgs),
    /// Compare-and-swap: set KEY to NEW only if it exists and holds EXPECTED. Exits 0 when it
    /// swapped, 3 when the comparison failed (nothing changed), 1 on any other failure.
    #[command(after_help = "Example:\n  shoal kv cas counter 41 42 && echo swapped")]
    Cas(CasArgs),
    /// A transaction: if every --if holds, run the --then operations, else the --else ones,
    /// atomically at one revision. Exits 0 when the comparisons held, 3 when they did not.
    #[command(
        after_help = "Compares: value(KEY) OP VALUE, version(KEY) OP N, create(KEY) OP N, mod(KEY) OP N,\nlease(KEY) OP N, with OP one of = != < >. Operations: put KEY VALUE, get KEY, del KEY,\nget/del with a trailing * for a prefix (\"get config/*\").\n\nExample:\n  shoal kv txn --if 'value(leader) = node-1' --then 'put term 8' --then 'get term' --else 'get leader'\n  shoal kv txn --if 'create(lock) = 0' --then 'put lock me'    # create only if absent"
    )]
    Txn(TxnArgs),
    /// Stream changes of a key or prefix: every event from --rev on, in order, exactly once,
    /// resuming on another member if one fails.
    #[command(
        after_help = "Examples:\n  shoal kv watch config/ --prefix\n  shoal kv watch greeting --rev 1 -o json     # one JSON object per event\n  shoal kv watch jobs/ --prefix --count 10     # exit after 10 events"
    )]
    Watch(WatchArgs),
    /// Forget versions older than REVISION (what is visible at REVISION stays readable).
    #[command(after_help = "Example:\n  shoal kv compact 1000")]
    Compact { revision: i64 },
}

#[derive(Args, Debug)]
pub struct PutArgs {
    pub key: String,
    /// The value; read from standard input when omitted (for large or binary values).
    pub value: Option<String>,
    /// Attach the key to this lease: it vanishes when the lease expires or is revoked.
    #[arg(long, default_value_t = 0)]
    pub lease: i64,
    /// Create KEY followed by a 20-digit sequence number (ZooKeeper's sequential node);
    /// prints the key created.
    #[arg(long)]
    pub sequential: bool,
    /// Also print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub key: String,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Every key >= KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Keys in [KEY, RANGE_END).
    #[arg(long)]
    pub range_end: Option<String>,
    /// Read at this past revision.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Read from any member's local state (faster, possibly stale) instead of linearizably.
    #[arg(long)]
    pub serializable: bool,
    /// At most this many keys (0: all, fetched page by page).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Print only keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Print only the number of keys.
    #[arg(long)]
    pub count_only: bool,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    pub key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Args, Debug)]
pub struct CasArgs {
    pub key: String,
    pub expected: String,
    pub new: String,
}

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// A comparison, e.g. 'value(k) = v' or 'version(k) > 2' (repeatable; all must hold).
    #[arg(long = "if")]
    pub compares: Vec<String>,
    /// An operation when the comparisons hold: 'put K V', 'get K', 'del K' (repeatable).
    #[arg(long = "then")]
    pub then_ops: Vec<String>,
    /// An operation when they do not (repeatable).
    #[arg(long = "else")]
    pub else_ops: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    pub key: String,
    #[arg(long)]
    pub prefix: bool,
    /// First revision to deliver (default: changes from now on).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Include each event's previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Exit after this many events (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL (seconds, or a duration like 30s, 5m); prints its id.
    #[command(
        after_help = "Example:\n  id=$(shoal lease grant 30 -o json | jq .id)\n  shoal kv put service/me 10.0.0.5 --lease $id\n  shoal lease keepalive $id &"
    )]
    Grant { ttl: String },
    /// Keep a lease alive (renews every third of its TTL until interrupted, or once).
    #[command(after_help = "Example:\n  shoal lease keepalive 42\n  shoal lease keepalive 42 --once")]
    Keepalive {
        id: i64,
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease now, deleting its keys.
    #[command(after_help = "Example:\n  shoal lease revoke 42")]
    Revoke { id: i64 },
    /// List the leases with their TTL and remaining time.
    #[command(after_help = "Example:\n  shoal lease list -o json")]
    List,
    /// One lease's TTL, remaining time and (with --keys) its keys.
    #[command(after_help = "Example:\n  shoal lease ttl 42 --keys")]
    Ttl {
        id: i64,
        #[arg(long)]
        keys: bool,
    },
}

pub fn meta_client(global: &GlobalArgs) -> anyhow::Result<MetaClient> {
    let options = ClientOptions {
        request_timeout: global.timeout,
        retry_timeout: global.timeout,
        ..ClientOptions::default()
    };
    MetaClient::with_options(global.endpoints.clone(), options).context("invalid --endpoints")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

/// A string for bytes: UTF-8 as is, other bytes as `\xNN`.
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn bytes_json(object: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    object.insert(name.to_string(), Value::String(display_bytes(bytes)));
    if std::str::from_utf8(bytes).is_err() {
        object.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
}

pub fn kv_json(kv: &KeyValue) -> Value {
    let mut object = serde_json::Map::new();
    bytes_json(&mut object, "key", &kv.key);
    bytes_json(&mut object, "value", &kv.value);
    object.insert("create_revision".into(), json!(kv.create_revision));
    object.insert("mod_revision".into(), json!(kv.mod_revision));
    object.insert("version".into(), json!(kv.version));
    object.insert("lease".into(), json!(kv.lease));
    Value::Object(object)
}

fn print_json(value: &Value) {
    outln!("{value}");
}

fn revision(header: &Option<proto::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

pub fn run(global: &GlobalArgs, command: KvCommand) -> anyhow::Result<ExitCode> {
    let client = meta_client(global)?;
    let json = global.output == OutputFormat::Json;
    runtime()?.block_on(async move {
        match command {
            KvCommand::Put(args) => {
                let value = match args.value {
                    Some(value) => value.into_bytes(),
                    None => {
                        use std::io::Read;
                        let mut value = Vec::new();
                        std::io::stdin()
                            .take(shoal_meta::limits::VALUE_BYTES_MAX as u64 + 1)
                            .read_to_end(&mut value)
                            .context("reading the value from standard input")?;
                        value
                    }
                };
                let response = client
                    .put_with(proto::PutRequest {
                        key: args.key.into_bytes(),
                        value,
                        lease: args.lease,
                        prev_kv: args.prev_kv,
                        sequential: args.sequential,
                        ignore_value: false,
                    })
                    .await
                    .context("put failed")?;
                if json {
                    let mut out =
                        json!({"revision": revision(&response.header), "key": display_bytes(&response.key)});
                    if let Some(prev) = &response.prev_kv {
                        out["prev_kv"] = kv_json(prev);
                    }
                    print_json(&out);
                } else {
                    if args.sequential {
                        outln!("{}", display_bytes(&response.key));
                    } else {
                        outln!("OK");
                    }
                    if let Some(prev) = &response.prev_kv {
                        outln!("{}\n{}", display_bytes(&prev.key), display_bytes(&prev.value));
                    }
                }
            }
            KvCommand::Get(args) => get(&client, args, json).await?,
            KvCommand::Del(args) => {
                let range_end = if args.prefix {
                    prefix_end(args.key.as_bytes())
                } else {
                    Vec::new()
                };
                let response = client
                    .delete(proto::DeleteRangeRequest {
                        key: args.key.into_bytes(),
                        range_end,
                        prev_kv: args.prev_kv,
                    })
                    .await
                    .context("delete failed")?;
                if json {
                    print_json(&json!({
                        "revision": revision(&response.header),
                        "deleted": response.deleted,
                        "prev_kvs": response.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
                    }));
                } else {
                    outln!("{}", response.deleted);
                    for kv in &response.prev_kvs {
                        outln!("{}\n{}", display_bytes(&kv.key), display_bytes(&kv.value));
                    }
                }
            }
            KvCommand::Cas(args) => {
                let response = client
                    .txn(proto::TxnRequest {
                        compare: vec![client::compare_value(
                            args.key.as_bytes(),
                            args.expected.as_bytes(),
                        )],
                        success: vec![client::put_op(args.key.as_bytes(), args.new.as_bytes(), 0)],
                        failure: vec![client::get_op(args.key.as_bytes())],
                    })
                    .await
                    .context("cas failed")?;
                let current = match response.responses.first().and_then(|r| r.response.as_ref()) {
                    Some(response_op::Response::Range(r)) if !response.succeeded => r.kvs.first().cloned(),
                    _ => None,
                };
                if json {
                    let mut out =
                        json!({"succeeded": response.succeeded, "revision": revision(&response.header)});
                    if !response.succeeded {
                        out["current"] = current.as_ref().map_or(Value::Null, kv_json);
                    }
                    print_json(&out);
                } else if response.succeeded {
                    outln!("OK");
                } else {
                    match &current {
                        Some(kv) => eprintln!(
                            "compare failed: {} holds {:?}",
                            args.key,
                            display_bytes(&kv.value)
                        ),
                        None => eprintln!("compare failed: {} does not exist", args.key),
                    }
                }
                if !response.succeeded {
                    return Ok(ExitCode::from(EXIT_COMPARE_FAILED));
                }
            }
            KvCommand::Txn(args) => {
                let request = parse_txn(&args)?;
                let response = client.txn(request).await.context("txn failed")?;
                if json {
                    print_json(&txn_json(&response));
                } else {
                    outln!("{}", if response.succeeded { "SUCCESS" } else { "FAILURE" });
                    for op in &response.responses {
                        match &op.response {
                            Some(response_op::Response::Put(_)) => outln!("OK"),
                            Some(response_op::Response::DeleteRange(d)) => outln!("{}", d.deleted),
                            Some(response_op::Response::Range(r)) => {
                                for kv in &r.kvs {
                                    outln!("{}\n{}", display_bytes(&kv.key), display_bytes(&kv.value));
                                }
                            }
                            None => {}
                        }
                    }
                }
                if !response.succeeded {
                    return Ok(ExitCode::from(EXIT_COMPARE_FAILED));
                }
            }
            KvCommand::Watch(args) => watch(&client, args, json).await?,
            KvCommand::Compact { revision: rev } => {
                let response = client.compact(rev).await.context("compact failed")?;
                if json {
                    print_json(&json!({"revision": revision(&response.header), "compacted": rev}));
                } else {
                    outln!("compacted revisions below {rev}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn get(client: &MetaClient, args: GetArgs, json: bool) -> anyhow::Result<()> {
    let key = args.key.clone().into_bytes();
    let range_end = if args.prefix {
        prefix_end(&key)
    } else if args.from_key {
        vec![0]
    } else {
        args.range_end.clone().map(String::into_bytes).unwrap_or_default()
    };
    let ranged = !range_end.is_empty();
    let mut request = proto::RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev,
        serializable: args.serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        max_bytes: 0,
    };
    // Page through the range at one revision; text output streams page by page.
    let mut all = Vec::new();
    let mut header_revision = 0;
    let mut count = 0;
    let mut remaining = if args.limit > 0 { args.limit } else { i64::MAX };
    loop {
        let response = client.range(request.clone()).await.context("get failed")?;
        if header_revision == 0 {
            header_revision = revision(&response.header);
            count = response.count;
            if request.revision == 0 {
                request.revision = header_revision;
            }
        }
        remaining -= response.kvs.len() as i64;
        if let Some(last) = response.kvs.last() {
            let mut next = last.key.clone();
            next.push(0);
            request.key = next;
        }
        if !json && !args.count_only {
            for kv in &response.kvs {
                if ranged || args.keys_only {
                    outln!("{}", display_bytes(&kv.key));
                }
                if !args.keys_only {
                    outln!("{}", display_bytes(&kv.value));
                }
            }
        }
        all.extend(response.kvs);
        if !response.more || remaining <= 0 || args.count_only {
            break;
        }
        if args.limit > 0 {
            request.limit = remaining;
        }
    }
    if json {
        let mut out = json!({
            "revision": header_revision,
            "kvs": all.iter().map(kv_json).collect::<Vec<_>>(),
        });
        if args.count_only || ranged {
            out["count"] = json!(count);
        }
        print_json(&out);
    } else if args.count_only {
        outln!("{count}");
    }
    Ok(())
}

async fn watch(client: &MetaClient, args: WatchArgs, json: bool) -> anyhow::Result<()> {
    let key = args.key.into_bytes();
    let range_end = if args.prefix { prefix_end(&key) } else { Vec::new() };
    let mut watcher = client
        .watch(proto::WatchRequest {
            key,
            range_end,
            start_revision: args.rev,
            prev_kv: args.prev_kv,
            ..Default::default()
        })
        .await
        .context("watch failed")?;
    let mut n_events = 0u64;
    loop {
        let response = watcher.next().await.context("watch failed")?;
        for event in &response.events {
            let kv = event.kv.clone().unwrap_or_default();
            let deleted = event.r#type == proto::event::EventType::Delete as i32;
            if json {
                let mut out = json!({"type": if deleted { "DELETE" } else { "PUT" }, "kv": kv_json(&kv)});
                if let Some(prev) = &event.prev_kv {
                    out["prev_kv"] = kv_json(prev);
                }
                print_json(&out);
            } else if deleted {
                outln!("DELETE\n{}", display_bytes(&kv.key));
            } else {
                outln!("PUT\n{}\n{}", display_bytes(&kv.key), display_bytes(&kv.value));
            }
            n_events += 1;
            if args.count.is_some_and(|count| n_events >= count) {
                return Ok(());
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

fn txn_json(response: &proto::TxnResponse) -> Value {
    let responses: Vec<Value> = response
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(response_op::Response::Put(p)) => json!({"put": {"revision": revision(&p.header)}}),
            Some(response_op::Response::DeleteRange(d)) => json!({"delete": {"deleted": d.deleted}}),
            Some(response_op::Response::Range(r)) => {
                json!({"get": {"kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>()}})
            }
            None => Value::Null,
        })
        .collect();
    json!({"succeeded": response.succeeded, "revision": revision(&response.header), "responses": responses})
}

/// Parses `value(k) = v`, `version(k) > 2`, … into a compare.
fn parse_compare(text: &str) -> anyhow::Result<proto::Compare> {
    let usage = || {
        format!(
            "invalid --if {text:?}: expected TARGET(KEY) OP VALUE, e.g. 'value(k) = v' or 'version(k) > 2'"
        )
    };
    let open = text.find('(').with_context(usage)?;
    let close = text.find(')').with_context(usage)?;
    if close < open {
        bail!(usage());
    }
    let target = text[..open].trim();
    let key = text[open + 1..close].trim().trim_matches('"').as_bytes().to_vec();
    let rest = text[close + 1..].trim_start();
    let (result, operand) = if let Some(r) = rest.strip_prefix("!=") {
        (compare::Result::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (compare::Result::Equal, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (compare::Result::Greater, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (compare::Result::Less, r)
    } else {
        bail!(usage());
    };
    let operand = operand.trim().trim_matches('"');
    let number = || -> anyhow::Result<i64> {
        operand.parse().with_context(|| {
            format!("invalid --if {text:?}: {target} compares with a number, not {operand:?}")
        })
    };
    let (target, union) = match target {
        "value" => (
            compare::Target::Value,
            compare::TargetUnion::Value(operand.as_bytes().to_vec()),
        ),
        "version" => (compare::Target::Version, compare::TargetUnion::Version(number()?)),
        "create" => (
            compare::Target::Create,
            compare::TargetUnion::CreateRevision(number()?),
        ),
        "mod" => (compare::Target::Mod, compare::TargetUnion::ModRevision(number()?)),
        "lease" => (compare::Target::Lease, compare::TargetUnion::Lease(number()?)),
        other => {
            bail!("invalid --if {text:?}: unknown target {other:?} (value, version, create, mod, lease)")
        }
    };
    Ok(proto::Compare {
        result: result as i32,
        target: target as i32,
        key,
        target_union: Some(union),
    })
}

/// Parses `put K V`, `get K`, `del K` (a trailing `*` on K means the prefix).
fn parse_op(text: &str, flag: &str) -> anyhow::Result<proto::RequestOp> {
    let mut words = text.splitn(3, char::is_whitespace).filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or_default();
    let key = words.next().with_context(|| {
        format!("invalid {flag} {text:?}: expected 'put KEY VALUE', 'get KEY' or 'del KEY'")
    })?;
    let (key, range_end) = match key.strip_suffix('*') {
        Some(prefix) => (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes())),
        None => (key.as_bytes().to_vec(), Vec::new()),
    };
    let request = match verb {
        "put" => {
            if !range_end.is_empty() {
                bail!("invalid {flag} {text:?}: put takes one key, not a prefix");
            }
            let value = words
                .next()
                .with_context(|| format!("invalid {flag} {text:?}: put needs a value"))?;
            request_op::Request::Put(proto::PutRequest {
                key,
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })
        }
        "get" => request_op::Request::Range(proto::RangeRequest {
            key,
            range_end,
            ..Default::default()
        }),
        "del" | "delete" => request_op::Request::DeleteRange(proto::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: false,
        }),
        other => bail!("invalid {flag} {text:?}: unknown operation {other:?} (put, get, del)"),
    };
    Ok(proto::RequestOp {
        request: Some(request),
    })
}

fn parse_txn(args: &TxnArgs) -> anyhow::Result<proto::TxnRequest> {
    if args.then_ops.is_empty() && args.else_ops.is_empty() {
        bail!("the transaction has no operations: give --then and/or --else");
    }
    Ok(proto::TxnRequest {
        compare: args
            .compares
            .iter()
            .map(|c| parse_compare(c))
            .collect::<anyhow::Result<_>>()?,
        success: args
            .then_ops
            .iter()
            .map(|o| parse_op(o, "--then"))
            .collect::<anyhow::Result<_>>()?,
        failure: args
            .else_ops
            .iter()
            .map(|o| parse_op(o, "--else"))
            .collect::<anyhow::Result<_>>()?,
    })
}

/// Parses a TTL: whole seconds (`30`) or a duration (`30s`, `5m`).
fn parse_ttl(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let duration = humantime::parse_duration(text)
        .with_context(|| format!("invalid TTL {text:?}: give seconds (30) or a duration (30s, 5m)"))?;
    Ok(duration.as_secs() as i64)
}

pub fn run_lease(global: &GlobalArgs, command: LeaseCommand) -> anyhow::Result<ExitCode> {
    let client = meta_client(global)?;
    let json = global.output == OutputFormat::Json;
    runtime()?.block_on(async move {
        match command {
            LeaseCommand::Grant { ttl } => {
                let ttl = parse_ttl(&ttl)?;
                let response = client.lease_grant(ttl).await.context("lease grant failed")?;
                if json {
                    print_json(&json!({"id": response.id, "ttl": response.ttl_seconds}));
                } else {
                    outln!("lease {} granted with TTL {}s", response.id, response.ttl_seconds);
                }
            }
            LeaseCommand::Keepalive { id, once } => loop {
                let ttl = client.lease_keep_alive(id).await.context("lease keepalive failed")?;
                if json {
                    print_json(&json!({"id": id, "ttl": ttl}));
                } else {
                    outln!("lease {id} kept alive with TTL {ttl}s");
                }
                if once {
                    break;
                }
                tokio::time::sleep(Duration::from_millis((ttl.max(1) as u64 * 1000) / 3)).await;
            },
            LeaseCommand::Revoke { id } => {
                let response = client.lease_revoke(id).await.context("lease revoke failed")?;
                if json {
                    print_json(&json!({"id": id, "revoked": true, "keys_deleted": response.n_keys_deleted}));
                } else {
                    outln!("lease {id} revoked ({} keys deleted)", response.n_keys_deleted);
                }
            }
            LeaseCommand::List => {
                let leases = client.lease_list().await.context("lease list failed")?;
                if json {
                    let leases: Vec<Value> = leases
                        .iter()
                        .map(|l| json!({"id": l.id, "ttl": l.granted_ttl_seconds, "remaining_ms": l.remaining_ms}))
                        .collect();
                    print_json(&json!({ "leases": leases }));
                } else {
                    outln!("{} leases", leases.len());
                    for l in &leases {
                        outln!("{}\tttl {}s\tremaining {}", l.id, l.granted_ttl_seconds, remaining_text(l.remaining_ms));
                    }
                }
            }
            LeaseCommand::Ttl { id, keys } => {
                let lease = client.lease_time_to_live(id, keys).await.context("lease ttl failed")?;
                if json {
                    print_json(&json!({
                        "id": lease.id,
                        "ttl": lease.granted_ttl_seconds,
                        "remaining_ms": lease.remaining_ms,
                        "n_keys": lease.n_keys,
                        "keys": lease.keys.iter().map(|k| display_bytes(k)).collect::<Vec<_>>(),
                    }));
                } else {
                    outln!(
                        "lease {} granted with TTL {}s, remaining {}, {} keys",
                        lease.id,
                        lease.granted_ttl_seconds,
                        remaining_text(lease.remaining_ms),
                        lease.n_keys
                    );
                    for key in &lease.keys {
                        outln!("{}", display_bytes(key));
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn remaining_text(remaining_ms: i64) -> String {
    if remaining_ms < 0 {
        "unknown".to_string()
    } else {
        format!("{:.1}s", remaining_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_text_parses_and_bad_text_is_refused() {
        // Goal: the --if/--then/--else mini-language maps to the right compares and ops, and
        // malformed text gets an error that names it.
        let c = parse_compare("version(k) > 2").unwrap();
        assert_eq!(c.result, compare::Result::Greater as i32);
        assert_eq!(c.target_union, Some(compare::TargetUnion::Version(2)));
        let c = parse_compare("value(\"a b\") != \"x\"").unwrap();
        assert_eq!(
            (c.key.as_slice(), c.result),
            (&b"a b"[..], compare::Result::NotEqual as i32)
        );
        assert!(parse_compare("version(k) > two").is_err());
        assert!(parse_compare("size(k) = 1").is_err());
        let op = parse_op("put k hello world", "--then").unwrap();
        let Some(request_op::Request::Put(put)) = op.request else {
            panic!()
        };
        assert_eq!(put.value, b"hello world");
        let op = parse_op("get config/*", "--then").unwrap();
        let Some(request_op::Request::Range(range)) = op.request else {
            panic!()
        };
        assert_eq!(range.range_end, b"config0".to_vec());
        assert!(parse_op("put k", "--then").is_err());
        assert!(parse_op("frob k", "--then").is_err());
    }

    #[test]
    fn non_utf8_bytes_are_escaped_and_kept_exactly() {
        // Goal: UTF-8 prints as is; other bytes are escaped and also kept exactly in base64.
        assert_eq!(display_bytes("héllo".as_bytes()), "héllo");
        assert_eq!(display_bytes(b"a\xffb"), "a\\xffb");
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"\xff\x00".to_vec(),
            ..Default::default()
        };
        let json = kv_json(&kv);
        assert_eq!(json["value_base64"], "/wA=");
        assert!(json.get("key_base64").is_none());
    }
}
