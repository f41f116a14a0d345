#!/usr/bin/env bash
# Installs the AWS API emulator (moto, server mode) into ./.venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements-dev.txt
if [ -x .venv/bin/moto_server ] && cmp -s requirements-dev.txt "$stamp"; then
  exit 0
fi
echo "setting up the AWS emulator in .venv (moto[server], pinned in requirements-dev.txt)"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
cp requirements-dev.txt "$stamp"
