#!/usr/bin/env bash
# THE "run Rota" command: a private nats-server, a server, a worker and a demo job on SQLite, via
# `rota dev`. Arguments go to `rota dev` (see `scripts/dev.sh --help`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# `rota dev` keeps its state under the working directory (.rota-dev/, ignored by git), so run it
# from the repository root wherever this script is called from.
cd "$repo"

bash scripts/install-nats.sh
export ROTA_NATS_SERVER_BIN="$repo/.tools/bin/nats-server"

# The dev profile (dependencies at opt-level 1) is quick to build and shares its artifacts with
# scripts/test.sh; the demo needs no more speed than that.
exec cargo run -p rota -- dev "$@"
