// vidkv CUDA kernels: block decoders (full dequantization to f32 rows, for `decode_keys` /
// `decode_values`; attention never uses them). One CTA of 128 threads per block. Damaged blocks
// are reported (field and byte offset, smallest offset wins, as the scalar decoder's scan order)
// and never read out of bounds.
#include "common.cuh"

#define DEC_THREADS 128

// Shared memory: out_ch[D], norm_ch[D] (i32), z[G*M] f32 (lane values), flags.
extern "C" __global__ void __launch_bounds__(DEC_THREADS) vk_decode_keys(DecodeParams p) {
    const KCodec& c = p.c;
    const int blk = blockIdx.x;
    if (blk >= p.blocks) return;
    const int d = c.d, g = c.g, tid = threadIdx.x;
    const u8* in = (const u8*)p.encoded + (i64)blk * c.key_block_bytes;
    float* out = (float*)p.out + (i64)blk * g * d;
    u64* errors = (u64*)p.errors;
    const u64 base = (u64)blk * c.key_block_bytes;
    __shared__ int bad, bad_fields;  // one flag per checking phase: no thread reads a flag that
    if (tid == 0) bad = bad_fields = 0;  // another may still write
    sync_block();

    if (c.key_kind == KEY_PERCHANNEL) {
        const int bits = c.key_bits, per_channel = g * bits / 8;
        for (int ch = tid; ch < d; ch += DEC_THREADS) {
            u16 lo = rd16(in + c.k_params + 4 * ch), st = rd16(in + c.k_params + 4 * ch + 2);
            if (!h_finite(lo) || !h_finite(st) || h_negative(st)) {
                report(errors, ERR_SLOT_CORRUPT, base + c.k_params + 4 * ch, CORRUPT_PARAMS);
                atomic_add_i32(&bad, 1);
            }
        }
        sync_block();
        if (bad) return;
        for (int e = tid; e < g * d; e += DEC_THREADS) {
            int t = e / d, ch = e % d;
            u16 lo = rd16(in + c.k_params + 4 * ch), st = rd16(in + c.k_params + 4 * ch + 2);
            int bit = t * bits;
            u32 code = (in[c.k_codes + ch * per_channel + bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
            out[e] = affine_decode(c.arith, lo, st, code);
        }
        return;
    }

    // Mixed precision.
    const int k = c.outliers, m = c.lanes;
    i32* out_ch = (i32*)vk_smem;
    i32* norm_ch = out_ch + d;
    float* z = (float*)(norm_ch + d);  // [G][M]
    if (tid < 32) {
        // Mask: no bit at or above D, exactly k bits.
        int count = 0;
        bool stray = false;
        int base_rank = 0;
        for (int w = 0; w < c.mask_words; ++w) {
            u32 word = rd32(in + c.k_mask + 4 * w);
            count += popc(word);
            for (int b = 0; b < 32; ++b)
                if (((word >> b) & 1) && w * 32 + b >= d) stray = true;
            int ch = w * 32 + (int)lane_id();
            bool o = ch < d && ((word >> lane_id()) & 1);
            int before = base_rank + popc(word & ((1u << lane_id()) - 1u));
            if (ch < d) {
                if (o) {
                    if (before < d) out_ch[before] = ch;
                } else if (ch - before >= 0 && ch - before < d) {
                    norm_ch[ch - before] = ch;
                }
            }
            base_rank += popc(word & ((w * 32 + 32 <= d) ? 0xffffffffu : ((1u << (d - w * 32)) - 1u)));
        }
        if (tid == 0 && (stray || count != k)) {
            report(errors, ERR_SLOT_CORRUPT, base + c.k_mask, CORRUPT_MASK);
            atomic_add_i32(&bad, 1);
        }
    }
    sync_block();
    if (bad) return;
    for (int i = tid; i < k; i += DEC_THREADS) {
        u16 lo = rd16(in + c.k_oparams + 4 * i), st = rd16(in + c.k_oparams + 4 * i + 2);
        if (!h_finite(lo) || !h_finite(st) || h_negative(st)) {
            report(errors, ERR_SLOT_CORRUPT, base + c.k_oparams + 4 * i, CORRUPT_PARAMS);
            atomic_add_i32(&bad_fields, 1);
        }
    }
    for (int j = tid; j < m; j += DEC_THREADS) {
        u16 s = rd16(in + c.k_lscales + 2 * j);
        if (!h_finite(s) || h_negative(s)) {
            report(errors, ERR_SLOT_CORRUPT, base + c.k_lscales + 2 * j, CORRUPT_LANE_SCALE);
            atomic_add_i32(&bad_fields, 1);
        }
    }
    sync_block();
    if (bad_fields) return;
    // Outlier channels.
    for (int e = tid; e < g * k; e += DEC_THREADS) {
        int t = e / k, i = e % k;
        u16 lo = rd16(in + c.k_oparams + 4 * i), st = rd16(in + c.k_oparams + 4 * i + 2);
        u32 code = (in[c.k_ocodes + i * (g / 4) + t / 4] >> (2 * (t % 4))) & 3u;
        out[t * d + out_ch[i]] = affine_decode(c.arith, lo, st, code);
    }
    // Lane values.
    for (int e = tid; e < g * m; e += DEC_THREADS) {
        int t = e / m, j = e % m;
        float s = h2f(rd16(in + c.k_lscales + 2 * j));
        u32 bit = (in[c.k_lbits + j * (g / 8) + t / 8] >> (t % 8)) & 1u;
        float sign = bit ? 1.0f : -1.0f;
        float v;
        if (c.lane_rule == RULE_SYMMETRIC)
            v = fmul_rn(sign, s);
        else if (is_imag_lane(j))
            v = fmul_rn(fmul_rn(sign, s), 0.5f);
        else
            v = fmul_rn((float)bit, s);
        z[e] = v;
    }
    sync_block();
    // Inverse transform per token, scattered to the normal channels.
    if (c.transform == TR_FFT) {
        const float* cs = (const float*)p.twiddles;
        const float* sn = cs + m;
        for (int e = tid; e < g * m; e += DEC_THREADS) {
            int t = e / m, n = e % m;
            double acc = 0.0;
            for (int j = 0; j < m; ++j) {
                int kb = lane_bin(j);
                int idx = (int)(((i64)kb * n) % m);
                double basis = is_imag_lane(j) ? -(double)sn[idx] : (double)cs[idx];
                double wgt = (kb == 0 || 2 * kb == m) ? 1.0 : 2.0;
                acc = dadd_rn(acc, dmul_rn(dmul_rn(wgt, (double)z[t * m + j]), basis));
            }
            out[t * d + norm_ch[n]] = (float)ddiv_rn(acc, (double)m);
        }
    } else if (c.transform == TR_HADAMARD) {
        // One thread per token: in-place butterflies on its row of z.
        for (int t = tid; t < g; t += DEC_THREADS) {
            float* v = z + t * m;
            for (int h = 1; h < m; h *= 2)
                for (int st = 0; st < m; st += 2 * h)
                    for (int i = st; i < st + h; ++i) {
                        float a = v[i], b = v[i + h];
                        v[i] = fadd_rn(a, b);
                        v[i + h] = fsub_rn(a, b);
                    }
            float norm = fdiv_rn(1.0f, fsqrt_rn((float)m));
            for (int n = 0; n < m; ++n) out[t * d + norm_ch[n]] = fmul_rn(v[n], norm);
        }
    } else {
        for (int e = tid; e < g * m; e += DEC_THREADS) {
            int t = e / m, n = e % m;
            out[t * d + norm_ch[n]] = z[e];
        }
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) vk_decode_values(DecodeParams p) {
    const KCodec& c = p.c;
    const int blk = blockIdx.x;
    if (blk >= p.blocks) return;
    const int d = c.d, g = c.g, tid = threadIdx.x;
    const u8* in = (const u8*)p.encoded + (i64)blk * c.value_block_bytes;
    float* out = (float*)p.out + (i64)blk * g * d;
    u64* errors = (u64*)p.errors;
    const u64 base = (u64)blk * c.value_block_bytes;
    __shared__ int bad;
    if (tid == 0) bad = 0;
    sync_block();

    if (c.val_kind == VAL_TERNARY) {
        for (int ch = tid; ch < d; ch += DEC_THREADS) {
            u16 s = rd16(in + c.v_scales + 2 * ch);
            if (!h_finite(s) || h_negative(s)) {
                report(errors, ERR_SLOT_CORRUPT, base + c.v_scales + 2 * ch, CORRUPT_TERNARY_SCALE);
                atomic_add_i32(&bad, 1);
            }
        }
        for (int e = tid; e < g * c.trit_row; e += DEC_THREADS) {
            if (in[c.v_trits + e] > 242) {
                int t = e / c.trit_row;
                report(errors, ERR_SLOT_CORRUPT, base + c.v_trits + t * c.trit_row, CORRUPT_TRIT);
                atomic_add_i32(&bad, 1);
            }
        }
        sync_block();
        if (bad) return;
        for (int e = tid; e < g * d; e += DEC_THREADS) {
            int t = e / d, ch = e % d;
            u32 byte = in[c.v_trits + t * c.trit_row + ch / 5];
            for (int r = ch % 5; r > 0; --r) byte /= 3;
            float q = (float)(int)(byte % 3) - 1.0f;
            out[e] = fmul_rn(q, h2f(rd16(in + c.v_scales + 2 * ch)));
        }
        return;
    }
    const int bits = c.val_bits;
    int nparams, cg = d;
    if (c.val_kind == VAL_PERTOKEN) {
        cg = c.channel_group;
        nparams = g * ((d + cg - 1) / cg);
    } else {
        nparams = d;
    }
    for (int i = tid; i < nparams; i += DEC_THREADS) {
        u16 lo = rd16(in + c.v_params + 4 * i), st = rd16(in + c.v_params + 4 * i + 2);
        if (!h_finite(lo) || !h_finite(st) || h_negative(st)) {
            report(errors, ERR_SLOT_CORRUPT, base + c.v_params + 4 * i, CORRUPT_PARAMS);
            atomic_add_i32(&bad, 1);
        }
    }
    sync_block();
    if (bad) return;
    const int groups = (d + cg - 1) / cg;
    for (int e = tid; e < g * d; e += DEC_THREADS) {
        int t = e / d, ch = e % d;
        int pi = c.val_kind == VAL_PERTOKEN ? t * groups + ch / cg : ch;
        u16 lo = rd16(in + c.v_params + 4 * pi), st = rd16(in + c.v_params + 4 * pi + 2);
        int bit = e * bits;
        u32 code = (in[c.v_codes + bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
        out[e] = affine_decode(c.arith, lo, st, code);
    }
}
