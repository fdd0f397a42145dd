#!/usr/bin/env python3
"""torch scaled_dot_product_attention (fp16, enable_gqa=True) on the decode shapes of the vidkv
CUDA bench: one query token per sequence, B sequences of T cached tokens, 28 query heads over
4 KV heads, D = 128 (LLaVA-OneVision-7B / Qwen2-7B).

Times torch's default backend choice (cuDNN on this shape on an H200) and, separately, each of
the flash, cuDNN and memory-efficient backends, with triton.testing.do_bench (which clears a
256 MB buffer before every timed call, so the cache is not served from L2) on random inputs of
fixed shape (cuDNN builds a plan per new sequence length: every shape is timed on its own,
never as a growing loop). Prints one JSON object per line.

    python3 scripts/sdpa_bench.py --batch 1 16 --tokens 4096 16384 65536 131072
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--query-heads", type=int, default=28)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS))
    a = p.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    torch.manual_seed(0)
    for b in a.batch:
        for t in a.tokens:
            q = torch.randn(b, a.query_heads, 1, a.head_dim, device=dev, dtype=torch.float16)
            k = torch.randn(b, a.kv_heads, t, a.head_dim, device=dev, dtype=torch.float16)
            v = torch.randn(b, a.kv_heads, t, a.head_dim, device=dev, dtype=torch.float16)
            ref = None
            for label in a.backends:
                backend = BACKENDS[label]
                row = {
                    "kind": "sdpa",
                    "backend": label,
                    "device": name,
                    "torch": torch.__version__,
                    "batch": b,
                    "tokens": t,
                    "kv_heads": a.kv_heads,
                    "query_heads": a.query_heads,
                    "head_dim": a.head_dim,
                    "bytes_per_step": 2 * b * a.kv_heads * t * a.head_dim * 2,
                }

                def step():
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

                try:
                    if backend is None:
                        out = step()
                        ms = triton.testing.do_bench(step, return_mode="median")
                    else:
                        with sdpa_kernel(backend):
                            out = step()
                            ms = triton.testing.do_bench(step, return_mode="median")
                    torch.cuda.synchronize()
                    if ref is None:
                        ref = out.float()
                    row["max_abs_diff_vs_default"] = float((out.float() - ref).abs().max())
                    row["ms_per_step"] = ms
                    row["gb_per_s"] = row["bytes_per_step"] / (ms * 1e-3) / 1e9
                except Exception as e:  # a backend that does not support the shape
                    row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                print(json.dumps(row), flush=True)
            del q, k, v, ref
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
