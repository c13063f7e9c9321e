# Meshgate: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The per-request modules, compiled with mypyc when a C compiler is there (src/meshgate/_accel.py);
# without one, or when a build fails, the same modules run as pure Python.
ACCEL := $(VENV)/.accel
HOT := $(addprefix src/meshgate/,http/path.py http/request.py router/types.py router/radixtree.py proxy/runtime.py proxy/common.py proxy/headcodec.py proxy/upstream_conn.py proxy/exchange.py proxy/http1.py proxy/http2.py proxy/server.py \
	shared/dict.py observability/metrics.py plugins/chain.py plugins/builtin/_auth.py plugins/builtin/_limit_common.py \
	plugins/builtin/key_auth.py plugins/builtin/limit_count.py plugins/builtin/prometheus.py _accel.py)
# the native HTTP/1 head codec (Rust + PyO3, built by maturin; the Python one runs without it)
NATIVE := native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)

.PHONY: demo test unit integration e2e bench clean venv peers peers-e2e cluster-up cluster-down demo-cluster

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# xds-protos ships an old copy of opentelemetry-proto's modules under the same paths; whichever
	@# installs last wins.  Put opentelemetry-proto's own back (the OTLP encoder needs scope_spans).
	$(PY) -m pip install -q --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@touch $(STAMP)

$(ACCEL): $(STAMP) $(HOT) $(NATIVE)
	@echo "compiling the request hot path with mypyc and the native head codec (once per change, about a minute)..."
	@$(PY) -c 'from meshgate._accel import build; raise SystemExit(build(quiet=True))' >/dev/null || true
	@$(VENV)/bin/meshgate version | tail -2
	@touch $(ACCEL)

venv: $(ACCEL)

demo: $(ACCEL)
	$(VENV)/bin/meshgate demo

# The suite runs on the compiled hot path; the fast-path differential test, the proxy tests, the
# hot modules' unit tests and the compiled plugins' tests run once more as pure Python (the
# fallback must stay correct too).
peers:
	bash tools/peers.sh

test: $(ACCEL) peers
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/plugins
	MESHGATE_PURE=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit/http tests/unit/router \
		tests/integration/test_fast_path.py tests/integration/test_codec_fuzz.py tests/integration/test_proxy_basic.py tests/integration/test_bad_input.py \
		tests/integration/test_http2.py tests/integration/test_grpc.py \
		tests/unit/shared tests/unit/observability/test_metrics.py tests/plugins/test_key_auth.py \
		tests/plugins/test_limit_count.py tests/plugins/test_prometheus.py

unit: $(ACCEL)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: $(ACCEL)
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

# The heavy real peers (istiod, kube-apiserver 1.37.2) are built once from the Go module proxy
# and cached (tools/peers-e2e/*.sh); make test never needs them.
peers-e2e:
	bash tools/peers-e2e.sh

e2e: $(ACCEL) peers-e2e
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

# A real one-machine Kubernetes (root; pods are containers): deploy/cluster/cluster.py.  The peers
# (kubelet & co., CoreDNS, istiod, helm) are built once by tools/peers-e2e.sh; images offline.
cluster-up: $(ACCEL) peers-e2e
	$(PY) deploy/cluster/cluster.py up --istio

cluster-down:
	@if [ -x $(PY) ]; then $(PY) deploy/cluster/cluster.py down; else python3 deploy/cluster/cluster.py down; fi

# The seed journey on that cluster: Istio with Meshgate sidecars, Meshgate's chart (gateway on a
# NodePort, ingress and mesh controllers), the Bookinfo-like services, the seed's ApisixRoute.
demo-cluster: $(ACCEL) peers-e2e
	$(PY) deploy/cluster/cluster.py demo

bench: $(ACCEL)
	bash bench/setup.sh
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/meshgate/_accel.json src/meshgate/proxy/_codec.json
	find src -name '*.so' -delete
