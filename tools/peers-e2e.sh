#!/usr/bin/env bash
# Installs the heavy real peers of the e2e suite (tests/e2e): kube-apiserver and istiod, built from
# source through the Go module proxy (several minutes each when cold, then cached and skipped).
# One script per peer in tools/peers-e2e/<name>.sh; each may be run alone.  Cache:
# ${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}/<name>-<version>/.  Tests skip (with the reason)
# when a peer is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export MESHGATE_PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
mkdir -p "$MESHGATE_PEERS"
# the mesh journeys capture traffic in network namespaces: Debian's iptables, as make test has it
bash tools/peers/iptables.sh
for f in tools/peers-e2e/*.sh; do
    [ -e "$f" ] || continue
    bash "$f"
done
