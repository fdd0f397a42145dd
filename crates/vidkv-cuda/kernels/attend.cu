// vidkv CUDA kernels: fused decode attention on the packed cache (flash-decoding).
//
// Launch: grid (splits, jobs), one job = one KV head of one sequence with the <= 8 query heads of
// its GQA group. CTA (split s, job j) attends the quantized blocks [s*bps, (s+1)*bps) of the job;
// the last split also attends the f16 rows (sinks and residual window). Each CTA writes a partial
// (running max m, sum l, accumulator) per query head to a workspace; the last CTA of a job to
// finish (a per-job atomic counter) merges the partials and writes the output, so one launch does
// the whole step. Scores are kept in the log2 domain (q is pre-scaled by scale * log2 e).
//
// Two kernels:
// * vk_attend_simt: any scheme, head_dim, G, salient tokens. f32 on CUDA cores, straightforward.
// * vk_attend_tc_*: Mixed keys (D = 128, k = 64, M = 64, G = 32; any transform and lane rule)
//   with ternary values, on tensor cores (mma.m16n8k16, f16 in, f32 accumulate). Codes are
//   expanded straight from the packed bytes into mma fragments in registers; nothing decoded
//   goes to memory. See docs/PERFORMANCE.md for the design and its accounting.
#include "common.cuh"

#define LOG2E 1.4426950408889634f
#define NEG_INF (-__int_as_float(0x7f800000))

// ---------------------------------------------------------------------------------------------
// Split merge (shared by both kernels)
// ---------------------------------------------------------------------------------------------

// Workspace record of one (job, split, query head): m, l, acc[D].
VK_DEV float* work_rec(const AttnParams& p, int job, int split, int h) {
    return (float*)p.work + (((i64)job * p.splits + split) * MAX_QH + h) * (p.c.d + 2);
}

// Called by every thread of a CTA after it wrote its partials. The last CTA of the job merges.
VK_DEV void finish_job(const AttnParams& p, const AttnJob& job, int jid) {
    __shared__ u32 last;
    fence();
    sync_block();
    if (threadIdx.x == 0) {
        u32* ctr = (u32*)p.counters + jid;
        u32 prev = atomic_inc_u32(ctr);
        last = prev == (u32)(p.splits - 1);
        if (last) store_u32_volatile(ctr, 0);
    }
    sync_block();
    if (!last) return;
    fence();
    const int d = p.c.d, qh = job.query_heads;
    float* out = (float*)job.out;
    for (int e = threadIdx.x; e < qh * d; e += blockDim.x) {
        int h = e / d, c = e % d;
        float mx = NEG_INF;
        for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, ld_cg_f32(work_rec(p, jid, s, h)));
        float l = 0.0f, acc = 0.0f;
        if (mx != NEG_INF) {
            for (int s = 0; s < p.splits; ++s) {
                const float* r = work_rec(p, jid, s, h);
                float ms = ld_cg_f32(r);
                if (ms == NEG_INF) continue;
                float w = exp2f(ms - mx);
                l += ld_cg_f32(r + 1) * w;
                acc += ld_cg_f32(r + 2 + c) * w;
            }
        }
        out[e] = l > 0.0f ? acc / l : 0.0f;
    }
}

// With many splits one CTA cannot pull every partial quickly: a second launch merges them, one
// CTA per (job, query head), one thread per channel, the split weights computed once in shared
// memory. Grid (jobs, 8), 128 threads.
#define MERGE_MAX_SPLITS 1024
extern "C" __global__ void __launch_bounds__(128) vk_attend_merge(AttnParams p) {
    __shared__ float w[MERGE_MAX_SPLITS];
    __shared__ float red[128];
    const int jid = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const AttnJob job = ((const AttnJob*)p.jobs)[jid];
    if (h >= job.query_heads) return;
    const int d = p.c.d, splits = p.splits < MERGE_MAX_SPLITS ? p.splits : MERGE_MAX_SPLITS;
    float mx = NEG_INF;
    for (int s = tid; s < splits; s += 128) mx = fmaxf(mx, ld_cg_f32(work_rec(p, jid, s, h)));
    red[tid] = mx;
    sync_block();
    for (int o = 64; o > 0; o >>= 1) {
        if (tid < o) red[tid] = fmaxf(red[tid], red[tid + o]);
        sync_block();
    }
    mx = red[0];
    sync_block();
    float l = 0.0f;
    for (int s = tid; s < splits; s += 128) {
        const float* r = work_rec(p, jid, s, h);
        float ms = ld_cg_f32(r);
        float ws = (mx == NEG_INF || ms == NEG_INF) ? 0.0f : exp2f(ms - mx);
        w[s] = ws;
        l += ws * ld_cg_f32(r + 1);
    }
    red[tid] = l;
    sync_block();
    for (int o = 64; o > 0; o >>= 1) {
        if (tid < o) red[tid] += red[tid + o];
        sync_block();
    }
    l = red[0];
    float* out = (float*)job.out + h * d;
    for (int c = tid; c < d; c += 128) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += w[s] * ld_cg_f32(work_rec(p, jid, s, h) + 2 + c);
        out[c] = l > 0.0f ? acc / l : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Generic SIMT kernel
// ---------------------------------------------------------------------------------------------

#define SIMT_THREADS 128
#define SIMT_WARPS 4
#define SIMT_MAXC 8  // channels per lane: D <= 256

// Dynamic shared memory of the SIMT kernel (see `simt_smem_bytes` in src/kernels.rs):
//   qs[8][D] f32 (scaled queries), lut[243] u16 (trit digits), then per warp:
//   w[8][D] f32 (lane weights), P[G][8] f32 (probabilities), och[D], nch[D] i32,
//   then the CTA's salient prefix counts [bps + 1] i32.
struct SimtSmem {
    float* qs;
    u16* lut;
    float* w;
    float* P;
    i32* och;
    i32* nch;
    i32* pre;
};

VK_DEV SimtSmem simt_carve(u8* base, int d, int g, int warp) {
    SimtSmem s;
    s.qs = (float*)base;
    s.lut = (u16*)(s.qs + MAX_QH * d);
    u8* per = (u8*)(s.lut + 256);
    int per_warp = (MAX_QH * d + g * MAX_QH) * 4 + 2 * d * 4;
    u8* mine = per + warp * per_warp;
    s.w = (float*)mine;
    s.P = s.w + MAX_QH * d;
    s.och = (i32*)(s.P + g * MAX_QH);
    s.nch = s.och + d;
    s.pre = (i32*)(per + SIMT_WARPS * per_warp);
    return s;
}

// The inverse-transform adjoint matrix entry T^-T[j][n] (lane j, normal channel n).
VK_DEV float adjoint_entry(const KCodec& c, const float* twid, int j, int n) {
    const int m = c.lanes;
    if (c.transform == TR_IDENTITY) return j == n ? 1.0f : 0.0f;
    if (c.transform == TR_HADAMARD) {
        float v = 1.0f / sqrtf((float)m);
        return (popc((u32)(j & n)) & 1) ? -v : v;
    }
    int k = lane_bin(j);
    int idx = (int)(((i64)k * n) % m);
    float basis = is_imag_lane(j) ? -twid[m + idx] : twid[idx];
    float wgt = (k == 0 || 2 * k == m) ? 1.0f : 2.0f;
    return basis * wgt / (float)m;
}

// Value of token t, channel ch of a packed value block (no salient substitution).
VK_DEV float value_at(const KCodec& c, const u8* vb, const u16* lut, int t, int ch) {
    if (c.val_kind == VAL_TERNARY) {
        u32 byte = vb[c.v_trits + t * c.trit_row + ch / 5];
        u32 digit = (lut[byte] >> (2 * (ch % 5))) & 3u;
        return ((float)(int)digit - 1.0f) * h2f(rd16(vb + c.v_scales + 2 * ch));
    }
    int bits = c.val_bits;
    int pi = ch;
    if (c.val_kind == VAL_PERTOKEN) pi = t * ((c.d + c.channel_group - 1) / c.channel_group) + ch / c.channel_group;
    int el = (t * c.d + ch) * bits;
    u32 code = (vb[c.v_codes + el / 8] >> (el % 8)) & ((1u << bits) - 1);
    return affine_decode(c.arith, rd16(vb + c.v_params + 4 * pi), rd16(vb + c.v_params + 4 * pi + 2), code);
}

// Value of the salient token of rank k.
VK_DEV float salient_value(const AttnParams& p, const AttnJob& job, const u16* lut, int k, int ch) {
    const KCodec& sc = p.salient;
    const int whole = job.sal_group_count * sc.g;
    if (k < whole) {
        const u8* grp = (const u8*)job.sal_groups + (i64)(k / sc.g) * sc.value_block_bytes;
        return value_at(sc, grp, lut, k % sc.g, ch);
    }
    int row = k - whole;
    if (row >= job.sal_pending_len) return 0.0f;
    return h2f(ld_u16((const u16*)job.sal_pending + (i64)row * sc.d + ch));
}

struct SimtState {
    float m[MAX_QH];
    float l[MAX_QH];
    float acc[MAX_QH][SIMT_MAXC];
};

// Online-softmax update of one warp for up to 4 tokens per lane with scores s[r][h] (log2
// domain, -inf for absent tokens). Writes the probabilities to P[t][h] (t = lane + 32 r).
VK_DEV void simt_softmax(SimtState& st, float s[4][MAX_QH], int ntok, int qh, float* P) {
    const int lane = lane_id();
    for (int h = 0; h < qh; ++h) {
        float bm = NEG_INF;
        for (int r = 0; r < 4; ++r)
            if (lane + 32 * r < ntok) bm = fmaxf(bm, s[r][h]);
        for (int o = 16; o > 0; o >>= 1) bm = fmaxf(bm, shfl_xor(bm, o));
        float nm = fmaxf(st.m[h], bm);
        float corr = (st.m[h] == NEG_INF) ? 0.0f : exp2f(st.m[h] - nm);
        if (nm == NEG_INF) corr = 1.0f;
        st.m[h] = nm;
        st.l[h] *= corr;
        for (int i = 0; i < SIMT_MAXC; ++i) st.acc[h][i] *= corr;
        float sum = 0.0f;
        for (int r = 0; r < 4; ++r) {
            int t = lane + 32 * r;
            if (t < ntok) {
                float pr = (s[r][h] == NEG_INF) ? 0.0f : exp2f(s[r][h] - nm);
                P[t * MAX_QH + h] = pr;
                sum += pr;
            }
        }
        for (int o = 16; o > 0; o >>= 1) sum += shfl_xor(sum, o);
        st.l[h] += sum;
    }
    sync_warp();
}

// One packed block (index b) for one warp.
VK_DEV void simt_block(const AttnParams& p, const AttnJob& job, SimtSmem s, SimtState& st, int b,
                       int sal_before) {
    const KCodec& c = p.c;
    const int d = c.d, g = c.g, qh = job.query_heads, lane = lane_id();
    const u8* kb = (const u8*)job.key_blocks + (i64)b * c.key_block_bytes;
    const u8* vb = (const u8*)job.value_blocks + (i64)b * c.value_block_bytes;
    float sc[4][MAX_QH];
    for (int r = 0; r < 4; ++r)
        for (int h = 0; h < MAX_QH; ++h) sc[r][h] = 0.0f;

    if (c.key_kind == KEY_MIXED) {
        const int k = c.outliers, m = c.lanes;
        // Outlier / normal channel lists from the block's mask (robust to damaged masks).
        int base = 0;
        for (int w = 0; w < c.mask_words; ++w) {
            u32 word = rd32(kb + c.k_mask + 4 * w);
            int ch = 32 * w + lane;
            if (ch >= d) word &= (1u << (d - 32 * w)) - 1u;
            bool o = ch < d && ((word >> lane) & 1);
            int before = base + popc(word & ((1u << lane) - 1u));
            if (ch < d) {
                if (o) {
                    if (before < k) s.och[before] = ch;
                } else if (ch - before < m && ch - before >= 0) {
                    s.nch[ch - before] = ch;
                }
            }
            base += popc(word);
        }
        sync_warp();
        // Lane weights: w[h][j] = sum_n T^-T[j][n] q[h][normal n], times the lane decode slope.
        for (int e = lane; e < qh * m; e += 32) {
            int h = e / m, j = e % m;
            float acc = 0.0f;
            for (int n = 0; n < m; ++n) acc += adjoint_entry(c, (const float*)p.twiddles, j, n) * s.qs[h * d + s.nch[n]];
            s.w[h * d + j] = acc;
        }
        sync_warp();
        for (int r = 0; r < 4; ++r) {
            int t = lane + 32 * r;
            if (t >= g) break;
            for (int i = 0; i < k; ++i) {
                int ch = s.och[i];
                u32 code = (kb[c.k_ocodes + i * (g / 4) + t / 4] >> (2 * (t % 4))) & 3u;
                float v = affine_decode(c.arith, rd16(kb + c.k_oparams + 4 * i), rd16(kb + c.k_oparams + 4 * i + 2), code);
                for (int h = 0; h < qh; ++h) sc[r][h] += s.qs[h * d + ch] * v;
            }
            for (int j = 0; j < m; ++j) {
                float sj = h2f(rd16(kb + c.k_lscales + 2 * j));
                u32 bit = (kb[c.k_lbits + j * (g / 8) + t / 8] >> (t % 8)) & 1u;
                float z;
                if (c.lane_rule == RULE_SYMMETRIC)
                    z = bit ? sj : -sj;
                else if (is_imag_lane(j))
                    z = (bit ? sj : -sj) * 0.5f;
                else
                    z = bit ? sj : 0.0f;
                for (int h = 0; h < qh; ++h) sc[r][h] += s.w[h * d + j] * z;
            }
        }
    } else {
        const int bits = c.key_bits, per_channel = g * bits / 8;
        for (int r = 0; r < 4; ++r) {
            int t = lane + 32 * r;
            if (t >= g) break;
            for (int ch = 0; ch < d; ++ch) {
                int bit = t * bits;
                u32 code = (kb[c.k_codes + ch * per_channel + bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
                float v = affine_decode(c.arith, rd16(kb + c.k_params + 4 * ch), rd16(kb + c.k_params + 4 * ch + 2), code);
                for (int h = 0; h < qh; ++h) sc[r][h] += s.qs[h * d + ch] * v;
            }
        }
    }
    simt_softmax(st, sc, g, qh, s.P);
    // Values: lane owns channels lane + 32 i.
    const u8* smask = job.sal_masks ? (const u8*)job.sal_masks + (i64)b * (g / 8) : (const u8*)0;
    int rank = sal_before;
    for (int t = 0; t < g; ++t) {
        bool sal = smask && ((smask[t >> 3] >> (t & 7)) & 1);
        for (int i = 0; i < SIMT_MAXC; ++i) {
            int ch = lane + 32 * i;
            if (ch >= d) break;
            float v = sal ? salient_value(p, job, s.lut, rank, ch) : value_at(c, vb, s.lut, t, ch);
            for (int h = 0; h < qh; ++h) st.acc[h][i] += s.P[t * MAX_QH + h] * v;
        }
        rank += sal ? 1 : 0;
    }
    sync_warp();
}

// A tile of up to 32 f16 rows (dense index first .. first+31) for one warp.
VK_DEV void simt_dense(const AttnParams& p, const AttnJob& job, SimtSmem s, SimtState& st, int first,
                       int ndense) {
    const int d = p.c.d, qh = job.query_heads, lane = lane_id();
    float sc[4][MAX_QH];
    for (int r = 0; r < 4; ++r)
        for (int h = 0; h < MAX_QH; ++h) sc[r][h] = NEG_INF;
    const int ntok = ndense - first < 32 ? ndense - first : 32;
    const u16* rowk = 0;
    if (lane < ntok) {
        int i = first + lane;
        const DenseDesc& dd = i < job.dense[0].len ? job.dense[0] : job.dense[1];
        int r = i < job.dense[0].len ? i : i - job.dense[0].len;
        int phys = (dd.start + r) % dd.cap;
        rowk = (const u16*)dd.keys + (i64)phys * d;
        for (int h = 0; h < qh; ++h) sc[0][h] = 0.0f;
        for (int ch = 0; ch < d; ++ch) {
            float kv = h2f(ld_u16(rowk + ch));
            for (int h = 0; h < qh; ++h) sc[0][h] += s.qs[h * d + ch] * kv;
        }
    }
    simt_softmax(st, sc, ntok, qh, s.P);
    for (int t = 0; t < ntok; ++t) {
        int i = first + t;
        const DenseDesc& dd = i < job.dense[0].len ? job.dense[0] : job.dense[1];
        int r = i < job.dense[0].len ? i : i - job.dense[0].len;
        int phys = (dd.start + r) % dd.cap;
        const u16* rowv = (const u16*)dd.values + (i64)phys * d;
        for (int j = 0; j < SIMT_MAXC; ++j) {
            int ch = lane + 32 * j;
            if (ch >= d) break;
            float v = h2f(ld_u16(rowv + ch));
            for (int h = 0; h < qh; ++h) st.acc[h][j] += s.P[t * MAX_QH + h] * v;
        }
    }
    sync_warp();
}

// Builds the trit digit table: lut[x] = digits of x, 2 bits each, least significant first, for
// every byte (bytes above 242 are invalid trit bytes; their entries only keep reads in bounds).
VK_DEV void build_trit_lut(u16* lut) {
    for (int x = threadIdx.x; x < 256; x += blockDim.x) {
        u32 v = 0, r = (u32)x;
        for (int i = 0; i < 5; ++i) {
            v |= (r % 3) << (2 * i);
            r /= 3;
        }
        lut[x] = (u16)v;
    }
}

// Merges the warps' states of a CTA (via shared memory `scratch`, MAX_QH*(D+2) floats per
// warp) and writes the CTA partial to the workspace.
template <int WARPS>
VK_DEV void write_partial(const AttnParams& p, int jid, int split, float* scratch) {
    const int d = p.c.d;
    for (int e = threadIdx.x; e < MAX_QH * d; e += blockDim.x) {
        int h = e / d, c = e % d;
        float mx = NEG_INF;
        for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, scratch[(w * MAX_QH + h) * (d + 2)]);
        float l = 0.0f, acc = 0.0f;
        if (mx != NEG_INF)
            for (int w = 0; w < WARPS; ++w) {
                const float* r = scratch + (w * MAX_QH + h) * (d + 2);
                if (r[0] == NEG_INF) continue;
                float wt = exp2f(r[0] - mx);
                l += r[1] * wt;
                acc += r[2 + c] * wt;
            }
        float* rec = work_rec(p, jid, split, h);
        if (c == 0) {
            rec[0] = mx;
            rec[1] = l;
        }
        rec[2 + c] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(SIMT_THREADS) vk_attend_simt(AttnParams p) {
    const int split = blockIdx.x, jid = blockIdx.y;
    const AttnJob job = ((const AttnJob*)p.jobs)[jid];
    const KCodec& c = p.c;
    const int d = c.d, qh = job.query_heads, warp = warp_id(), lane = lane_id();
    SimtSmem s = simt_carve(vk_smem, d, c.g, warp);
    const int b0 = split * p.blocks_per_split;
    int b1 = b0 + p.blocks_per_split;
    b1 = b1 < job.blocks ? b1 : job.blocks;
    // f16 rows: 32-row tile k goes to split k % splits (and warp (k / splits) % warps).
    const int ndense = job.dense[0].len + job.dense[1].len;

    // Queries (scaled to the log2 domain) and the trit table.
    const float* q = (const float*)job.queries;
    for (int e = threadIdx.x; e < MAX_QH * d; e += SIMT_THREADS) {
        int h = e / d;
        s.qs[e] = h < qh ? q[e] * job.scale * LOG2E : 0.0f;
    }
    build_trit_lut(s.lut);
    // Salient prefix counts: pre[i] = salient tokens in blocks [0, b0 + i).
    const int gb = c.g / 8;
    if (job.sal_masks && b0 < b1) {
        __shared__ int total;
        if (threadIdx.x == 0) total = 0;
        sync_block();
        int part = 0;
        const u8* masks = (const u8*)job.sal_masks;
        for (int e = threadIdx.x; e < b0 * gb; e += SIMT_THREADS) part += popc(masks[e]);
        atomic_add_i32(&total, part);
        sync_block();
        if (threadIdx.x == 0) {
            int run = total;
            for (int b = b0; b < b1; ++b) {
                s.pre[b - b0] = run;
                for (int e = 0; e < gb; ++e) run += popc(masks[(i64)b * gb + e]);
            }
        }
    }
    sync_block();

    SimtState st;
    for (int h = 0; h < MAX_QH; ++h) {
        st.m[h] = NEG_INF;
        st.l[h] = 0.0f;
        for (int i = 0; i < SIMT_MAXC; ++i) st.acc[h][i] = 0.0f;
    }
    for (int b = b0 + warp; b < b1; b += SIMT_WARPS)
        simt_block(p, job, s, st, b, job.sal_masks ? s.pre[b - b0] : 0);
    for (int k = split + p.splits * warp; 32 * k < ndense; k += p.splits * SIMT_WARPS)
        simt_dense(p, job, s, st, 32 * k, ndense);

    // Merge the warps, write the partial, merge the splits.
    sync_block();
    float* scratch = (float*)vk_smem;  // MAX_QH*(D+2) floats per warp; reuses qs and beyond
    for (int h = 0; h < MAX_QH; ++h) {
        float* r = scratch + (warp * MAX_QH + h) * (d + 2);
        if (lane == 0) {
            r[0] = h < qh ? st.m[h] : NEG_INF;
            r[1] = h < qh ? st.l[h] : 0.0f;
        }
        for (int i = 0; i < SIMT_MAXC; ++i) {
            int ch = lane + 32 * i;
            if (ch < d) r[2 + ch] = st.acc[h][i];
        }
    }
    sync_block();
    write_partial<SIMT_WARPS>(p, jid, split, scratch);
    if (p.fused_merge) finish_job(p, job, jid);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel: Mixed keys (D = 128, k = 64, M = 64, G = 32) + ternary values
// ---------------------------------------------------------------------------------------------
//
// Per warp and block, with g = lane / 4 and t4 = lane % 4 (mma fragment coordinates):
// * Scores S[token][query] = A[token][v] * B[v][query] over 128 "virtual channels" v: the 64
//   outliers (by rank) then the 64 lanes. A = 4 + code (outliers, f16 pattern 0x4400|code<<8)
//   or +-h (lanes: the lane scale with a sign bit taken from the packed bit); B = u = q*step
//   (outliers) or w = T^-T q_normal (lanes). The constant sum_c q_c lo_c - 4 sum_c u_c comes
//   from two more mma per outlier k-tile (A rows = lo against q; A = -4 against u).
// * The normal/outlier gather of q is one ldmatrix.x4.trans per 32 ranks whose row addresses
//   come from the block's mask; w = T^-T q_normal is 16 mma against the constant matrix T^-T
//   held in registers (Fft/Hadamard), transposed into B fragments with movmatrix.
// * Online softmax on the score fragments (lazy rescale: only when a score exceeds the running
//   max by more than 8 in log2 units); P goes to B fragments through movmatrix.
// * Values O[channel][query] += s_c * (sum_t (4 + d_t) p_t - 5 sum_t p_t) with d the base-3 digit
//   (trit + 1): A = f16(4 + d) expanded from the packed trit bytes by the fixed-point digit
//   recurrence (y = x*256/243, digit = (3y) >> 8); sum_t p_t from an mma with A = 1.
// Row (channel) mapping of thread g: slot s < 15 -> channel 15 g + s (bytes 3g..3g+2 of a trit
// row), slot 15 -> channel 120 + g; slot s is row g (+8 if s odd) of m-tile s / 2.

#define TC_WARPS 4
#define TC_THREADS (TC_WARPS * 32)
#define TC_STAGES 4
#define TC_KB 1168              // key block bytes (D 128, G 32, k 64)
#define TC_VB 1088              // value block bytes (D 128, G 32)
#define TC_STAGE (TC_KB + TC_VB)  // 2256 = 141 x 16
#define TC_TAU 8.0f

// Key block section offsets (docs/FORMAT.md, D = 128, G = 32, k = 64).
#define TK_MASK 0
#define TK_OPARAMS 16
#define TK_LSCALES 272
#define TK_OCODES 400
#define TK_LBITS 912
// Value block: scales at 0, trits at 256 (rows of 26 bytes).
#define TV_TRITS 256

struct TcSmem {
    u16 q16[128 * 8];                            // [channel][query] f16, scaled
    u16 lut[256];                                // trit digits
    u8 rank[TC_WARPS][128];                      // rank tables
    u8 stage[TC_WARPS][TC_STAGES][TC_STAGE];     // cp.async stages
};

// (x & m) | c and (x & m) ^ c as one LOP3 each (written as C, nvcc splits them in two).
VK_DEV u32 lop_mask_or(u32 x, u32 m, u32 c) { return lop3_and_or(x, m, c); }
VK_DEV u32 lop_mask_xor(u32 x, u32 m, u32 c) { return lop3_and_xor(x, m, c); }

struct TcState {
    float O[8][4];
    float m[2];
    float l[2];
};

// Issues the cp.async copies of block `b` (key block, then value block) into stage `st`.
VK_DEV void tc_prefetch(const AttnJob& job, int b, u8* st) {
    const int lane = lane_id();
    const u8* kg = (const u8*)job.key_blocks + (i64)b * TC_KB + 16 * lane;
    const u8* vg = (const u8*)job.value_blocks + (i64)b * TC_VB + 16 * lane;
    u8* sk = st + 16 * lane;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        if (lane + 32 * i < TC_KB / 16) cp_async16(sk + 512 * i, kg + 512 * i);
        if (lane + 32 * i < TC_VB / 16) cp_async16(sk + TC_KB + 512 * i, vg + 512 * i);
    }
}

// Online softmax on score fragments S[mt][i] (token rows g / g+8 of m-tile mt, query columns
// 2 t4 + (i & 1)); produces the P^T B fragments pb[mt] and the per-query probability sums.
VK_DEV void tc_softmax(TcState& st, float S[2][4], u32 pb[2][2], float psum[2]) {
    bool need = false;
    for (int mt = 0; mt < 2; ++mt)
        for (int i = 0; i < 4; ++i) need |= S[mt][i] > st.m[i & 1] + TC_TAU;
    if (warp_any(need)) {
        for (int qc = 0; qc < 2; ++qc) {
            float bm = fmaxf(fmaxf(S[0][qc], S[0][qc + 2]), fmaxf(S[1][qc], S[1][qc + 2]));
            bm = fmaxf(bm, shfl_xor(bm, 4));
            bm = fmaxf(bm, shfl_xor(bm, 8));
            bm = fmaxf(bm, shfl_xor(bm, 16));
            float nm = fmaxf(st.m[qc], bm);
            float corr = (st.m[qc] == NEG_INF || nm == NEG_INF) ? (nm == NEG_INF ? 1.0f : 0.0f)
                                                                 : fast_exp2(st.m[qc] - nm);
            st.m[qc] = nm;
            st.l[qc] *= corr;
            for (int mt = 0; mt < 8; ++mt) {
                st.O[mt][qc] *= corr;
                st.O[mt][qc + 2] *= corr;
            }
        }
    }
    u32 pk[2][2];
    for (int mt = 0; mt < 2; ++mt) {
        float p0 = fast_exp2(S[mt][0] - st.m[0]), p1 = fast_exp2(S[mt][1] - st.m[1]);
        float p2 = fast_exp2(S[mt][2] - st.m[0]), p3 = fast_exp2(S[mt][3] - st.m[1]);
        pk[mt][0] = pack_h2(p0, p1);
        pk[mt][1] = pack_h2(p2, p3);
    }
    for (int mt = 0; mt < 2; ++mt) {
        pb[mt][0] = movmatrix_trans(pk[mt][0]);
        pb[mt][1] = movmatrix_trans(pk[mt][1]);
    }
    const u32 ones[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    mma_16816(acc, ones, pb[0]);
    mma_16816(acc, ones, pb[1]);
    psum[0] = acc[0];
    psum[1] = acc[1];
    st.l[0] += acc[0];
    st.l[1] += acc[1];
}

// Channel of slot s for thread row g.
VK_DEV int tc_channel(int g, int s) { return s < 15 ? 15 * g + s : 120 + g; }

// Expands one pair of tokens (t even, t+1) of a value block into A-fragment halves: a[s] holds
// the f16 pair (4 + d(t, ch), 4 + d(t+1, ch)) for slot s of this thread.
VK_DEV void tc_value_pair(const u8* vb, const u16* lut, int t, int g, u32 a[16]) {
    const u8* rows = vb + TV_TRITS + 26 * t;  // 4-aligned: 26 t = 52 (t / 2)
    const int o0 = 3 * g, o1 = 26 + 3 * g;
    const u32* w = (const u32*)rows;
    u32 r0 = fshr(w[o0 >> 2], w[(o0 >> 2) + 1], 8 * (o0 & 3)) & 0x00ffffffu;
    u32 r1 = fshr(w[o1 >> 2], w[(o1 >> 2) + 1], 8 * (o1 & 3));
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        u32 pair = prmt(r0, r1, (u32)(i | (3 << 4) | ((4 + i) << 8) | (3 << 12)));
        // y = x + ((55 x + 1003) >> 10) = a fixed-point x/243 with 8 fractional bits.
        u32 tq = pair * 55u + 0x03eb03ebu;
        u32 y = pair + ((tq >> 10) & 0x000f000fu);
#pragma unroll
        for (int kk = 0; kk < 5; ++kk) {
            u32 y3 = y * 3u;
            a[5 * i + 4 - kk] = lop_mask_or(y3, 0x03000300u, 0x44004400u);
            y = y3 & 0x00ff00ffu;
        }
    }
    // Slot 15: digit g % 5 of byte 24 + g / 5, through the digit table.
    const int bidx = g < 5 ? 0 : 1, dig = g < 5 ? g : g - 5;
    u32 x0 = (w[6] >> (8 * bidx)) & 0xffu;         // row t, byte 24 + bidx
    u32 x1 = (w[12] >> (8 * (2 + bidx))) & 0xffu;  // row t+1, byte 50 + bidx
    u32 v = (u32)lut[x0] | ((u32)lut[x1] << 16);
    a[15] = lop_mask_or(rotr(v, (u32)(2 * dig - 8) & 31u), 0x03000300u, 0x44004400u);
}

template <bool MATRIX>
VK_DEV void tc_block(const AttnParams& p, TcSmem& sm, TcState& st, const u8* kb, const u8* vb,
                     const u32 (*F)[4][4], int paper) {
    const int lane = lane_id(), warp = warp_id(), g = lane >> 2, t4 = lane & 3;
    // 1. Rank table: combined rank R (outliers 0..63, normals 64..127) -> channel.
    {
        const u32* mw = (const u32*)(kb + TK_MASK);
        u32 m0 = mw[0], m1 = mw[1], m2 = mw[2], m3 = mw[3];
        u32 lt = (1u << lane) - 1u;
        int pre = 0;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            u32 word = w == 0 ? m0 : (w == 1 ? m1 : (w == 2 ? m2 : m3));
            int ch = 32 * w + lane;
            int orank = pre + popc(word & lt);
            int R = ((word >> lane) & 1) ? orank : 64 + (ch - orank);
            R &= 127;
            sm.rank[warp][(R & 31) * 4 + (R >> 5)] = (u8)ch;
            pre += popc(word);
        }
    }
    sync_warp();
    const u32 rt = *(const u32*)&sm.rank[warp][4 * lane];
    // 2. Gather q by rank: qf[kt] = B fragments (k = ranks 16 kt + ..., n = query).
    u32 qf[8][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 r[4];
        ldmatrix_x4_trans(r, &sm.q16[((rt >> (8 * j)) & 0xffu) * 8]);
        qf[2 * j][0] = r[0];
        qf[2 * j][1] = r[1];
        qf[2 * j + 1][0] = r[2];
        qf[2 * j + 1][1] = r[3];
    }
    // 3. Outlier weights u = q * step and the constant term.
    u32 ub[4][2];
    float cst[4] = {0.f, 0.f, 0.f, 0.f}, bias[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
        const int r0 = 16 * kt + 2 * t4;
        const u32* pa = (const u32*)(kb + TK_OPARAMS + 4 * r0);
        const u32* pc = (const u32*)(kb + TK_OPARAMS + 4 * (r0 + 8));
        u32 w0 = pa[0], w1 = pa[1], w2 = pc[0], w3 = pc[1];
        u32 lo01 = prmt(w0, w1, 0x5410), st01 = prmt(w0, w1, 0x7632);
        u32 lo23 = prmt(w2, w3, 0x5410), st23 = prmt(w2, w3, 0x7632);
        ub[kt][0] = hmul2(qf[kt][0], st01);
        ub[kt][1] = hmul2(qf[kt][1], st23);
        // Every row of A is lo: C = sum_r lo_r q_r. The bias of the code pattern (4 + code) is
        // removed with the exact f16 weights the score mma uses: C2 = -4 sum_r u_r.
        const u32 ac[4] = {lo01, lo01, lo23, lo23};
        const u32 neg4[4] = {0xc400c400u, 0xc400c400u, 0xc400c400u, 0xc400c400u};
        mma_16816(cst, ac, qf[kt]);
        mma_16816(bias, neg4, ub[kt]);
    }
    // 4. Lane weights w = T^-T q_normal as B fragments.
    u32 lb[4][2];
    if (MATRIX) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
            float cw[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int kt = 0; kt < 4; ++kt) mma_16816(cw, F[mt][kt], qf[4 + kt]);
            lb[mt][0] = movmatrix_trans(pack_h2(cw[0], cw[1]));
            lb[mt][1] = movmatrix_trans(pack_h2(cw[2], cw[3]));
        }
    } else {
#pragma unroll
        for (int kt = 0; kt < 4; ++kt) {
            lb[kt][0] = qf[4 + kt][0];
            lb[kt][1] = qf[4 + kt][1];
        }
    }
    // 5. Scores, accumulated onto the constant term (the lane constant of PaperCompat is added
    // after the lane k-tiles).
    const float k0 = cst[0] + bias[0], k1 = cst[1] + bias[1];
    float S[2][4] = {{k0, k1, k0, k1}, {k0, k1, k0, k1}};
    const u32 rho = (u32)(2 * g - 8) & 31u;
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
        const int r0 = 16 * kt + 2 * t4;
        const u32* ca = (const u32*)(kb + TK_OCODES + 8 * r0);
        const u32* cc = (const u32*)(kb + TK_OCODES + 8 * (r0 + 8));
        // ca: rank r0 (tokens 0-15, 16-31), rank r0+1 (...); cc: ranks r0+8, r0+9.
        u32 a00 = rotr(ca[0], rho), a01 = rotr(ca[1], rho), b00 = rotr(ca[2], rho), b01 = rotr(ca[3], rho);
        u32 c00 = rotr(cc[0], rho), c01 = rotr(cc[1], rho), d00 = rotr(cc[2], rho), d01 = rotr(cc[3], rho);
        const u32 M = 0x03000300u, C = 0x44004400u;
        u32 A0[4] = {lop_mask_or(prmt(a00, b00, 0x5410), M, C), lop_mask_or(prmt(a00, b00, 0x7632), M, C),
                     lop_mask_or(prmt(c00, d00, 0x5410), M, C), lop_mask_or(prmt(c00, d00, 0x7632), M, C)};
        u32 A1[4] = {lop_mask_or(prmt(a01, b01, 0x5410), M, C), lop_mask_or(prmt(a01, b01, 0x7632), M, C),
                     lop_mask_or(prmt(c01, d01, 0x5410), M, C), lop_mask_or(prmt(c01, d01, 0x7632), M, C)};
        mma_16816(S[0], A0, ub[kt]);
        mma_16816(S[1], A1, ub[kt]);
    }
    float pc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
        const int j0 = 16 * kt + 2 * t4;
        const u32* lw = (const u32*)(kb + TK_LBITS + 4 * j0);
        const u32* lv = (const u32*)(kb + TK_LBITS + 4 * (j0 + 8));
        u32 h01 = *(const u32*)(kb + TK_LSCALES + 2 * j0);
        u32 h23 = *(const u32*)(kb + TK_LSCALES + 2 * (j0 + 8));
        if (paper) {
            h01 = hmul2(h01, 0x38003800u);
            h23 = hmul2(h23, 0x38003800u);
            // Real lanes (j = 0 or odd) add (s/2) w to the constant.
            u32 real01 = (j0 == 0 ? 0x0000ffffu : 0u) | 0xffff0000u;
            const u32 ar[4] = {h01 & real01, h01 & real01, h23 & 0xffff0000u, h23 & 0xffff0000u};
            mma_16816(pc, ar, lb[kt]);
        }
        const u32 n01 = h01 | 0x80008000u, n23 = h23 | 0x80008000u;
        u32 x01 = prmt(lw[0], lw[1], 0x5410), y01 = prmt(lw[0], lw[1], 0x7632);
        u32 x23 = prmt(lv[0], lv[1], 0x5410), y23 = prmt(lv[0], lv[1], 0x7632);
        const u32 SM = 0x80008000u;
        const u32 s1 = (u32)(15 - g), s2 = (u32)(7 - g);
        u32 A0[4] = {lop_mask_xor(rotl(x01, s1), SM, n01), lop_mask_xor(rotl(x01, s2), SM, n01),
                     lop_mask_xor(rotl(x23, s1), SM, n23), lop_mask_xor(rotl(x23, s2), SM, n23)};
        u32 A1[4] = {lop_mask_xor(rotl(y01, s1), SM, n01), lop_mask_xor(rotl(y01, s2), SM, n01),
                     lop_mask_xor(rotl(y23, s1), SM, n23), lop_mask_xor(rotl(y23, s2), SM, n23)};
        mma_16816(S[0], A0, lb[kt]);
        mma_16816(S[1], A1, lb[kt]);
    }
    if (paper) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            S[mt][0] += pc[0];
            S[mt][1] += pc[1];
            S[mt][2] += pc[0];
            S[mt][3] += pc[1];
        }
    }
    // 6. Softmax.
    u32 pb[2][2];
    float psum[2];
    tc_softmax(st, S, pb, psum);
    // 7. Values: C starts at -5 sum_t p_t, so that C = sum_t p_t (4 + d_t) - 5 sum_t p_t
    // = sum_t p_t trit_t.
    const float b0 = -5.0f * psum[0], b1 = -5.0f * psum[1];
    float cv[8][4];
#pragma unroll
    for (int mt = 0; mt < 8; ++mt) {
        cv[mt][0] = b0;
        cv[mt][1] = b1;
        cv[mt][2] = b0;
        cv[mt][3] = b1;
    }
#pragma unroll
    for (int kt = 0; kt < 2; ++kt) {
        u32 a0[16], a1[16];
        tc_value_pair(vb, sm.lut, 16 * kt + 2 * t4, g, a0);
        tc_value_pair(vb, sm.lut, 16 * kt + 2 * t4 + 8, g, a1);
#pragma unroll
        for (int mt = 0; mt < 8; ++mt) {
            const u32 A[4] = {a0[2 * mt], a0[2 * mt + 1], a1[2 * mt], a1[2 * mt + 1]};
            mma_16816(cv[mt], A, pb[kt]);
        }
    }
#pragma unroll
    for (int mt = 0; mt < 8; ++mt) {
        float s0 = h2f(*(const u16*)(vb + 2 * tc_channel(g, 2 * mt)));
        float s1 = h2f(*(const u16*)(vb + 2 * tc_channel(g, 2 * mt + 1)));
        st.O[mt][0] += s0 * cv[mt][0];
        st.O[mt][1] += s0 * cv[mt][1];
        st.O[mt][2] += s1 * cv[mt][2];
        st.O[mt][3] += s1 * cv[mt][3];
    }
}

// Row pointer of dense row i (sinks then residual ring), or null.
VK_DEV const u16* dense_row(const AttnJob& job, int i, bool values) {
    const DenseDesc& dd = i < job.dense[0].len ? job.dense[0] : job.dense[1];
    int r = i < job.dense[0].len ? i : i - job.dense[0].len;
    if (r >= dd.len) return (const u16*)0;
    int phys = (dd.start + r) % dd.cap;
    return (const u16*)(values ? dd.values : dd.keys) + (i64)phys * 128;
}

// A tile of up to 32 f16 rows (dense index first ..) on tensor cores.
VK_DEV void tc_dense(TcSmem& sm, TcState& st, const AttnJob& job, int first, int ndense) {
    const int lane = lane_id(), g = lane >> 2, t4 = lane & 3;
    // B fragments of q in natural channel order.
    u32 qn[8][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 r[4];
        ldmatrix_x4_trans(r, &sm.q16[(32 * j + lane) * 8]);
        qn[2 * j][0] = r[0];
        qn[2 * j][1] = r[1];
        qn[2 * j + 1][0] = r[2];
        qn[2 * j + 1][1] = r[3];
    }
    const u16* krow[4];
    bool valid[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // rows g, g+8, 16+g, 24+g
        int ti = first + g + 8 * i;
        valid[i] = ti < ndense;
        krow[i] = valid[i] ? dense_row(job, ti, false) : (const u16*)0;
        valid[i] = valid[i] && krow[i];
    }
    float S[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kt = 0; kt < 8; ++kt) {
        const int c0 = 16 * kt + 2 * t4;
        u32 A[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            const u16* ra = krow[2 * mt];
            const u16* rb = krow[2 * mt + 1];
            A[mt][0] = valid[2 * mt] ? ld_u32(ra + c0) : 0u;
            A[mt][1] = valid[2 * mt + 1] ? ld_u32(rb + c0) : 0u;
            A[mt][2] = valid[2 * mt] ? ld_u32(ra + c0 + 8) : 0u;
            A[mt][3] = valid[2 * mt + 1] ? ld_u32(rb + c0 + 8) : 0u;
        }
        mma_16816(S[0], A[0], qn[kt]);
        mma_16816(S[1], A[1], qn[kt]);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        if (!valid[2 * mt]) S[mt][0] = S[mt][1] = NEG_INF;
        if (!valid[2 * mt + 1]) S[mt][2] = S[mt][3] = NEG_INF;
    }
    u32 pb[2][2];
    float psum[2];
    tc_softmax(st, S, pb, psum);
    // Values: A = V^T (rows = this thread's slots' channels, k = token pairs).
#pragma unroll
    for (int kt = 0; kt < 2; ++kt) {
        const u16* vr[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // tokens 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9 of the tile half
            int ti = first + 16 * kt + 2 * t4 + (i & 1) + 8 * (i >> 1);
            vr[i] = ti < ndense ? dense_row(job, ti, true) : (const u16*)0;
        }
#pragma unroll
        for (int mt = 0; mt < 8; ++mt) {
            u32 A[4];
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                int ch = tc_channel(g, 2 * mt + hh);
                u32 v0 = vr[0] ? ld_u16(vr[0] + ch) : 0u, v1 = vr[1] ? ld_u16(vr[1] + ch) : 0u;
                u32 v2 = vr[2] ? ld_u16(vr[2] + ch) : 0u, v3 = vr[3] ? ld_u16(vr[3] + ch) : 0u;
                A[hh] = v0 | (v1 << 16);
                A[2 + hh] = v2 | (v3 << 16);
            }
            mma_16816(st.O[mt], A, pb[kt]);
        }
    }
}

template <bool MATRIX>
VK_DEV void tc_kernel(const AttnParams& p) {
    TcSmem& sm = *(TcSmem*)vk_smem;
    const int split = blockIdx.x, jid = blockIdx.y;
    const AttnJob job = ((const AttnJob*)p.jobs)[jid];
    const int qh = job.query_heads, warp = warp_id(), lane = lane_id(), g = lane >> 2, t4 = lane & 3;
    const int b0 = split * p.blocks_per_split;
    int b1 = b0 + p.blocks_per_split;
    b1 = b1 < job.blocks ? b1 : job.blocks;
    // f16 rows: 32-row tile k goes to split k % splits (and warp (k / splits) % warps).
    const int ndense = job.dense[0].len + job.dense[1].len;

    // Queries: q16[channel][query] = f16(q * scale * log2 e), zero for absent query heads.
    const float* q = (const float*)job.queries;
    const float qs = job.scale * LOG2E;
    for (int e = threadIdx.x; e < 128 * 8; e += TC_THREADS) {
        int ch = e >> 3, h = e & 7;
        sm.q16[e] = h < qh ? f2h(q[h * 128 + ch] * qs) : (u16)0;
    }
    build_trit_lut(sm.lut);
    // The adjoint matrix as A fragments (rows = lanes, k = normal channels).
    u32 F[4][4][4];
    if (MATRIX) {
        const u16* fm = (const u16*)p.fmat;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int kt = 0; kt < 4; ++kt) {
                const int r = 16 * mt + g, cc = 16 * kt + 2 * t4;
                F[mt][kt][0] = ld_u32(fm + r * 64 + cc);
                F[mt][kt][1] = ld_u32(fm + (r + 8) * 64 + cc);
                F[mt][kt][2] = ld_u32(fm + r * 64 + cc + 8);
                F[mt][kt][3] = ld_u32(fm + (r + 8) * 64 + cc + 8);
            }
    }
    sync_block();

    TcState st;
    for (int mt = 0; mt < 8; ++mt) st.O[mt][0] = st.O[mt][1] = st.O[mt][2] = st.O[mt][3] = 0.f;
    st.m[0] = st.m[1] = NEG_INF;
    st.l[0] = st.l[1] = 0.f;
    const int paper = p.c.lane_rule == RULE_PAPER;

    // Packed blocks: warp w takes blocks b0 + w, b0 + w + TC_WARPS, ... through a
    // TC_STAGES-deep cp.async pipeline.
    const int nmine = b0 + warp < b1 ? (b1 - b0 - warp + TC_WARPS - 1) / TC_WARPS : 0;
#pragma unroll
    for (int i = 0; i < TC_STAGES - 1; ++i) {
        if (i < nmine) tc_prefetch(job, b0 + warp + i * TC_WARPS, sm.stage[warp][i]);
        cp_async_commit();
    }
    for (int i = 0; i < nmine; ++i) {
        const int ahead = i + TC_STAGES - 1;
        if (ahead < nmine) tc_prefetch(job, b0 + warp + ahead * TC_WARPS, sm.stage[warp][ahead % TC_STAGES]);
        cp_async_commit();
        cp_async_wait<TC_STAGES - 1>();
        sync_warp();
        const u8* kb = sm.stage[warp][i % TC_STAGES];
        tc_block<MATRIX>(p, sm, st, kb, kb + TC_KB, F, paper);
        sync_warp();
    }
    cp_async_wait<0>();
    for (int k = split + p.splits * warp; 32 * k < ndense; k += p.splits * TC_WARPS)
        tc_dense(sm, st, job, 32 * k, ndense);

    // Merge the warps (scratch reuses the stage buffers), write the partial, merge the splits.
    sync_block();
    float* scratch = (float*)sm.stage;  // TC_WARPS * MAX_QH * 130 floats = 16.6 KB < stages
    for (int mt = 0; mt < 8; ++mt)
        for (int hh = 0; hh < 2; ++hh) {
            int ch = tc_channel(g, 2 * mt + hh);
            for (int qc = 0; qc < 2; ++qc) {
                int h = 2 * t4 + qc;
                scratch[(warp * MAX_QH + h) * 130 + 2 + ch] = st.O[mt][2 * hh + qc];
            }
        }
    if (g == 0)
        for (int qc = 0; qc < 2; ++qc) {
            int h = 2 * t4 + qc;
            float* r = scratch + (warp * MAX_QH + h) * 130;
            r[0] = h < qh ? st.m[qc] : NEG_INF;
            r[1] = h < qh ? st.l[qc] : 0.0f;
        }
    sync_block();
    write_partial<TC_WARPS>(p, jid, split, scratch);
    if (p.fused_merge) finish_job(p, job, jid);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) vk_attend_tc_matrix(AttnParams p) {
    tc_kernel<true>(p);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) vk_attend_tc_identity(AttnParams p) {
    tc_kernel<false>(p);
}
