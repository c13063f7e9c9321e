#!/usr/bin/env bash
# The Gateway API CRDs (standard channel) for the ingress controller's e2e tests: the YAML of
# the sigs.k8s.io/gateway-api module, fetched through the Go module proxy (no build) into
# ${MESHGATE_PEERS}/gateway-api-<version>/standard/ (idempotent: skips when present).
set -euo pipefail
VERSION="${GATEWAY_API_VERSION:-v1.6.3}"
MODULE="sigs.k8s.io/gateway-api"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/gateway-api-$VERSION"
if [ -s "$DEST/standard/gateway.networking.k8s.io_httproutes.yaml" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
if [ ! -x "$GO" ]; then
    echo "gateway-api.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 1
fi
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/standard"
SRC="$(cd "$DEST.tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "$MODULE@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$SRC" ] || [ ! -d "$SRC/config/crd/standard" ]; then
    echo "gateway-api.sh: could not download $MODULE@$VERSION through the Go module proxy" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
# the CRDs only (the ValidatingAdmissionPolicy of the same directory is not a CRD)
for f in "$SRC"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
    case "$f" in *_vap_*) continue ;; esac
    cp "$f" "$DEST.tmp/standard/"
done
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "Gateway API $VERSION CRDs installed in $DEST"
