#!/usr/bin/env bash
# Real Jaeger (v2 all-in-one, `cmd/jaeger`) for the zipkin / opentelemetry tracing tests.
# Built from source through the Go module proxy (idempotent: skips when the binary is present)
# into ${MESHGATE_PEERS}/jaeger-<version>/jaeger.  Jaeger's v2 releases are published as the Go
# module github.com/jaegertracing/jaeger v1.x (v1.75.0 is the one the proxy serves here).
# Tests write their own config (OTLP/HTTP + Zipkin receivers, memory storage, query API) on free
# loopback ports and stop the process; nothing is left running.
set -euo pipefail
VERSION="${JAEGER_VERSION:-v1.75.0}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/jaeger-$VERSION"
if [ -x "$DEST/jaeger" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
if [ ! -x "$GO" ]; then
    echo "jaeger.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 1
fi
mkdir -p "$DEST.tmp"
# `go install pkg@version` refuses modules whose go.mod has replace directives (jaeger has one),
# so fetch the module source through the proxy and build cmd/jaeger inside it, honouring its
# go.mod/go.sum.  -p 2: this is a 2-core machine; no VCS stamping (the proxy zip has no .git).
SRC="$(cd "$DEST.tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "github.com/jaegertracing/jaeger@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$SRC" ] || [ ! -d "$SRC/cmd/jaeger" ]; then
    echo "jaeger.sh: could not download github.com/jaegertracing/jaeger@$VERSION" >&2
    exit 1
fi
(cd "$SRC" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local \
    "$GO" build -p 2 -trimpath -ldflags="-s -w" -o "$DEST.tmp/jaeger" ./cmd/jaeger)
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "jaeger $VERSION installed in $DEST"
