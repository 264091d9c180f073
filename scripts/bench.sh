#!/usr/bin/env bash
# The benchmark command (see BENCHMARKS.md):
#
#   scripts/bench.sh              every scenario, on SQLite and on PostgreSQL where it answers,
#                                 and the Celery+Redis peer where Redis answers
#   scripts/bench.sh latency --rate 1000 --seconds 10      one scenario (rota-bench's arguments)
#   scripts/bench.sh mapreduce --tasks 1000000 --workers 4  a map-reduce over 4 worker processes
#
# Results are printed and appended, one JSON object a line, to bench/results/results.jsonl.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install-nats.sh
export ROTA_NATS_SERVER_BIN="$repo/.tools/bin/nats-server"
export ROTA_TEST_POSTGRES_URL="${ROTA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

echo "bench.sh: building the release binaries"
cargo build --release -p rota -p rota-bench
bench=("$repo/target/release/rota-bench" --out "$repo/bench/results/results.jsonl")
mkdir -p bench/results

if [[ $# -gt 0 ]]; then
    exec "${bench[@]}" "$@"
fi

postgres=false
if pg_isready -q -t 3 -d "$ROTA_TEST_POSTGRES_URL" 2>/dev/null; then
    postgres=true
fi

run() {
    echo "==> rota-bench $*"
    "${bench[@]}" "$@"
}

run footprint
run latency --rate 100 --seconds 10
run latency --rate 1000 --seconds 10
run throughput --seconds 15
if [[ $postgres == true ]]; then
    run --db postgres latency --rate 1000 --seconds 10
    run --db postgres throughput --seconds 15
fi
run heartbeat --workers 1000 --seconds 30
run heartbeat --workers 10000 --seconds 30
run cron --jobs 10000 --seconds 70
run cron --jobs 100000 --seconds 70
run mapreduce --tasks 1000000 --workers 4

if redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    for args in "throughput --seconds 15" "latency --rate 100 --seconds 10" "latency --rate 1000 --seconds 10"; do
        echo "==> peer: bench/peer/run.sh $args"
        # The peer prints one JSON object; keep it as one line in the results file.
        # shellcheck disable=SC2086
        bash bench/peer/run.sh $args | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' |
            tee -a bench/results/results.jsonl
    done
else
    echo "bench.sh: Redis does not answer on 127.0.0.1:6379; the Celery peer was skipped"
fi
echo "bench.sh: done; results in bench/results/results.jsonl"
