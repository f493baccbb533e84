#!/usr/bin/env bash
# The README's main command: set-up, then the namespace demo with a readable report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec node dist/lab/demo.js "$@"
