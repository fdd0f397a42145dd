#!/usr/bin/env python3
"""Combines the JSON lines of vidkv-cuda-bench and scripts/sdpa_bench.py (one call on the GPU
machine, same shapes) into the markdown tables of docs/PERFORMANCE.md.

    python3 scripts/h200_summary.py BENCH.jsonl SDPA.jsonl > summary.md
"""
import json
import sys


def rows(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def main() -> int:
    bench = rows(sys.argv[1])
    sdpa = rows(sys.argv[2]) if len(sys.argv) > 2 else []
    copy = next((r for r in bench if r["kind"] == "copy"), None)
    device = copy["device"] if copy else "?"
    print(f"Device: {device}")
    if copy:
        print(f"Device-to-device copy bandwidth (read + write, 1 GiB): {copy['copy_gb_per_s']:.0f} GB/s")
    torch = next((r["torch"] for r in sdpa if "torch" in r), "?")
    print(f"torch {torch}; SDPA timed with triton.testing.do_bench (median), vidkv with the same "
          "L2 clearing and CUDA events (median)\n")
    print("| scheme | B | T | vidkv ms | GB/s | % of copy BW | SDPA default ms | SDPA flash ms "
          "| speedup vs faster SDPA | kernel (splits) | vs generic kernel |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in bench:
        if r["kind"] != "attention":
            continue
        b, t = r["batch"], r["tokens"]
        s = {x["backend"]: x for x in sdpa if x["batch"] == b and x["tokens"] == t}

        def ms(label):
            x = s.get(label)
            return x.get("ms_per_step") if x else None

        d, fl = ms("default"), ms("flash")
        best = min([x for x in (d, fl) if x is not None], default=None)
        sp = f"{best / r['ms_per_step']:.2f}x" if best else "-"
        fmt = lambda v: f"{v:.4f}" if v is not None else "-"
        print(f"| {r['scheme']} | {b} | {t} | {r['ms_per_step']:.4f} | {r['gb_per_s']:.0f} | "
              f"{100 * r['fraction_of_copy_bw']:.0f}% | {fmt(d)} | {fmt(fl)} | {sp} | "
              f"{r['kernel']} ({r['splits']}) | {r.get('vs_generic_kernel_max_rel', '-')} |")
    tune = [r for r in bench if r["kind"] == "attention-tune"]
    if tune:
        print("\nSplit-count tuning (same step, splits forced; the table above uses the planner's choice):\n")
        print("| B | T | splits | ms |")
        print("|---|---|---|---|")
        for r in tune:
            print(f"| {r['batch']} | {r['tokens']} | {r['splits']} | {r['ms_per_step']:.4f} |")
    enc = [r for r in bench if r["kind"] == "encode"]
    if enc:
        print("\n| scheme | B | T | prefill encode ms (K+V) | GB/s of f16 read | % of copy BW |")
        print("|---|---|---|---|---|---|")
        for r in enc:
            print(f"| {r['scheme']} | {r['batch']} | {r['tokens']} | {r['ms']:.3f} | "
                  f"{r['prefill_gb_per_s']:.0f} | {100 * r['fraction_of_copy_bw']:.0f}% |")
    other = [x for x in sdpa if x["backend"] not in ("default", "flash")]
    if other:
        print("\nOther SDPA backends (ms, or the error):")
        for x in other:
            v = f"{x['ms_per_step']:.4f}" if "ms_per_step" in x else x.get("error", "?")
            print(f"- {x['backend']} B={x['batch']} T={x['tokens']}: {v}")
    errs = [x for x in sdpa if x["backend"] in ("default", "flash") and "error" in x]
    for x in errs:
        print(f"- {x['backend']} B={x['batch']} T={x['tokens']}: {x['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
