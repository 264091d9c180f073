#!/usr/bin/env bash
# Idempotent setup of the Celery+Redis peer benchmark's Python environment.
# Creates <repo>/.tools/peer-venv if missing and installs bench/peer/requirements.txt into it
# (skipped when the installed set already matches the requirements file).
# Prints one line on success; on failure prints a one-line reason to stderr and exits non-zero.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.tools/peer-venv"
req="$here/requirements.txt"
stamp="$venv/.peer-requirements.sha256"
python="${PYTHON:-python3}"

die() { echo "bench/peer/setup.sh: error: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "$python not found (set PYTHON=/path/to/python3.11+)"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
  || die "$python is older than 3.9"
[ -f "$req" ] || die "missing $req"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$root/.tools"
  "$python" -m venv "$venv" >/dev/null 2>&1 \
    || die "could not create venv at $venv (is python3-venv installed? apt-get install python3-venv)"
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >"$log" 2>&1; then
    tail -n 20 "$log" >&2; rm -f "$log"
    die "pip install -r $req failed (output above)"
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
fi

versions="$("$venv/bin/python" -c 'import celery, kombu, redis; print(f"celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}")' 2>/dev/null)" \
  || die "venv at $venv is broken (delete it and rerun)"
echo "peer venv ready: $venv ($versions)"
