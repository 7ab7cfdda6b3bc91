#!/usr/bin/env bash
# Installs the TensorFlow Lite 2.9 C library (libtensorflowlite_c.so), its C headers and the
# external-delegate library into a prefix, from the npm package tfjs-tflite-node@0.0.2 (Apache-2.0).
#
#   scripts/install-tflite.sh              # into .deps/ (development)
#   TFLITE_PREFIX=/usr/local scripts/install-tflite.sh   # on a board
#   TFLITE_ARCH=arm64 scripts/install-tflite.sh          # another architecture (cross builds)
#
# A library already present in the prefix with the expected checksum is left alone, so the
# script is cheap to run on every build. The tarball's sha256 is checked before anything is
# unpacked. The experimental C API header go-tflite includes is not in the package; the
# project ships its own (third_party/tflite-c/include) and installs it beside the others.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${TFLITE_PREFIX:-$here/.deps}
pkg=tfjs-tflite-node@0.0.2
want_sha=3be1632328a76a2475e5b6833253763c802c859433becb4d879ee1860e3b5284

arch=${TFLITE_ARCH:-}
if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) echo "install-tflite: no prebuilt TensorFlow Lite for $(uname -m) in $pkg (only amd64 and arm64); build libtensorflowlite_c.so yourself and set TFLITE_PREFIX" >&2; exit 1 ;;
  esac
fi
case "$arch" in amd64|arm64) ;; *) echo "install-tflite: TFLITE_ARCH must be amd64 or arm64, got $arch" >&2; exit 1 ;; esac

libdir=$prefix/lib
[ "$arch" = "$(case "$(uname -m)" in x86_64) echo amd64;; aarch64) echo arm64;; esac)" ] || libdir=$prefix/lib/$arch
stamp=$libdir/.tflite-$pkg-$arch

if [ -f "$stamp" ] && [ -f "$libdir/libtensorflowlite_c.so" ] && [ -f "$prefix/include/tensorflow/lite/c/c_api_experimental.h" ] \
   && cmp -s "$here/third_party/tflite-c/include/tensorflow/lite/c/c_api_experimental.h" "$prefix/include/tensorflow/lite/c/c_api_experimental.h"; then
  exit 0
fi

command -v npm >/dev/null || { echo "install-tflite: npm is needed to fetch $pkg (apt-get install npm)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm pack --silent "$pkg" >/dev/null ) || { echo "install-tflite: npm pack $pkg failed; check npm's registry access" >&2; exit 1; }
tgz=$(ls "$work"/*.tgz)
got_sha=$(sha256sum "$tgz" | cut -d' ' -f1)
if [ "$got_sha" != "$want_sha" ]; then
  echo "install-tflite: $pkg tarball sha256 is $got_sha, expected $want_sha; refusing to install" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$work"
src=$work/package/cc_deps

mkdir -p "$libdir" "$prefix/include"
install -m 0644 "$src/linux_$arch/libtensorflowlite_c.so" "$libdir/libtensorflowlite_c.so"
install -m 0644 "$src/linux_$arch/libexternal_delegate_obj.so" "$libdir/libexternal_delegate_obj.so"
cp -R "$src/include/." "$prefix/include/"
install -m 0644 "$here/third_party/tflite-c/include/tensorflow/lite/c/c_api_experimental.h" \
  "$prefix/include/tensorflow/lite/c/c_api_experimental.h"
install -m 0644 "$work/package/package.json" "$libdir/tfjs-tflite-node.package.json"
touch "$stamp"
echo "install-tflite: TensorFlow Lite C 2.9 ($arch) installed into $prefix"
