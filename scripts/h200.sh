#!/usr/bin/env bash
# vidkv-cuda on the GPU machine, in one call.
#
#   scripts/h200.sh build            # here (no GPU): build the device test and the bench binary
#                                    # against the stub libcuda, copy them to device-bin/
#   scripts/h200.sh run [PARTS...]   # on the GPU machine, from the repository root, results
#                                    # under $OUT. PARTS (default: all, in this order):
#                                    #   bench sdpa conformance sanitizer
#
# The `run` tool of this project runs the second form with device-bin/ carried over, e.g.
#   run(command="scripts/h200.sh run", carry=["device-bin"])
# The binaries bind to the real libcuda.so.1 there (never put the stub on LD_LIBRARY_PATH on a
# GPU host). Every part has its own timeout and writes its files as it goes, so a slow part
# cannot take the others' results with it.
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=(4096 16384 65536 131072)
BATCHES=(1 16)

build() {
    tools/cuda-stub/build.sh target/cuda-stub
    export CUDA_LIBRARY_PATH="$PWD/target/cuda-stub"
    cargo build --release -p vidkv-cuda --features cuda --bin vidkv-cuda-bench
    local exe
    exe=$(cargo test --release -p vidkv-cuda --features cuda --test device --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])')
    mkdir -p device-bin
    cp "$exe" device-bin/vidkv-cuda-device-test
    cp target/release/vidkv-cuda-bench device-bin/
    git rev-parse HEAD > device-bin/COMMIT
    ls -la device-bin
}

part() {  # part NAME SECONDS COMMAND... : runs with a timeout, logs the exit status
    local name=$1 secs=$2
    shift 2
    local start=$SECONDS rc=0
    timeout "$secs" "$@" || rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/machine.txt"
}

run() {
    OUT=${OUT:-$PWD/h200-out}
    mkdir -p "$OUT"
    local parts=("$@")
    [ ${#parts[@]} -eq 0 ] && parts=(bench sdpa conformance sanitizer profile)
    {
        date -u +"date: %Y-%m-%dT%H:%M:%SZ"
        echo "commit: $(cat device-bin/COMMIT 2>/dev/null || echo unknown)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    } > "$OUT/machine.txt" 2>&1 || true
    export VIDKV_GOLDEN_DIR="$PWD/crates/conformance/golden"
    local bench_args=()
    for b in "${BATCHES[@]}"; do bench_args+=(--batch "$b"); done
    for t in "${TOKENS[@]}"; do bench_args+=(--tokens "$t"); done
    for p in "${parts[@]}"; do
        case "$p" in
        bench)
            part bench 200 sh -c "device-bin/vidkv-cuda-bench ${bench_args[*]} --tune \
                > '$OUT/bench.jsonl' 2>> '$OUT/stderr.txt'"
            # The other presets (generic kernel) on the headline shape, for reference.
            part bench-schemes 120 sh -c "device-bin/vidkv-cuda-bench --scheme vidkv-paper \
                --scheme kivi2 --scheme kivi4 --scheme pc2 --batch 1 --batch 16 --tokens 65536 \
                --reps 20 2>> '$OUT/stderr.txt' | grep -v '\"kind\":\"copy\"' >> '$OUT/bench.jsonl'"
            ;;
        sdpa)
            part sdpa 150 sh -c "python3 scripts/sdpa_bench.py --batch ${BATCHES[*]} \
                --tokens ${TOKENS[*]} > '$OUT/sdpa.jsonl' 2>> '$OUT/stderr.txt'"
            python3 scripts/h200_summary.py "$OUT/bench.jsonl" "$OUT/sdpa.jsonl" \
                > "$OUT/summary.md" 2>&1 || true
            ;;
        conformance)
            part conformance 170 sh -c "device-bin/vidkv-cuda-device-test --nocapture \
                --test-threads 4 > '$OUT/conformance.txt' 2>&1"
            ;;
        sanitizer)
            local cs
            cs=$(command -v compute-sanitizer ||
                ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer \
                    2>/dev/null | head -1 || true)
            if [ -z "$cs" ]; then
                echo "compute-sanitizer not found on this machine" | tee -a "$OUT/machine.txt"
                continue
            fi
            # Reduced runs: every kernel (encoders, decoders, both attention kernels) is
            # exercised; the properties with 2 cases each.
            echo "compute-sanitizer: $cs" >> "$OUT/machine.txt"
            part memcheck 150 sh -c "PROPTEST_CASES=2 '$cs' --tool memcheck --error-exitcode 9 \
                device-bin/vidkv-cuda-device-test --test-threads 1 cuda_streaming cuda::encode \
                cuda::decode cuda::rejects cuda::damaged > '$OUT/sanitizer.txt' 2>&1"
            part racecheck 120 sh -c "PROPTEST_CASES=1 '$cs' --tool racecheck --error-exitcode 9 \
                device-bin/vidkv-cuda-device-test --test-threads 1 cuda_streaming \
                cuda::encode cuda::decode >> '$OUT/sanitizer.txt' 2>&1"
            ;;
        profile)
            # Nsight Compute on the headline step (B 16, T 65536), if the machine has it and
            # allows counters: occupancy, throughput, stall reasons.
            local ncu
            ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1 || true)
            if [ -z "$ncu" ]; then
                echo "ncu not found on this machine" | tee -a "$OUT/machine.txt"
                continue
            fi
            part profile 150 sh -c "'$ncu' --kernel-name regex:vk_attend_tc --launch-skip 2 \
                --launch-count 1 --section SpeedOfLight --section Occupancy \
                --section LaunchStats --section WarpStateStats --section SchedulerStats \
                --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
                device-bin/vidkv-cuda-bench --batch 16 --tokens 65536 --reps 3 \
                > '$OUT/profile.txt' 2>&1"
            ;;
        *)
            echo "unknown part $p" >&2
            exit 2
            ;;
        esac
    done
    cat "$OUT/machine.txt"
}

case "${1:-}" in
build) build ;;
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: $0 build | run [bench] [sdpa] [conformance] [sanitizer]" >&2
    exit 2
    ;;
esac
