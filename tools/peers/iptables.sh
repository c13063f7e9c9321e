#!/usr/bin/env bash
# Real iptables / ip6tables (with iptables-restore) for the sidecar traffic-capture tests
# (tests/integration/test_capture.py) and for `meshgate iptables` itself.  Idempotent: skips
# when /usr/sbin/iptables-restore is present.  The tests apply rules only inside network
# namespaces they create and delete; nothing outside them is touched.
set -euo pipefail
if [ -x /usr/sbin/iptables-restore ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends iptables
