#!/usr/bin/env bash
# Installs what the build and tests need on Debian/Ubuntu: the TensorFlow Lite C library
# (scripts/install-tflite.sh, via npm) and the Debian packages the tests start for real
# (mosquitto, minisign, chromium).
# Idempotent: does nothing when everything is present.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

need=()
command -v npm >/dev/null || need+=(npm)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v minisign >/dev/null || need+=(minisign)
command -v gcc >/dev/null || need+=(gcc)
# The status page test drives a real headless browser (agent/status/browser_test.go).
command -v chromium >/dev/null || need+=(chromium)
# Cross builds to arm64 and running them under emulation (make cross, cmd/edge-agent/cross_test.go).
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
# The unit file check (systemd-analyze verify) and the .deb test (dpkg-deb, adduser).
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v adduser >/dev/null || need+=(adduser)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

"$here/scripts/tflite-prefix.sh" >/dev/null
