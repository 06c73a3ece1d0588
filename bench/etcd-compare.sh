#!/usr/bin/env bash
# bench/etcd-compare.sh — Shoal's coordination store beside etcd: the same machine, the same
# run, the same load generator (`shoal bench kv`, which drives etcd through its v3 gRPC API).
#
# What it does:
#   1. installs Debian's etcd-server if `etcd` is missing (apt-get; needs root or sudo);
#   2. starts a 3-member etcd and a 3-node Shoal on loopback, data in a fresh temporary
#      directory on the same disk, both fsyncing their log before acknowledging a commit;
#   3. runs each workload on Shoal and on etcd, one after the other (never both at once);
#   4. prints a Markdown table with throughput, latency and the Shoal/etcd ratios, and the
#      CPU that the servers, the load generator and everything else on the machine used;
#   5. stops every process it started and removes the data on exit (also on Ctrl-C).
#
# Durability, the same on both:
#   etcd 3.4 defaults: the raft WAL is fdatasync'ed before a proposal is acknowledged
#     (there is no --unsafe-no-fsync); bbolt commits its batch every 100 ms / 10,000 ops
#     (--backend-batch-interval/limit defaults: the WAL is what makes a write durable);
#     --snapshot-count 100000, --heartbeat-interval 100, --election-timeout 1000,
#     --quota-backend-bytes 2 GiB, no auto-compaction.
#   Shoal defaults: the Raft log is fdatasync'ed before a message is sent or an entry
#     counted as persisted (group commit: one fsync covers every entry that arrived
#     during the previous one); tick 20 ms; snapshot every 100,000 entries; quota 2 GiB.
#
# Routing, the same on both (see `shoal bench kv --help`): writes and linearizable reads go
# to the leader, serializable reads and watches are spread over the three members.
#
# Usage:
#   bench/etcd-compare.sh                  # every workload, about 2 minutes
#   SCALE=3 bench/etcd-compare.sh          # 3x the requests per workload
#   CASES="put-64 get-lin-64" bench/etcd-compare.sh
#   KEEP=1 bench/etcd-compare.sh           # keep the data, logs and JSON results
# Environment: SHOAL_BIN (default target/release/shoal, built if absent), SHOAL_LABEL (what to
# call that binary in the table; default the work tree's commit), BASE_PORT (default
# 27100: Shoal on BASE+1..3, etcd clients on BASE+11..13, etcd peers on BASE+21..23),
# WORK_DIR (default a new directory under ${TMPDIR:-/tmp}).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=${SCALE:-1}
BASE_PORT=${BASE_PORT:-27100}
CASES=${CASES:-"put-1 put-16 put-64 get-lin-64 get-ser-64 txn-cas-16 watch-100"}
SHOAL_BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
# How long a cluster may take to elect a leader and answer, seconds.
READY_TIMEOUT_S=30

log() { printf '[etcd-compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ----- prerequisites -----

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else die "need root (or password-less sudo) to run: $*"
    fi
}

install_debian_packages() {
    log "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    install_debian_packages "${missing[@]}"
fi
# The Debian package starts a system etcd on 2379 where systemd runs; we never use that one.

if [[ ! -x $SHOAL_BIN ]]; then
    log "building shoal (cargo build --release -p shoal)"
    (cd "$ROOT" && cargo build --release -p shoal)
fi

for port in $((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)) \
    $((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)) \
    $((BASE_PORT + 21)) $((BASE_PORT + 22)) $((BASE_PORT + 23)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; pick other ports with BASE_PORT=..."
    fi
done

# ----- processes, and cleaning up after them -----

WORK_DIR=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/shoal-etcd-compare.XXXXXX")}
mkdir -p "$WORK_DIR/results"
SHOAL_PIDS=()
ETCD_PIDS=()

cleanup() {
    local pids=("${SHOAL_PIDS[@]}" "${ETCD_PIDS[@]}")
    if ((${#pids[@]})); then
        kill "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -9 "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept data, logs and results in $WORK_DIR"
    else
        rm -rf "$WORK_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SHOAL_EP=127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 3))
ETCD_EP=127.0.0.1:$((BASE_PORT + 11)),127.0.0.1:$((BASE_PORT + 12)),127.0.0.1:$((BASE_PORT + 13))

start_shoal() {
    local peers=1=127.0.0.1:$((BASE_PORT + 1)),2=127.0.0.1:$((BASE_PORT + 2)),3=127.0.0.1:$((BASE_PORT + 3))
    for i in 1 2 3; do
        "$SHOAL_BIN" server --id "$i" --data-dir "$WORK_DIR/shoal-$i" \
            --listen "127.0.0.1:$((BASE_PORT + i))" --peers "$peers" \
            >"$WORK_DIR/shoal-$i.log" 2>&1 &
        SHOAL_PIDS+=($!)
    done
}

start_etcd() {
    local cluster=""
    for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((BASE_PORT + 20 + i))"; done
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$WORK_DIR/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 20 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 20 + i))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token shoal-etcd-compare \
            --logger zap --log-level warn \
            >"$WORK_DIR/etcd-$i.log" 2>&1 &
        ETCD_PIDS+=($!)
    done
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$SHOAL_BIN" cluster status --endpoints "$SHOAL_EP" -o json 2>/dev/null | jq -e '.leader != null' >/dev/null; do
        ((SECONDS < deadline)) || die "Shoal elected no leader within ${READY_TIMEOUT_S} s (logs: $WORK_DIR/shoal-*.log; KEEP=1 keeps them)"
        sleep 0.2
    done
    for i in 1 2 3; do
        until curl -fsS "http://127.0.0.1:$((BASE_PORT + 10 + i))/health" 2>/dev/null | jq -e '.health == "true"' >/dev/null; do
            ((SECONDS < deadline)) || die "etcd member $i is not healthy within ${READY_TIMEOUT_S} s (logs: $WORK_DIR/etcd-$i.log)"
            sleep 0.2
        done
    done
}

# ----- CPU accounting from /proc -----

CLK_TCK=$(getconf CLK_TCK)

# User + system ticks of the given processes (all their threads).
proc_ticks() {
    local total=0 pid
    for pid in "$@"; do
        if [[ -r /proc/$pid/stat ]]; then
            # Fields 14 and 15 (utime, stime), counted after the ")" that ends the name.
            total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
        fi
    done
    echo "$total"
}

# Busy ticks of the whole machine (every core): all but idle and iowait.
machine_busy_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# ----- workloads -----

case_args() {
    local n
    case $1 in
        put-1) n=$((3000 * SCALE)); echo "put --clients 1 --conns 1 --total $n --val-size 256 --key-space 100000" ;;
        put-16) n=$((20000 * SCALE)); echo "put --clients 16 --conns 2 --total $n --val-size 256 --key-space 100000" ;;
        put-64) n=$((60000 * SCALE)); echo "put --clients 64 --conns 8 --total $n --val-size 256 --key-space 100000" ;;
        get-lin-64) n=$((100000 * SCALE)); echo "get --clients 64 --conns 8 --total $n --val-size 256 --key-space 10000" ;;
        get-ser-64) n=$((100000 * SCALE)); echo "get --serializable --clients 64 --conns 8 --total $n --val-size 256 --key-space 10000" ;;
        txn-cas-16) n=$((10000 * SCALE)); echo "txn-cas --clients 16 --conns 2 --total $n --val-size 256 --key-space 10000" ;;
        watch-100) n=$((1000 * SCALE)); echo "watch --clients 100 --conns 4 --total $n --rate-limit 100 --val-size 256 --key-space 10" ;;
        *) die "unknown case $1 (known: put-1 put-16 put-64 get-lin-64 get-ser-64 txn-cas-16 watch-100)" ;;
    esac
}

# run_case LABEL TARGET: one workload on one target; JSON and CPU figures into results/.
run_case() {
    local label=$1 target=$2 endpoints pids out
    if [[ $target == shoal ]]; then endpoints=$SHOAL_EP; pids=("${SHOAL_PIDS[@]}")
    else endpoints=$ETCD_EP; pids=("${ETCD_PIDS[@]}"); fi
    out=$WORK_DIR/results/$label.$target
    local servers_before busy_before started
    servers_before=$(proc_ticks "${pids[@]}")
    busy_before=$(machine_busy_ticks)
    started=$(date +%s.%N)
    # shellcheck disable=SC2046 # the case's arguments are words on purpose
    if ! { TIMEFORMAT='%U %S'; time "$SHOAL_BIN" bench kv $(case_args "$label") \
        --target "$target" --endpoints "$endpoints" -o json >"$out.json" 2>"$out.err"; } 2>"$out.time"; then
        log "$label on $target failed: $(tail -n 3 "$out.err")"
        echo '{}' >"$out.json"
    fi
    local servers_after busy_after ended
    servers_after=$(proc_ticks "${pids[@]}")
    busy_after=$(machine_busy_ticks)
    ended=$(date +%s.%N)
    # wall s, servers' CPU s, load generator's CPU s, and everything else's CPU (the other
    # store idling, other users of the machine) in % of the machine: a disturbed run.
    awk -v t0="$started" -v t1="$ended" -v s=$((servers_after - servers_before)) \
        -v m=$((busy_after - busy_before)) -v hz="$CLK_TCK" -v gen="$(awk '{print $1 + $2}' "$out.time")" \
        -v cores="$(nproc)" \
        'BEGIN { others = m / hz - s / hz - gen; if (others < 0) others = 0;
                 printf "%.2f %.2f %.2f %.0f\n", t1 - t0, s / hz, gen, 100 * others / ((t1 - t0) * cores) }' >"$out.cpu"
}

# ----- the run -----

start_shoal
start_etcd
wait_ready

ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')
SHOAL_REV=${SHOAL_LABEL:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
log "etcd $ETCD_VERSION and Shoal $SHOAL_REV ready; data in $WORK_DIR"

idx=0
for label in $CASES; do
    case_args "$label" >/dev/null
    # Alternate which store goes first, so that neither always runs on a warmer machine.
    if ((idx % 2 == 0)); then order="shoal etcd"; else order="etcd shoal"; fi
    for target in $order; do
        log "$label on $target: shoal bench kv $(case_args "$label")"
        run_case "$label" "$target"
    done
    idx=$((idx + 1))
done

# ----- the table -----

# field FILE JQ: a number from a result, or "-" when the run failed.
field() { jq -r "($2) // \"-\"" "$1" 2>/dev/null || echo -; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
fmt0() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.0f", x }'; }
# CPU microseconds per request: (servers' + load generator's CPU seconds) / requests.
per_request_us() { awk -v s="$1" -v g="$2" -v n="$3" 'BEGIN { if (n == "-" || n == 0) print "-"; else printf "%.0f + %.0f", s / n * 1e6, g / n * 1e6 }'; }
fmt1() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.1f", x }'; }

echo
echo "Shoal $SHOAL_REV vs etcd $ETCD_VERSION, 3 members each on loopback, fsync per commit on both;"
echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB RAM;" \
    "data on $(df --output=source "$WORK_DIR" | tail -1) ($(df --output=fstype "$WORK_DIR" | tail -1 | tr -d ' ')); load before: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| workload | Shoal req/s | etcd req/s | Shoal ÷ etcd | Shoal p50 / p99 ms | etcd p50 / p99 ms | p99 Shoal ÷ etcd | errors S / e | CPU µs/req servers + bench, S / e | others' CPU %, S / e |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for label in $CASES; do
    s=$WORK_DIR/results/$label.shoal
    e=$WORK_DIR/results/$label.etcd
    if [[ $label == watch-* ]]; then
        s_rate=$(field "$s.json" .events_per_s); e_rate=$(field "$e.json" .events_per_s)
        s_p50=$(field "$s.json" .delivery_latency.p50_ms); s_p99=$(field "$s.json" .delivery_latency.p99_ms)
        e_p50=$(field "$e.json" .delivery_latency.p50_ms); e_p99=$(field "$e.json" .delivery_latency.p99_ms)
        s_err=$(field "$s.json" '(.events_expected - .events)'); e_err=$(field "$e.json" '(.events_expected - .events)')
        name="$label (events/s; put ack → event)"
        s_n=$(field "$s.json" .events); e_n=$(field "$e.json" .events)
    else
        s_rate=$(field "$s.json" .requests_per_s); e_rate=$(field "$e.json" .requests_per_s)
        s_p50=$(field "$s.json" .latency.p50_ms); s_p99=$(field "$s.json" .latency.p99_ms)
        e_p50=$(field "$e.json" .latency.p50_ms); e_p99=$(field "$e.json" .latency.p99_ms)
        s_err=$(field "$s.json" .errors); e_err=$(field "$e.json" .errors)
        name=$label
        s_n=$(field "$s.json" .requests); e_n=$(field "$e.json" .requests)
    fi
    read -r _ s_srv s_gen s_oth <"$s.cpu"
    read -r _ e_srv e_gen e_oth <"$e.cpu"
    s_cpu=$(per_request_us "$s_srv" "$s_gen" "$s_n"); e_cpu=$(per_request_us "$e_srv" "$e_gen" "$e_n")
    echo "| $name | $(fmt0 "$s_rate") | $(fmt0 "$e_rate") | **$(ratio "$s_rate" "$e_rate")** | $(fmt1 "$s_p50") / $(fmt1 "$s_p99") | $(fmt1 "$e_p50") / $(fmt1 "$e_p99") | $(ratio "$s_p99" "$e_p99") | $s_err / $e_err | $s_cpu / $e_cpu | $s_oth / $e_oth |"
done
echo
echo "Each row: shoal bench kv <workload> --target shoal|etcd -o json (arguments above); ratios are Shoal ÷ etcd"
echo "(throughput: higher is better for Shoal; p99: lower is better). CPU µs/req: the three servers'"
echo "and the load generator's user + system CPU (/proc) per completed request (watch: per event)."
echo "'others' is the CPU used by anything else during the row (the idle store, other users of the"
echo "machine) in % of all cores: more than a few % means the row was disturbed."
