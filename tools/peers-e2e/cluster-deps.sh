#!/usr/bin/env bash
# Debian packages of the one-machine cluster (deploy/cluster/cluster.py) and of its offline images
# (deploy/images/build.py): containerd + runc (the CRI runtime; runc, because crun refuses this
# machine's hybrid cgroups), the CNI plugins (bridge, host-local), conntrack, buildah and
# debootstrap (images without a registry), a static libc for the pause image.  Idempotent: skips
# when every tool is present.  Any order among tools/peers-e2e/*.sh.
set -euo pipefail
need=""
for t in /usr/bin/containerd /usr/bin/ctr /usr/sbin/runc /usr/lib/cni/bridge /usr/lib/cni/host-local \
         /usr/sbin/conntrack /usr/sbin/nft /usr/bin/buildah /usr/sbin/debootstrap /usr/sbin/iptables /usr/bin/gcc; do
    [ -e "$t" ] || need=1
done
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need=1
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" != 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins conntrack nftables \
    buildah debootstrap iptables gcc libc6-dev
