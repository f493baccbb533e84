#!/usr/bin/env bash
# Installs everything the demo, the tests and the benchmarks need on Debian 12 (as root), and
# builds the project. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

packages=(
  iproute2 nftables iputils-ping curl iperf3 tshark dnsmasq-base procps
  python3 make g++
  wireguard-go wireguard-tools nebula openvpn openssl
  mosquitto conntrack
  musl-tools binutils
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: Node.js 20 or newer is required" >&2
  exit 1
fi

[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 600 /dev/net/tun; }

echo "setup: npm ci" >&2
npm ci --no-audit --no-fund --loglevel=error
echo "setup: build" >&2
npm run build --silent

# The real OpenWrt userland (ubusd, procd, uci, opkg, fw4, LuCI …) the OpenWrt tests install the
# package into: built once from its sources (about a minute), a no-op afterwards.
userland=${OWRT_USERLAND:-}
for d in "$userland" "$PWD/../shared/openwrt-userland" /work/shared/openwrt-userland; do
  if [ -n "$d" ] && [ -x "$d/build.sh" ]; then userland=$d; break; fi
done
if [ -z "$userland" ] || [ ! -x "$userland/build.sh" ]; then
  echo "setup: the OpenWrt userland is missing (../shared/openwrt-userland; set OWRT_USERLAND)" >&2
  exit 1
fi
echo "setup: OpenWrt userland ($userland)" >&2
"$userland/build.sh" --deps >/dev/null
