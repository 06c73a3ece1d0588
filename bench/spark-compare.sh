#!/usr/bin/env bash
# Word count on one corpus with the engines a user could pick instead of shoal: Apache Spark
# local[2] (RDD form and DataFrame form) and DuckDB (2 threads), then shoal mr run with 2
# workers; prints every time and shoal's ratio to each. Needs Java 17+ and Python 3.
#
#   cargo build --release -p shoal
#   bench/spark-compare.sh [CORPUS=/tmp/shoal-bench/corpus-512MiB.txt]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=$ROOT/target/release/shoal
CORPUS=${1:-/tmp/shoal-bench/corpus-512MiB.txt}
VENV=${VENV:-/tmp/shoal-spark-venv}
WORK=$(mktemp -d /tmp/shoal-spark-compare.XXXXXX)
[ -f "$CORPUS" ] || "$SHOAL" gen text --size 512MiB --seed 1 --output "$CORPUS"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet pyspark==4.3.0 duckdb
fi
cat "$CORPUS" > /dev/null # page cache warm for everyone

cat > "$WORK/engines.py" <<'PY'
import sys, time, re, operator
corpus, work = sys.argv[1], sys.argv[2]
times = {}

import duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
t = time.time()
n = con.execute(f"""
  SELECT count(*) FROM (
    SELECT w, count(*) AS c FROM (
      SELECT unnest(regexp_split_to_array(line, '[^A-Za-z]+')) AS w
      FROM read_csv('{corpus}', columns={{'line': 'VARCHAR'}}, delim='\\x01', header=false, quote='', escape='')
    ) WHERE w <> '' GROUP BY w)
""").fetchone()[0]
times["duckdb (2 threads)"] = time.time() - t
print(f"duckdb: {n} words", file=sys.stderr)

from pyspark.sql import SparkSession, functions as F
spark = (SparkSession.builder.master("local[2]").appName("wc")
         .config("spark.driver.memory", "4g").config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
word = re.compile(r"[A-Za-z]+")
t = time.time()
(spark.sparkContext.textFile(corpus).flatMap(word.findall).map(lambda w: (w, 1))
   .reduceByKey(operator.add).saveAsTextFile(f"{work}/rdd"))
times["spark local[2] RDD"] = time.time() - t
t = time.time()
(spark.read.text(corpus).select(F.explode(F.split("value", "[^A-Za-z]+")).alias("w"))
   .where("w != ''").groupBy("w").count().write.csv(f"{work}/df"))
times["spark local[2] DataFrame"] = time.time() - t
spark.stop()
for k, v in times.items():
    print(f"{k}\t{v:.2f}")
PY

"$VENV/bin/python" "$WORK/engines.py" "$CORPUS" "$WORK" > "$WORK/times.tsv"
start=$(date +%s.%N)
"$SHOAL" mr run --input "$CORPUS" --output "$WORK/shoal" --app wordcount --workers 2 --reducers 4 > /dev/null 2>&1
shoal=$(echo "$(date +%s.%N) - $start" | bc)
echo "corpus $CORPUS ($(stat -L -c %s "$CORPUS") bytes), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-28s %8.2f s\n' "shoal mr run (2 workers)" "$shoal"
while IFS=$'\t' read -r name secs; do
  printf '%-28s %8.2f s   shoal is %.1fx faster\n' "$name" "$secs" "$(echo "$secs / $shoal" | bc -l)"
done < "$WORK/times.tsv"
rm -rf "$WORK"
