// vidkv CUDA kernels: block encoders (prefill encode). One CTA of 128 threads per block of G
// tokens; the block's rows are converted to f32 in shared memory once and every statistic is
// computed there. The arithmetic mirrors vidkv-cpu (the normative implementation) operation by
// operation (`__fmul_rn`-style helpers keep nvcc from contracting into FMAs), so that the bytes
// agree except where a value sits within rounding of a decision boundary.
#include "common.cuh"

#define ENC_THREADS 128
#define ENC_WARPS (ENC_THREADS / 32)

// Shared-memory carve-up of one encoder CTA (dynamic shared memory, see `encode_smem_bytes` in
// src/kernels.rs): x[G*D] f32, lo[D], hi[D], rank[D] (i32), out_ch[D], norm_ch[D], then per warp
// two f32 scratch rows of D (FFT re/im).
struct EncSmem {
    float* x;
    float* lo;
    float* hi;
    i32* rank;
    i32* out_ch;
    i32* norm_ch;
    float* scratch;
};

VK_DEV EncSmem enc_carve(u8* base, int g, int d) {
    EncSmem s;
    s.x = (float*)base;
    s.lo = s.x + g * d;
    s.hi = s.lo + d;
    s.rank = (i32*)(s.hi + d);
    s.out_ch = s.rank + d;
    s.norm_ch = s.out_ch + d;
    s.scratch = (float*)(s.norm_ch + d);
    return s;
}

// Loads block `blk` into x (f32, rounded to f16 under reference arithmetic) and reports
// non-finite or out-of-range elements with their flat index in the call's input.
VK_DEV void enc_load(const EncodeParams& p, int blk, float* x) {
    const int n = p.c.g * p.c.d;
    const i64 base = (i64)blk * n;
    const u8* in = (const u8*)p.input;
    u64* errors = (u64*)p.errors;
    for (int i = threadIdx.x; i < n; i += ENC_THREADS) {
        float v = load_elem(in, p.dtype, base + i);
        bool finite = (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
        if (!finite) {
            report(errors, ERR_SLOT_NONFINITE, (u64)(base + i), 0);
            v = 0.0f;
        } else if (fabsf(v) > F16_MAX_F) {
            report(errors, ERR_SLOT_RANGE, (u64)(base + i), 0);
            v = 0.0f;
        }
        x[i] = p.c.arith == ARITH_REF ? r16(v) : v;
    }
}

// Fits min/max parameters (vidkv-cpu affine::fit) from the group's min and max.
VK_DEV void affine_fit(int arith, int levels, float lo, float hi, u16* plo, u16* pstep) {
    float step;
    if (arith == ARITH_F32) {
        step = fdiv_rn(fsub_rn(hi, lo), (float)levels);
    } else {
        float range = r16(fsub_rn(hi, lo));
        range = range < F16_MAX_F ? range : F16_MAX_F;
        step = r16(fdiv_rn(range, (float)levels));
    }
    step = step < F16_MAX_F ? step : F16_MAX_F;
    *plo = f2h(lo);
    *pstep = f2h(step);
}

// The code of x (vidkv-cpu affine::encode).
VK_DEV u32 affine_code(int arith, int max_code, u16 plo, u16 pstep, float x) {
    float lo = h2f(plo), step = h2f(pstep);
    if (step == 0.0f) return 0;
    float t = arith_step(arith, fdiv_rn(arith_step(arith, fsub_rn(x, lo)), step));
    t = rint_f(t);
    t = t < 0.0f ? 0.0f : t;
    t = t > (float)max_code ? (float)max_code : t;
    return (u32)t;
}

// mean |x| (vidkv-cpu arith::mean_abs): f32 sum in order, divided by n, rounded to f16 under
// reference arithmetic.
VK_DEV float finish_mean(int arith, float sum, int n) {
    if (n == 0) return 0.0f;
    return arith_step(arith, fdiv_rn(sum, (float)n));
}

VK_DEV u32 bit_reverse(u32 n, int bits) { return bits == 0 ? 0 : (__brev(n) >> (32 - bits)); }

// Forward transform of one token's normal channels, cooperatively by one warp. `xin` holds the M
// gathered values; the M outputs replace them. `re`/`im` are this warp's scratch rows.
VK_DEV void warp_forward(int transform, int m, const float* twid, float* xin, float* re, float* im) {
    const int lane = lane_id();
    if (transform == TR_IDENTITY || m == 0) return;
    if (transform == TR_HADAMARD) {
        for (int h = 1; h < m; h *= 2) {
            for (int k = lane; k < m / 2; k += 32) {
                int i = (k / h) * 2 * h + (k % h);
                float a = xin[i], b = xin[i + h];
                xin[i] = fadd_rn(a, b);
                xin[i + h] = fsub_rn(a, b);
            }
            sync_warp();
        }
        float norm = fdiv_rn(1.0f, fsqrt_rn((float)m));
        for (int i = lane; i < m; i += 32) xin[i] = fmul_rn(xin[i], norm);
        sync_warp();
        return;
    }
    const float* cs = twid;
    const float* sn = twid + m;
    if ((m & (m - 1)) == 0) {
        // Radix-2 decimation in time (vidkv-cpu LaneTransform::forward_radix2).
        int bits = __ffs(m) - 1;
        for (int n = lane; n < m; n += 32) {
            re[bit_reverse(n, bits)] = xin[n];
            im[n] = 0.0f;
        }
        sync_warp();
        for (int half = 1; half < m; half *= 2) {
            int stride = m / (2 * half);
            for (int k = lane; k < m / 2; k += 32) {
                int i = k % half;
                int a = (k / half) * 2 * half + i;
                int b = a + half;
                float c = cs[i * stride], s = -sn[i * stride];
                float tr = fsub_rn(fmul_rn(re[b], c), fmul_rn(im[b], s));
                float ti = fadd_rn(fmul_rn(re[b], s), fmul_rn(im[b], c));
                float ra = re[a], ia = im[a];
                re[b] = fsub_rn(ra, tr);
                im[b] = fsub_rn(ia, ti);
                re[a] = fadd_rn(ra, tr);
                im[a] = fadd_rn(ia, ti);
            }
            sync_warp();
        }
        for (int j = lane; j < m; j += 32) {
            int k = lane_bin(j);
            xin[j] = is_imag_lane(j) ? im[k] : re[k];
        }
        sync_warp();
    } else {
        // Direct DFT in f64 (vidkv-cpu LaneTransform::forward_direct).
        for (int n = lane; n < m; n += 32) re[n] = xin[n];
        sync_warp();
        for (int j = lane; j < m; j += 32) {
            int k = lane_bin(j);
            bool imag = is_imag_lane(j);
            double acc = 0.0;
            for (int n = 0; n < m; ++n) {
                int idx = (int)(((i64)k * n) % m);
                double term = imag ? dmul_rn(-(double)re[n], (double)sn[idx])
                                   : dmul_rn((double)re[n], (double)cs[idx]);
                acc = dadd_rn(acc, term);
            }
            xin[j] = (float)acc;
        }
        sync_warp();
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

VK_DEV void encode_mixed_block(const EncodeParams& p, EncSmem s, u8* out) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, k = c.outliers, m = c.lanes, tid = threadIdx.x;
    float* x = s.x;
    // Channel ranges over the block's tokens.
    for (int ch = tid; ch < d; ch += ENC_THREADS) {
        float lo = x[ch], hi = x[ch];
        for (int t = 1; t < g; ++t) {
            float v = x[t * d + ch];
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        s.lo[ch] = lo;
        s.hi[ch] = hi;
    }
    sync_block();
    // Outlier choice: the k largest ranges, ties to the lower channel (or the fixed set).
    const u32* fixed = (const u32*)p.fixed_mask;
    for (int ch = tid; ch < d; ch += ENC_THREADS) {
        bool chosen;
        if (fixed) {
            chosen = (fixed[ch >> 5] >> (ch & 31)) & 1;
        } else {
            float r = arith_step(c.arith, fsub_rn(s.hi[ch], s.lo[ch]));
            int rank = 0;
            for (int o = 0; o < d; ++o) {
                float ro = arith_step(c.arith, fsub_rn(s.hi[o], s.lo[o]));
                rank += (ro > r) || (ro == r && o < ch);
            }
            chosen = rank < k;
        }
        s.rank[ch] = chosen ? 1 : 0;
    }
    sync_block();
    // Ascending ranks among outliers and among normal channels; the mask words.
    if (tid < 32) {
        int base = 0;
        for (int c0 = 0; c0 < d; c0 += 32) {
            int ch = c0 + tid;
            bool out_ch = ch < d && s.rank[ch] == 1;
            u32 bal = warp_ballot(out_ch);
            int before = base + popc(bal & ((1u << tid) - 1u));
            if (ch < d) {
                if (out_ch) {
                    if (before < d) s.out_ch[before] = ch;
                } else {
                    int nr = ch - before;
                    if (nr < d) s.norm_ch[nr] = ch;
                }
            }
            if (tid == 0) {
                u32 w = bal;
                u8* mp = out + c.k_mask + 4 * (c0 >> 5);
                mp[0] = (u8)w;
                mp[1] = (u8)(w >> 8);
                mp[2] = (u8)(w >> 16);
                mp[3] = (u8)(w >> 24);
            }
            base += popc(bal);
        }
    }
    sync_block();
    // Outlier parameters, then their 2-bit codes (G/4 bytes per outlier).
    for (int i = tid; i < k; i += ENC_THREADS) {
        int ch = s.out_ch[i];
        u16 plo, pst;
        affine_fit(c.arith, 3, s.lo[ch], s.hi[ch], &plo, &pst);
        wr16(out + c.k_oparams + 4 * i, plo);
        wr16(out + c.k_oparams + 4 * i + 2, pst);
    }
    sync_block();
    const int obytes = g / 4;
    for (int e = tid; e < k * obytes; e += ENC_THREADS) {
        int i = e / obytes, byte = e % obytes;
        int ch = s.out_ch[i];
        u16 plo = rd16(out + c.k_oparams + 4 * i), pst = rd16(out + c.k_oparams + 4 * i + 2);
        u32 v = 0;
        for (int j = 0; j < 4; ++j) {
            int t = byte * 4 + j;
            v |= affine_code(c.arith, 3, plo, pst, x[t * d + ch]) << (2 * j);
        }
        out[c.k_ocodes + e] = (u8)v;
    }
    sync_block();
    // Transform each token's normal channels (one warp per token); z replaces the row's start.
    if (m > 0) {
        const int w = warp_id(), lane = lane_id();
        float* re = s.scratch + w * 2 * d;
        float* im = re + d;
        for (int t = w; t < g; t += ENC_WARPS) {
            float* row = x + t * d;
            float gathered[8];
            for (int n = lane, r = 0; n < m; n += 32, ++r) gathered[r] = row[s.norm_ch[n]];
            sync_warp();
            for (int n = lane, r = 0; n < m; n += 32, ++r) row[n] = gathered[r];
            sync_warp();
            warp_forward(c.transform, m, (const float*)p.twiddles, row, re, im);
        }
    }
    sync_block();
    // Lane scales (mean |z|) and sign bits.
    for (int j = tid; j < m; j += ENC_THREADS) {
        float sum = 0.0f;
        for (int t = 0; t < g; ++t) sum = fadd_rn(sum, fabsf(x[t * d + j]));
        float sc = finish_mean(c.arith, sum, g);
        wr16(out + c.k_lscales + 2 * j, f2h(sc < F16_MAX_F ? sc : F16_MAX_F));
    }
    const int lbytes = g / 8;
    for (int e = tid; e < m * lbytes; e += ENC_THREADS) {
        int j = e / lbytes, byte = e % lbytes;
        u32 v = 0;
        for (int b = 0; b < 8; ++b) v |= (x[(byte * 8 + b) * d + j] >= 0.0f ? 1u : 0u) << b;
        out[c.k_lbits + e] = (u8)v;
    }
}

VK_DEV void encode_perchannel_keys_block(const EncodeParams& p, EncSmem s, u8* out) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, bits = c.key_bits, tid = threadIdx.x;
    const int levels = (1 << bits) - 1;
    for (int ch = tid; ch < d; ch += ENC_THREADS) {
        float lo = s.x[ch], hi = s.x[ch];
        for (int t = 1; t < g; ++t) {
            float v = s.x[t * d + ch];
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        u16 plo, pst;
        affine_fit(c.arith, levels, lo, hi, &plo, &pst);
        wr16(out + c.k_params + 4 * ch, plo);
        wr16(out + c.k_params + 4 * ch + 2, pst);
    }
    sync_block();
    const int per_channel = g * bits / 8, per_byte = 8 / bits;
    for (int e = tid; e < d * per_channel; e += ENC_THREADS) {
        int ch = e / per_channel, byte = e % per_channel;
        u16 plo = rd16(out + c.k_params + 4 * ch), pst = rd16(out + c.k_params + 4 * ch + 2);
        u32 v = 0;
        for (int j = 0; j < per_byte; ++j) {
            int t = byte * per_byte + j;
            v |= affine_code(c.arith, levels, plo, pst, s.x[t * d + ch]) << (bits * j);
        }
        out[c.k_codes + e] = (u8)v;
    }
}

extern "C" __global__ void __launch_bounds__(ENC_THREADS) vk_encode_keys(EncodeParams p) {
    const int blk = blockIdx.x;
    if (blk >= p.blocks) return;
    EncSmem s = enc_carve(vk_smem, p.c.g, p.c.d);
    u8* out = (u8*)p.out + (i64)blk * p.c.key_block_bytes;
    enc_load(p, blk, s.x);
    sync_block();
    if (p.c.key_kind == KEY_MIXED)
        encode_mixed_block(p, s, out);
    else
        encode_perchannel_keys_block(p, s, out);
}

// ---------------------------------------------------------------------------------------------
// Values (optionally with excluded tokens: no part in the statistics, code "no value")
// ---------------------------------------------------------------------------------------------

VK_DEV bool kept(const u8* excl, int t) { return !excl || ((excl[t >> 3] >> (t & 7)) & 1) == 0; }

VK_DEV void encode_ternary_block(const EncodeParams& p, EncSmem s, const u8* excl, u8* out) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, tid = threadIdx.x;
    float* thr = s.lo;  // thresholds per channel
    for (int ch = tid; ch < d; ch += ENC_THREADS) {
        float sum = 0.0f;
        int n = 0;
        for (int t = 0; t < g; ++t)
            if (kept(excl, t)) {
                sum = fadd_rn(sum, fabsf(s.x[t * d + ch]));
                ++n;
            }
        float gamma = finish_mean(c.arith, sum, n);
        float th = arith_step(c.arith, fmul_rn(0.5f, gamma));
        float scale;
        if (c.ternary_scale == TS_MEANABS) {
            scale = gamma;
        } else if (c.ternary_scale == TS_UNIT) {
            scale = 1.0f;
        } else {
            float ks = 0.0f;
            int kn = 0;
            for (int t = 0; t < g; ++t)
                if (kept(excl, t)) {
                    float v = s.x[t * d + ch];
                    if (fabsf(v) > th) {
                        ks = fadd_rn(ks, fabsf(v));
                        ++kn;
                    }
                }
            scale = finish_mean(c.arith, ks, kn);
        }
        scale = scale < F16_MAX_F ? scale : F16_MAX_F;
        wr16(out + c.v_scales + 2 * ch, f2h(scale));
        thr[ch] = th;
    }
    sync_block();
    const int rb = c.trit_row;
    for (int e = tid; e < g * rb; e += ENC_THREADS) {
        int t = e / rb, b = e % rb;
        bool keep = kept(excl, t);
        u32 acc = 0;
        for (int j = 4; j >= 0; --j) {
            int ch = 5 * b + j;
            u32 digit = 1;
            if (ch < d && keep) {
                float v = s.x[t * d + ch], th = thr[ch];
                digit = v > th ? 2u : (v < -th ? 0u : 1u);
            }
            acc = acc * 3 + digit;
        }
        out[c.v_trits + e] = (u8)acc;
    }
}

VK_DEV void encode_pertoken_block(const EncodeParams& p, EncSmem s, const u8* excl, u8* out) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, bits = c.val_bits, tid = threadIdx.x;
    const int cg = c.channel_group, groups = (d + cg - 1) / cg, levels = (1 << bits) - 1;
    for (int e = tid; e < g * groups; e += ENC_THREADS) {
        int t = e / groups, gi = e % groups;
        u16 plo = 0, pst = 0;
        if (kept(excl, t)) {
            int c0 = gi * cg, c1 = c0 + cg < d ? c0 + cg : d;
            float lo = s.x[t * d + c0], hi = lo;
            for (int ch = c0 + 1; ch < c1; ++ch) {
                float v = s.x[t * d + ch];
                lo = fminf(lo, v);
                hi = fmaxf(hi, v);
            }
            affine_fit(c.arith, levels, lo, hi, &plo, &pst);
        }
        wr16(out + c.v_params + 4 * e, plo);
        wr16(out + c.v_params + 4 * e + 2, pst);
    }
    sync_block();
    const int per_byte = 8 / bits, nbytes = g * d * bits / 8;
    for (int byte = tid; byte < nbytes; byte += ENC_THREADS) {
        u32 v = 0;
        for (int j = 0; j < per_byte; ++j) {
            int el = byte * per_byte + j, t = el / d, ch = el % d;
            if (!kept(excl, t)) continue;
            int pi = t * groups + ch / cg;
            u16 plo = rd16(out + c.v_params + 4 * pi), pst = rd16(out + c.v_params + 4 * pi + 2);
            v |= affine_code(c.arith, levels, plo, pst, s.x[el]) << (bits * j);
        }
        out[c.v_codes + byte] = (u8)v;
    }
}

VK_DEV void encode_perchannel_values_block(const EncodeParams& p, EncSmem s, const u8* excl, u8* out) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, bits = c.val_bits, tid = threadIdx.x;
    const int levels = (1 << bits) - 1;
    for (int ch = tid; ch < d; ch += ENC_THREADS) {
        u16 plo = 0, pst = 0;
        bool any = false;
        float lo = 0.0f, hi = 0.0f;
        for (int t = 0; t < g; ++t)
            if (kept(excl, t)) {
                float v = s.x[t * d + ch];
                if (!any) {
                    lo = hi = v;
                    any = true;
                } else {
                    lo = fminf(lo, v);
                    hi = fmaxf(hi, v);
                }
            }
        if (any) affine_fit(c.arith, levels, lo, hi, &plo, &pst);
        wr16(out + c.v_params + 4 * ch, plo);
        wr16(out + c.v_params + 4 * ch + 2, pst);
    }
    sync_block();
    const int per_byte = 8 / bits, nbytes = g * d * bits / 8;
    for (int byte = tid; byte < nbytes; byte += ENC_THREADS) {
        u32 v = 0;
        for (int j = 0; j < per_byte; ++j) {
            int el = byte * per_byte + j, t = el / d, ch = el % d;
            if (!kept(excl, t)) continue;
            u16 plo = rd16(out + c.v_params + 4 * ch), pst = rd16(out + c.v_params + 4 * ch + 2);
            v |= affine_code(c.arith, levels, plo, pst, s.x[el]) << (bits * j);
        }
        out[c.v_codes + byte] = (u8)v;
    }
}

extern "C" __global__ void __launch_bounds__(ENC_THREADS) vk_encode_values(EncodeParams p) {
    const int blk = blockIdx.x;
    if (blk >= p.blocks) return;
    EncSmem s = enc_carve(vk_smem, p.c.g, p.c.d);
    u8* out = (u8*)p.out + (i64)blk * p.c.value_block_bytes;
    const u8* excl = p.excluded ? (const u8*)p.excluded + (i64)blk * (p.c.g / 8) : (const u8*)0;
    enc_load(p, blk, s.x);
    sync_block();
    if (p.c.val_kind == VAL_TERNARY)
        encode_ternary_block(p, s, excl, out);
    else if (p.c.val_kind == VAL_PERTOKEN)
        encode_pertoken_block(p, s, excl, out);
    else
        encode_perchannel_values_block(p, s, excl, out);
}
