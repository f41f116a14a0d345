#!/usr/bin/env bash
# Installs the tools the metrics and status-page tests run: promtool (Debian package
# `prometheus`) checks the /metrics text, chromium renders the status page headless.
# Idempotent: does nothing when both are already on PATH.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing ${missing[*]} (for the metrics and status-page tests)"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
