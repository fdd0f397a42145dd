#!/usr/bin/env bash
# Regenerates the committed PTX of the vidkv CUDA kernels (crates/vidkv-cuda/ptx/) from
# crates/vidkv-cuda/kernels/*.cu with the pinned pip nvcc (docs: /work/shared/TOOLCHAIN.md).
#
#   scripts/build-ptx.sh            # regenerate
#   scripts/build-ptx.sh --check    # regenerate into a temp dir and fail if the committed PTX differs
#
# NVCC_ROOT may point at an existing pip --target directory; otherwise the wheels are installed
# into target/nvcc-13.0 (once). The GPU machine's driver is CUDA 13.0, so nvcc stays at 13.0.x:
# a newer nvcc emits a PTX ISA that driver cannot load.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${NVCC_ROOT:-$PWD/target/nvcc-13.0}
nvcc=$root/nvidia/cu13/bin/nvcc
if [ ! -x "$nvcc" ]; then
    python3 -m pip install --quiet --no-deps --target "$root" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
"$nvcc" --version | grep -q "V13.0.88" || { echo "nvcc is not 13.0.88" >&2; exit 1; }

src=crates/vidkv-cuda/kernels
dst=crates/vidkv-cuda/ptx
check=0
if [ "${1:-}" = "--check" ]; then
    check=1
    out=$(mktemp -d)
else
    out=$dst
    mkdir -p "$out"
fi
for f in encode decode attend; do
    for arch in sm_90 sm_80; do
        # -lineinfo is not used: line tables would make the PTX depend on the checkout path.
        "$nvcc" --ptx -arch=$arch -O3 -std=c++17 -I"$src" "$src/$f.cu" -o "$out/$f.$arch.ptx"
    done
done
if [ $check = 1 ]; then
    if ! diff -r "$dst" "$out" >/dev/null; then
        diff -r "$dst" "$out" | head -20
        echo "committed PTX differs from kernels/*.cu: run scripts/build-ptx.sh" >&2
        exit 1
    fi
    echo "committed PTX matches kernels/*.cu"
fi
