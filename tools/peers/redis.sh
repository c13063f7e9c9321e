#!/usr/bin/env bash
# Real redis-server for the limit-count / limit-req redis policy tests (idempotent).
# Tests start their own throwaway server on a free loopback port
# (`redis-server --port N --save '' --appendonly no`) and stop it; nothing is left running.
set -euo pipefail
if [ -x /usr/bin/redis-server ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends redis-server
# Debian's package starts a system service; the tests never use it (they run their own).
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
