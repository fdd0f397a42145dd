#!/usr/bin/env bash
# Builds the kernel emulator: tools/kernel-emu/build.sh OUT (default target/kernel-emu/harness).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/kernel-emu/harness}
mkdir -p "$(dirname "$out")"
${CXX:-g++} -std=c++20 -O1 -g -DVIDKV_EMU -I"$here" -I"$here/../../crates/vidkv-cuda/kernels" \
    -Wall -Wno-unused-function -Wno-unused-variable -Wno-unknown-pragmas \
    -o "$out" "$here/harness.cpp" -lpthread
echo "built $out"
