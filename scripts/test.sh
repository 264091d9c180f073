#!/usr/bin/env bash
# THE test command: runs the whole suite on SQLite, then again on PostgreSQL and MySQL/MariaDB.
#
#   scripts/test.sh                 every test of the workspace, both backends
#   scripts/test.sh <args…>         extra arguments go to the test runner, e.g. a name filter
#
# Every test starts its own nats-server from $ROTA_NATS_SERVER_BIN, which this script installs
# (pinned) into .tools/. PostgreSQL is used when it answers at $ROTA_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres); under CI=true it is required.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

say() { printf '\n==> %s\n' "$*"; }

ci=false
case "${CI:-}" in
true | TRUE | True | 1 | yes) ci=true ;;
esac

bash scripts/install-nats.sh
# helm and kubernetes-validate, for the deploy tests (cli/tests/deploy_helm.rs).
bash scripts/install-deploy-tools.sh
export ROTA_NATS_SERVER_BIN="$repo/.tools/bin/nats-server"
export ROTA_TEST_POSTGRES_URL="${ROTA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export ROTA_TEST_MYSQL_URL="${ROTA_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"
# A panic in a test is only useful with the place it came from.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# cargo-nextest runs each test in its own process, so a test that crashes or hangs takes no other
# test with it, and a timeout kills the test's whole process group, nats-server included. Plain
# `cargo test` is the fallback where nextest is not installed.
if cargo nextest --version >/dev/null 2>&1; then
    runner=nextest
    runner_cmd=(cargo nextest run --workspace --all-targets --no-tests=warn
        --tool-config-file "rota:$repo/.ci/nextest.toml")
else
    runner=cargo-test
    runner_cmd=(cargo test --workspace --all-targets --no-fail-fast)
fi

echo "test.sh: runner $runner; $("$ROTA_NATS_SERVER_BIN" --version); $(rustc --version); CI=$ci"

# Answers whether PostgreSQL accepts connections at $ROTA_TEST_POSTGRES_URL.
postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -t 3 -d "$ROTA_TEST_POSTGRES_URL"
    else
        # Without the client tools, a TCP connect to the default address is the best we can do.
        (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
    fi
}

# Tries to start the local cluster(s) the way this machine and CI run PostgreSQL (no systemd),
# then waits up to 30 s for it to answer.
start_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! [[ -d /etc/postgresql ]]; then
        echo "test.sh: pg_ctlcluster or /etc/postgresql not found; cannot start PostgreSQL" >&2
        return 1
    fi
    local dir
    for dir in /etc/postgresql/*/; do
        echo "test.sh: starting PostgreSQL cluster $(basename "$dir")/main"
        pg_ctlcluster --skip-systemctl-redirect "$(basename "$dir")" main start || true
    done
    local i
    for ((i = 0; i < 30; i++)); do
        postgres_ready && return 0
        sleep 1
    done
    return 1
}

# Answers whether MySQL/MariaDB accepts connections on 127.0.0.1:3306 (the default URL's server).
mysql_ready() {
    if command -v mysqladmin >/dev/null 2>&1; then
        mysqladmin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1
    else
        (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null
    fi
}

# Starts MariaDB the way this machine and CI run it (no systemd), then waits up to 30 s.
start_mysql() {
    [[ -x /usr/sbin/mariadbd ]] || return 1
    echo "test.sh: starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    local i
    for ((i = 0; i < 30; i++)); do
        mysql_ready && return 0
        sleep 1
    done
    return 1
}

declare -a summary=()
failed=0

# Runs the suite once with ROTA_TEST_DB=$1 and records the outcome for the summary.
run_pass() {
    local backend="$1"
    shift
    local started=$SECONDS
    say "tests on $backend: ROTA_TEST_DB=$backend ${runner_cmd[*]} $*"
    if ROTA_TEST_DB="$backend" "${runner_cmd[@]}" "$@"; then
        summary+=("$backend: passed ($((SECONDS - started)) s)")
    else
        summary+=("$backend: FAILED ($((SECONDS - started)) s)")
        failed=1
    fi
}

run_pass sqlite "$@"

# `--all-targets` (and nextest in general) leaves out doc tests. They touch no database, so they
# run once, and only for a full run: a filtered run is someone looking at particular tests.
if [[ $# -eq 0 ]]; then
    started=$SECONDS
    say "doc tests: cargo test --workspace --doc"
    if cargo test --workspace --doc; then
        summary+=("doc tests: passed ($((SECONDS - started)) s)")
    else
        summary+=("doc tests: FAILED ($((SECONDS - started)) s)")
        failed=1
    fi
fi

if postgres_ready; then
    run_pass postgres "$@"
elif [[ "$ci" == true ]]; then
    echo "test.sh: PostgreSQL is not answering at $ROTA_TEST_POSTGRES_URL; CI requires it, starting it"
    if start_postgres; then
        run_pass postgres "$@"
    else
        echo "test.sh: error: PostgreSQL still does not answer at $ROTA_TEST_POSTGRES_URL" >&2
        summary+=("postgres: FAILED (PostgreSQL unavailable, required under CI)")
        failed=1
    fi
else
    summary+=("postgres: SKIPPED (nothing answers at $ROTA_TEST_POSTGRES_URL)")
fi

# MySQL/MariaDB runs the same code; its pass runs where a server answers (and CI tries to start
# one), but only SQLite and PostgreSQL are required.
if [[ -n "${ROTA_TEST_SKIP_MYSQL:-}" ]]; then
    summary+=("mysql: SKIPPED (ROTA_TEST_SKIP_MYSQL is set)")
elif mysql_ready || { [[ "$ci" == true ]] && start_mysql; }; then
    run_pass mysql "$@"
else
    summary+=("mysql: SKIPPED (nothing answers on 127.0.0.1:3306)")
fi

say "summary"
for line in "${summary[@]}"; do
    echo "  $line"
done
if [[ $failed -ne 0 ]]; then
    echo "test.sh: FAILED"
    exit 1
fi
if [[ "${summary[*]}" == *SKIPPED* ]]; then
    echo "test.sh: passed, but a backend's pass was skipped (see the summary)"
else
    echo "test.sh: all passed"
fi
