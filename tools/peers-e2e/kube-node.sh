#!/usr/bin/env bash
# The rest of a real one-machine Kubernetes (tests/e2e/cluster, deploy/cluster): kubelet,
# kube-controller-manager, kube-scheduler, kube-proxy and kubectl at the kube-apiserver's version,
# built from source through the Go module proxy (idempotent: skips when all are present) into
# ${MESHGATE_PEERS}/kube-node-<version>/.  It reuses the wrapper module that kube-apiserver.sh made
# (k8s.io/kubernetes with its staging modules replaced by their published versions), so run after
# it (tools/peers-e2e.sh runs the scripts in name order).  About 3 minutes with a warm Go cache.
set -euo pipefail
VERSION="${KUBE_APISERVER_VERSION:-v1.37.2}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
WRAPPER="$PEERS/kube-apiserver-$VERSION/wrapper"
DEST="$PEERS/kube-node-$VERSION"
CMDS="kubelet kube-controller-manager kube-scheduler kube-proxy kubectl"
done_all=1
for c in $CMDS; do [ -x "$DEST/$c" ] || done_all=0; done
[ "$done_all" = 1 ] && exit 0
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
[ -x "$GO" ] || { echo "kube-node.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2; exit 1; }
[ -f "$WRAPPER/go.mod" ] || { echo "kube-node.sh: $WRAPPER/go.mod missing: run tools/peers-e2e/kube-apiserver.sh first" >&2; exit 1; }
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/src"
fail() { echo "kube-node.sh: $*" >&2; rm -rf "$DEST.tmp"; exit 1; }
cp "$WRAPPER/go.mod" "$WRAPPER/go.sum" "$DEST.tmp/src/"
{
    echo "//go:build tools"
    echo
    echo "package main"
    echo
    echo "import ("
    for c in $CMDS; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
} > "$DEST.tmp/src/tools.go"
(cd "$DEST.tmp/src" && GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local "$GO" mod tidy) \
    || fail "go mod tidy of the wrapper module failed (see above)"
for c in $CMDS; do
    echo "kube-node.sh: building $c $VERSION" >&2
    (cd "$DEST.tmp/src" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local \
        "$GO" build -p 2 -trimpath \
        -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$VERSION" | cut -d. -f2)" \
        -o "$DEST.tmp/$c" "k8s.io/kubernetes/cmd/$c") || fail "go build of $c failed (see above)"
done
"$DEST.tmp/kubectl" version --client >/dev/null || fail "built kubectl does not run"
mv "$DEST.tmp/src" "$DEST.tmp/wrapper"
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "kube-node $VERSION installed in $DEST"
