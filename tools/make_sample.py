#!/usr/bin/env python3
"""Cut the small sample tensors that `vidkv`'s default run uses out of the full data set.

Usage: python3 tools/make_sample.py /path/to/shared/data [OUTDIR]

OUTDIR defaults to crates/vidkv/data next to this script's repository. Only the Python standard
library is used: a safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, data_offsets relative to the end of the header), then the raw data.
The output is deterministic (same input -> byte-identical files).
"""

import json
import os
import struct
import sys

DTYPE_SIZE = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8, "U8": 1, "I8": 1}

# (source file, output file, [(tensor name, tokens to keep or None for all)], extra metadata)
CUTS = [
    (
        "smollm2_apache_kv.safetensors",
        "sample_smollm2.safetensors",
        [("k_post.15", None), ("v.15", None), ("q_post.15", None), ("token_ids", None)],
        {"cut": "k_post.15, v.15, q_post.15, token_ids from smollm2_apache_kv.safetensors, unchanged"},
    ),
    (
        "dinov2s_video_kv.safetensors",
        "sample_dinov2.safetensors",
        [("k.11", 1028), ("v.11", 1028)],
        {
            "cut": "k.11, v.11 from dinov2s_video_kv.safetensors, first 1028 of 2056 tokens "
            "(frames 0-3 = the first clip, 4 x 257 tokens)",
            # The source lists its clips as "chelsea,shapes" with 4 frames each; we keep the first.
            "frames": "chelsea",
        },
    ),
]


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    return header, memoryview(blob)[8 + n :]


def tensor_bytes(header, data, name):
    info = header[name]
    start, end = info["data_offsets"]
    size = DTYPE_SIZE[info["dtype"]]
    count = 1
    for d in info["shape"]:
        count *= d
    if end - start != count * size:
        raise SystemExit(f"{name}: data_offsets {start}..{end} do not match shape {info['shape']}")
    return info["dtype"], list(info["shape"]), bytes(data[start:end])


def cut_tokens(dtype, shape, raw, tokens):
    """Keep the first `tokens` rows of axis 1 of a [heads, tokens, dim] tensor."""
    if len(shape) != 3:
        raise SystemExit(f"expected [heads, tokens, dim], got {shape}")
    heads, total, dim = shape
    if tokens > total:
        raise SystemExit(f"asked for {tokens} tokens, tensor has {total}")
    row = dim * DTYPE_SIZE[dtype]
    out = b"".join(raw[h * total * row : (h * total + tokens) * row] for h in range(heads))
    return [heads, tokens, dim], out


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in tensors:
            f.write(raw)


def main(argv):
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    src_dir = argv[1]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = argv[2] if len(argv) == 3 else os.path.join(repo, "crates", "vidkv", "data")
    os.makedirs(out_dir, exist_ok=True)
    total = 0
    for src, dst, names, extra in CUTS:
        header, data = read_safetensors(os.path.join(src_dir, src))
        metadata = dict(header.get("__metadata__", {}))
        metadata.update(extra)
        metadata["source"] = src
        tensors = []
        for name, tokens in names:
            dtype, shape, raw = tensor_bytes(header, data, name)
            if tokens is not None:
                shape, raw = cut_tokens(dtype, shape, raw, tokens)
            tensors.append((name, dtype, shape, raw))
        path = os.path.join(out_dir, dst)
        write_safetensors(path, tensors, metadata)
        size = os.path.getsize(path)
        total += size
        shapes = ", ".join(f"{n} {d}{s}" for n, d, s, _ in tensors)
        print(f"{path}: {size} bytes ({shapes})")
    print(f"total: {total} bytes")
    if total > 4 * 1000 * 1000:
        raise SystemExit("sample exceeds 4 MB")


if __name__ == "__main__":
    main(sys.argv)
