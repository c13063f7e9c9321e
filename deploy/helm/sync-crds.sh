#!/usr/bin/env bash
# Copy deploy/crds/*.yaml (the source of truth) into the chart's crds/ directory, which Helm
# installs before the templates (and never upgrades or deletes: see the chart's README).
# tests/unit/test_helm_chart.py fails when the two drift; run this after editing deploy/crds/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/../crds"
DST="$HERE/meshgate/crds"
mkdir -p "$DST"
find "$DST" -maxdepth 1 -name '*.yaml' -delete
cp "$SRC"/*.yaml "$DST"/
echo "sync-crds.sh: $(ls "$DST" | wc -l) CRDs copied into $DST"
