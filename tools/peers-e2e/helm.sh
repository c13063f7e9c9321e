#!/usr/bin/env bash
# Helm CLI for the chart tests (tests/unit/test_helm_chart.py renders deploy/helm/meshgate with
# `helm template` when this binary exists; tests/e2e/test_helm_apiserver.py needs it).
# Built from source through the Go module proxy (idempotent: skips when the binary is present)
# into ${MESHGATE_PEERS}/helm-<version>/helm.
set -euo pipefail
VERSION="${HELM_VERSION:-v4.3.2}"
MODULE="${HELM_MODULE:-helm.sh/helm/v4}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/helm-$VERSION"
if [ -x "$DEST/helm" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
if [ ! -x "$GO" ]; then
    echo "helm.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 1
fi
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
echo "helm.sh: building helm from $MODULE@$VERSION (a few minutes cold)" >&2
SRC="$(cd "$DEST.tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "$MODULE@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$SRC" ] || [ ! -d "$SRC/cmd/helm" ]; then
    echo "helm.sh: could not download $MODULE@$VERSION through the Go module proxy" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
# Build inside the module, honouring its go.mod/go.sum; -p 2: small machines; no VCS stamping.
if ! (cd "$SRC" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local \
        "$GO" build -p 2 -trimpath -ldflags="-s -w -X $MODULE/internal/version.version=$VERSION" \
        -o "$DEST.tmp/helm" ./cmd/helm); then
    echo "helm.sh: go build of helm failed (see above)" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "helm $VERSION installed in $DEST"
