#!/usr/bin/env bash
# Word count on a generated corpus: shoal mr (1 and 2 workers) against the single-threaded
# Rust floor and the GNU pipeline. Prints wall and CPU seconds of each and checks that
# shoal's output equals the floor's.
#
#   cargo build --release -p shoal && cargo build --release -p shoal-mr --example wordcount_floor
#   bench/mr-wordcount.sh [SIZE=1GiB] [WORKDIR=/tmp/shoal-bench]
set -euo pipefail
SIZE=${1:-1GiB}
DIR=${2:-/tmp/shoal-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=$ROOT/target/release/shoal
FLOOR=$ROOT/target/release/examples/wordcount_floor
mkdir -p "$DIR"
CORPUS=$DIR/corpus-$SIZE.txt
[ -f "$CORPUS" ] || "$SHOAL" gen text --size "$SIZE" --seed 1 --output "$CORPUS"
cat "$CORPUS" > /dev/null # warm the page cache

t() { # label, command...
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$DIR/cpu" "$@"
  end=$(date +%s.%N)
  read -r user sys < "$DIR/cpu"
  printf '%-28s wall %7.2f s   cpu %7.2f s   (load %s)\n' "$label" "$(echo "$end - $start" | bc)" "$(echo "$user + $sys" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
}

echo "corpus: $CORPUS ($(stat -L -c %s "$CORPUS") bytes), $(nproc) cores"
t "rust floor (1 thread)" sh -c "'$FLOOR' '$CORPUS' > '$DIR/floor.txt' 2>/dev/null"
for w in 2 1; do
  t "shoal mr run --workers $w" sh -c "'$SHOAL' mr run --input '$CORPUS' --output '$DIR/wc-$w' --app wordcount \
    --workers $w --reducers 4 --overwrite > '$DIR/wc-$w.summary' 2>/dev/null"
done
cat "$DIR"/wc-2/part-r-* | LC_ALL=C sort | cmp - <(LC_ALL=C sort "$DIR/floor.txt") && echo "shoal output == floor output"
if [ "${SKIP_GNU:-0}" != 1 ]; then
  t "tr | sort | uniq -c" sh -c "LC_ALL=C tr -cs 'A-Za-z' '\n' < '$CORPUS' | sort | uniq -c > /dev/null"
fi
