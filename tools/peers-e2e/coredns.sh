#!/usr/bin/env bash
# CoreDNS for the one-machine cluster (deploy/cluster): Services resolve by name inside pods.
# Built from source through the Go module proxy (idempotent: skips when the binary is present)
# into ${MESHGATE_PEERS}/coredns-<version>/coredns.  The cluster runs it with the `kubernetes`
# plugin and no `forward`, so nothing outside the cluster resolves.
set -euo pipefail
VERSION="${COREDNS_VERSION:-v1.15.0}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/coredns-$VERSION"
if [ -x "$DEST/coredns" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
[ -x "$GO" ] || { echo "coredns.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2; exit 1; }
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
fail() { echo "coredns.sh: $*" >&2; rm -rf "$DEST.tmp"; exit 1; }
echo "coredns.sh: building coredns $VERSION (a few minutes cold)" >&2
SRC="$(cd "$DEST.tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "github.com/coredns/coredns@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$SRC" ] && [ -f "$SRC/coredns.go" ] || fail "could not download github.com/coredns/coredns@$VERSION through the Go module proxy"
# Build inside the module, honouring its go.mod/go.sum; -p 2: small machines; no VCS stamping.
(cd "$SRC" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local \
    "$GO" build -p 2 -trimpath -ldflags="-s -w" -o "$DEST.tmp/coredns" .) \
    || fail "go build of coredns failed (see above)"
"$DEST.tmp/coredns" -version >/dev/null || fail "built coredns does not run"
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "coredns $VERSION installed in $DEST"
