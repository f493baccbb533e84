#!/usr/bin/env bash
# The README's main command: set-up, then the namespace demos with readable reports:
#   1. the control plane: AS, two DCs, two routers with LANs; a LAN host reaches another by name;
#      router A changes carriers under a running TCP transfer and UDP stream (handover, the gap);
#      the same through the Relay Server;
#   2. the data path: a session between two nodes survives a move to another carrier's NAT.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
status=0
node dist/lab/demo-fleet.js || status=1
node dist/lab/demo.js "$@" || status=1
exit $status
