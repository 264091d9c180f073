#!/usr/bin/env bash
# One command: set up (idempotent) and run the Celery+Redis peer benchmark.
#   bench/peer/run.sh throughput --seconds 10
#   bench/peer/run.sh latency --rate 100 --seconds 10
# JSON result on stdout; setup line and human notes on stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
"$here/setup.sh" >&2
exec "$root/.tools/peer-venv/bin/python" "$here/celery_bench.py" "$@"
