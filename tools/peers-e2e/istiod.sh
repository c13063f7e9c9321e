#!/usr/bin/env bash
# Real istiod (`pilot-discovery`) for the mesh e2e tests (tests/e2e/istiodpeer.py).
# Built from source through the Go module proxy (idempotent: skips when the binary is present)
# into ${MESHGATE_PEERS}/istiod-<version>/pilot-discovery.  Only pseudo-versions of istio.io/istio
# are served by the proxy here (tags such as 1.30.3 are refused); the default one is the Istio
# master of 2026-08 verified in shared/reference/istio-xds.md section 5.
# Next to the binary it copies what the tests need from the same module:
#   crd-all.gen.yaml          Istio's CRDs (manifests/charts/base/files/crd-all.gen.yaml)
#   bookinfo/networking/*.yaml  Bookinfo VirtualServices / DestinationRules / Gateway (if present)
#   bookinfo/platform/kube/*.yaml  Bookinfo Services / Deployments (if present)
#   bookinfo/gateway-api/*.yaml  Bookinfo Gateway API routes (if present)
#   charts/base, charts/istio-discovery  Istio's own Helm charts (manifests/charts/base and
#                             manifests/charts/istio-control/istio-discovery), for helm install with
#                             deploy/istio/values-meshgate.yaml (tests/e2e/test_istio_injection.py)
# This istiod needs a kube-apiserver (tools/peers-e2e/kube-apiserver.sh); it does not run on files.
set -euo pipefail
VERSION="${ISTIOD_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"
PEERS="${MESHGATE_PEERS:-$HOME/.cache/meshgate/peers}"
DEST="$PEERS/istiod-$VERSION"
if [ -x "$DEST/pilot-discovery" ] && [ -f "$DEST/crd-all.gen.yaml" ] \
        && [ -f "$DEST/charts/base/Chart.yaml" ] && [ -f "$DEST/charts/istio-discovery/Chart.yaml" ]; then
    exit 0
fi
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
if [ ! -x "$GO" ]; then
    echo "istiod.sh: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 1
fi
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
echo "istiod.sh: building pilot-discovery from istio.io/istio@$VERSION (several minutes cold)" >&2
# Fetch the module source through the proxy (the CRDs and samples are needed too), then build
# pilot/cmd/pilot-discovery inside it, honouring its go.mod/go.sum.  -p 2: 2-core machine;
# no VCS stamping (the proxy zip has no .git).
SRC="$(cd "$DEST.tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "istio.io/istio@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$SRC" ] || [ ! -d "$SRC/pilot/cmd/pilot-discovery" ]; then
    echo "istiod.sh: could not download istio.io/istio@$VERSION through the Go module proxy" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
CRD="$SRC/manifests/charts/base/files/crd-all.gen.yaml"
if [ ! -f "$CRD" ]; then
    echo "istiod.sh: $CRD missing from istio.io/istio@$VERSION" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
for chart in base istio-control/istio-discovery; do
    if [ ! -f "$SRC/manifests/charts/$chart/Chart.yaml" ]; then
        echo "istiod.sh: Helm chart manifests/charts/$chart missing from istio.io/istio@$VERSION" >&2
        rm -rf "$DEST.tmp"
        exit 1
    fi
done
if ! (cd "$SRC" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local \
        "$GO" build -p 2 -trimpath -ldflags="-s -w" -o "$DEST.tmp/pilot-discovery" ./pilot/cmd/pilot-discovery); then
    echo "istiod.sh: go build of pilot-discovery failed (see above)" >&2
    rm -rf "$DEST.tmp"
    exit 1
fi
cp "$CRD" "$DEST.tmp/crd-all.gen.yaml"
mkdir -p "$DEST.tmp/charts"
cp -R "$SRC/manifests/charts/base" "$DEST.tmp/charts/base"
cp -R "$SRC/manifests/charts/istio-control/istio-discovery" "$DEST.tmp/charts/istio-discovery"
for sub in networking platform/kube gateway-api; do
    if [ -d "$SRC/samples/bookinfo/$sub" ]; then
        mkdir -p "$DEST.tmp/bookinfo/$sub"
        find "$SRC/samples/bookinfo/$sub" -maxdepth 1 -name '*.yaml' -exec cp {} "$DEST.tmp/bookinfo/$sub/" \;
    fi
done
chmod -R u+w "$DEST.tmp"
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "istiod $VERSION installed in $DEST"
