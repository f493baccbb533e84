#!/usr/bin/env bash
# The README's test command: set-up (Debian packages, npm ci, build), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
node dist/lab/cli.js cleanup >/dev/null # labs of earlier runs that were killed
exec npm test --silent
