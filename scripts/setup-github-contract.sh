#!/usr/bin/env bash
# Installs what the GitHub contract tests need into .local/npm: Prism (a validating proxy for
# OpenAPI descriptions) and GitHub's own OpenAPI description. Pinned, so every run checks
# against the same spec. Idempotent: does nothing when both are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PRISM_VERSION=5.16.0
OPENAPI_VERSION=23.0.2
dir=.local/npm
if [[ -x "$dir/node_modules/.bin/prism" ]] \
    && grep -q "\"version\": \"$OPENAPI_VERSION\"" "$dir/node_modules/@octokit/openapi/package.json" 2>/dev/null \
    && grep -q "\"version\": \"$PRISM_VERSION\"" "$dir/node_modules/@stoplight/prism-cli/package.json" 2>/dev/null; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    # A machine with only cargo and python3: Node.js and npm from Debian's packages.
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if command -v apt-get >/dev/null; then
        echo "installing nodejs and npm (for the GitHub contract tests)"
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nodejs npm
    fi
    command -v npm >/dev/null || { echo "npm is needed for the GitHub contract tests" >&2; exit 1; }
fi
mkdir -p "$dir"
[[ -f "$dir/package.json" ]] || echo '{ "private": true }' > "$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --save-exact \
    "@stoplight/prism-cli@$PRISM_VERSION" "@octokit/openapi@$OPENAPI_VERSION"
