#!/usr/bin/env bash
# Installs the real peers the test suites talk to (idempotent: skips what is present).
# One script per peer in tools/peers/<name>.sh; each may be run alone.  Slow builds are
# cached under ${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}.
set -euo pipefail
cd "$(dirname "$0")/.."
export MESHGATE_PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
mkdir -p "$MESHGATE_PEERS"
for f in tools/peers/*.sh; do
    [ -e "$f" ] || continue
    bash "$f"
done
