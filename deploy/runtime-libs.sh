#!/usr/bin/env bash
# Prints the shared libraries a binary needs at run time besides glibc's own, one resolved path a
# line, as `ldd` finds them. Fails, listing ldd's output, when one is not found. deploy/Dockerfile
# copies exactly these into the runtime image (whose base provides glibc), and tests/it/deploy.rs
# runs this same script on the binary cargo built, so a new linked library (librdkafka built with
# curl, zstd or SASL, say) cannot be forgotten in the image.
#
#   deploy/runtime-libs.sh target/release/hookbridge
set -euo pipefail
bin="${1:?usage: runtime-libs.sh BINARY}"
[ -x "$bin" ] || { echo "runtime-libs: $bin is not an executable" >&2; exit 2; }

out="$(ldd "$bin")"
if grep -q 'not found' <<<"$out"; then
  echo "runtime-libs: $bin links libraries that are not installed:" >&2
  echo "$out" >&2
  exit 1
fi
# Lines `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)`; the vdso and the dynamic
# loader have no `=>` target. glibc's libraries come with the runtime's base image.
awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' <<<"$out" | while read -r soname path; do
  case "$soname" in
    libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | libresolv.so.* | ld-linux*) ;;
    *) echo "$path" ;;
  esac
done
