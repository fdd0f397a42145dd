// vidkv CUDA kernels: shared definitions.
//
// Every kernel of this directory is plain CUDA C with no CUDA header dependency, so that the same
// source compiles (1) with nvcc to PTX (scripts/build-ptx.sh) and (2) with a host C++ compiler
// against tools/kernel-emu/emu.hpp, a warp emulator that runs the kernels on the CPU for tests.
// Device-only operations (PTX inline assembly, warp collectives) are wrapped in the helpers below;
// the emulator provides host versions of exactly these helpers.
//
// The parameter structs mirror `crates/vidkv-cuda/src/params.rs` (`#[repr(C)]`); their sizes are
// pinned on both sides.
#pragma once

#ifdef VIDKV_EMU
#include "emu.hpp"
#else
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;
#define VK_DEV __device__ __forceinline__
#define VK_HD __host__ __device__ __forceinline__
#endif

// ---------------------------------------------------------------------------------------------
// Parameter structs (mirrored in Rust).
// ---------------------------------------------------------------------------------------------

// A validated codec: configuration plus byte offsets of every section of a key and a value block
// (docs/FORMAT.md). Filled from `vidkv_core::Codec` on the host.
struct KCodec {
    i32 d;                  // head_dim
    i32 g;                  // tokens per block
    i32 arith;              // 0 = F32, 1 = Reference
    i32 key_kind;           // 0 = Mixed, 1 = PerChannel
    i32 key_bits;           // PerChannel code width (2 or 4)
    i32 outliers;           // Mixed: k
    i32 lanes;              // Mixed: M = d - k
    i32 transform;          // 0 = Fft, 1 = Hadamard, 2 = Identity
    i32 lane_rule;          // 0 = Symmetric, 1 = PaperCompat
    i32 key_block_bytes;
    i32 k_mask;             // Mixed section offsets
    i32 k_oparams;
    i32 k_lscales;
    i32 k_ocodes;
    i32 k_lbits;
    i32 k_params;           // PerChannel section offsets
    i32 k_codes;
    i32 val_kind;           // 0 = Ternary, 1 = PerToken, 2 = PerChannel
    i32 val_bits;
    i32 ternary_scale;      // 0 = MeanAbs, 1 = LeastSquares, 2 = Unit
    i32 channel_group;      // PerToken: channels per group
    i32 value_block_bytes;
    i32 v_scales;           // Ternary
    i32 v_trits;
    i32 v_params;           // PerToken / PerChannel
    i32 v_codes;
    i32 trit_row;           // bytes per ternary row, ceil(d / 5)
    i32 mask_words;         // ceil(d / 32)
};

enum { ARITH_F32 = 0, ARITH_REF = 1 };
enum { KEY_MIXED = 0, KEY_PERCHANNEL = 1 };
enum { TR_FFT = 0, TR_HADAMARD = 1, TR_IDENTITY = 2 };
enum { RULE_SYMMETRIC = 0, RULE_PAPER = 1 };
enum { VAL_TERNARY = 0, VAL_PERTOKEN = 1, VAL_PERCHANNEL = 2 };
enum { TS_MEANABS = 0, TS_LEASTSQ = 1, TS_UNIT = 2 };
enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

// Error reporting of encoders and decoders: one u64 per kind, atomically minimised, holding
// `(position << 8) | code`; u64 max = no error. The host maps codes to `vidkv_core::Error`.
enum {
    ERR_SLOT_NONFINITE = 0,  // encoders: element index of the first NaN/inf
    ERR_SLOT_RANGE = 1,      // encoders: element index of the first |x| > 65504
    ERR_SLOT_CORRUPT = 2,    // decoders: byte offset of the first corrupt field
    ERR_SLOTS = 3,
};
enum {
    CORRUPT_MASK = 1,
    CORRUPT_PARAMS = 2,
    CORRUPT_LANE_SCALE = 3,
    CORRUPT_TERNARY_SCALE = 4,
    CORRUPT_TRIT = 5,
};

// Encoder launch: `blocks` blocks of G tokens x D elements, block i reading input rows
// i*G .. i*G+G-1 and writing out + i * block_bytes.
struct EncodeParams {
    KCodec c;
    u64 input;        // raw little-endian elements
    u64 out;          // encoded blocks
    u64 fixed_mask;   // ChannelMask (8 x u32) for layer-scope keys, or 0
    u64 excluded;     // values: G/8 bytes per block (bit t: token t excluded), or 0
    u64 twiddles;     // Fft: f32 cos[M] then sin[M]
    u64 errors;       // u64[ERR_SLOTS]
    i32 dtype;        // DT_*
    i32 blocks;
};

// Decoder launch: `blocks` blocks into f32 rows [blocks*G][D].
struct DecodeParams {
    KCodec c;
    u64 encoded;
    u64 out;
    u64 twiddles;     // Fft: f32 cos[M] then sin[M]
    u64 errors;       // u64[ERR_SLOTS]
    i32 blocks;
    i32 pad;
};

// f16 rows kept unquantized: `len` live rows starting at `start`, modulo `cap` (a ring).
struct DenseDesc {
    u64 keys;         // f16 [cap][D]
    u64 values;       // f16 [cap][D]
    i32 start;
    i32 len;
    i32 cap;
    i32 pad;
};

// One attention job: one KV head of one sequence with the query heads of its GQA group.
struct AttnJob {
    u64 queries;          // f32 [query_heads][D]
    u64 out;              // f32 [query_heads][D]
    u64 key_blocks;       // blocks * key_block_bytes
    u64 value_blocks;     // blocks * value_block_bytes
    u64 sal_masks;        // G/8 bytes per block, or 0 (no salient tokens)
    u64 sal_groups;       // salient value groups (PerChannel 2-bit value blocks)
    u64 sal_pending;      // f16 [G][D] pending salient values
    DenseDesc dense[2];   // sinks, residual window
    i32 blocks;
    i32 query_heads;
    float scale;          // applied to q.k before the softmax
    i32 sal_group_count;
    i32 sal_pending_len;
    i32 pad;
};

// Attention launch over `jobs` jobs, grid = (splits, jobs). Partial results go to `work`
// ([jobs][splits][8 query heads] x (m, l, acc[D]) floats). With `fused_merge` the last CTA of a
// job (counted in `counters`, which must be zero before the launch and are zero again after it)
// merges them; otherwise a second launch (vk_attend_merge) does.
struct AttnParams {
    KCodec c;
    KCodec salient;       // value codec of the salient groups (PerChannel 2-bit)
    u64 jobs;             // AttnJob[jobs]
    u64 work;             // float workspace
    u64 counters;         // u32[jobs]
    u64 fmat;             // tensor-core path: f16 [M][M] adjoint matrix T^-T (row = lane)
    u64 twiddles;         // SIMT path (Fft): f32 cos[M] then sin[M]
    i32 njobs;
    i32 splits;
    i32 blocks_per_split; // quantized blocks per split (32-row tiles of f16 rows: round robin)
    i32 fused_merge;      // 1: the last CTA of a job merges; 0: vk_attend_merge does
};

#define MAX_QH 8

// ---------------------------------------------------------------------------------------------
// Device helpers (host versions live in tools/kernel-emu/emu.hpp).
// ---------------------------------------------------------------------------------------------
#ifndef VIDKV_EMU

VK_DEV u32 lane_id() { return threadIdx.x & 31; }
VK_DEV u32 warp_id() { return threadIdx.x >> 5; }

VK_DEV float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}
// Round to nearest even; overflow gives inf. The bits come back through a 32-bit integer
// register: ptxas treats a .b16 register written by cvt.f16 as an f16 *value*, and a later byte
// store of it (st.u8) became a float-to-integer conversion (F2I.U8.F16) instead of the low byte.
VK_DEV u16 f2h(float f) {
    u32 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; cvt.u32.u16 %0, t; }" : "=r"(h) : "f"(f));
    return (u16)h;
}
VK_DEV float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
// Two floats to one f16x2 register: `lo` in bits 0..15, `hi` in bits 16..31.
VK_DEV u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
VK_DEV u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
VK_DEV u32 prmt(u32 a, u32 b, u32 sel) { return __byte_perm(a, b, sel); }
VK_DEV u32 lop3_and_or(u32 a, u32 b, u32 c) {  // (a & b) | c
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
VK_DEV u32 lop3_and_xor(u32 a, u32 b, u32 c) {  // (a & b) ^ c
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
VK_DEV u32 rotr(u32 x, u32 n) { return __funnelshift_r(x, x, n); }
VK_DEV u32 rotl(u32 x, u32 n) { return __funnelshift_l(x, x, n); }
VK_DEV u32 fshr(u32 lo, u32 hi, u32 n) { return __funnelshift_r(lo, hi, n); }
VK_DEV int popc(u32 x) { return __popc(x); }
VK_DEV float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
VK_DEV float fmul_rn(float a, float b) { return __fmul_rn(a, b); }
VK_DEV float fadd_rn(float a, float b) { return __fadd_rn(a, b); }
VK_DEV float fsub_rn(float a, float b) { return __fsub_rn(a, b); }
VK_DEV float fdiv_rn(float a, float b) { return __fdiv_rn(a, b); }
VK_DEV double dmul_rn(double a, double b) { return __dmul_rn(a, b); }
VK_DEV double dadd_rn(double a, double b) { return __dadd_rn(a, b); }
VK_DEV double ddiv_rn(double a, double b) { return __ddiv_rn(a, b); }
VK_DEV float fsqrt_rn(float a) { return __fsqrt_rn(a); }
VK_DEV float rint_f(float x) { return rintf(x); }

VK_DEV float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
VK_DEV u32 shfl_xor_u(u32 v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
VK_DEV float shfl_idx(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
VK_DEV u32 shfl_idx_u(u32 v, int src) { return __shfl_sync(0xffffffffu, v, src); }
VK_DEV bool warp_any(bool p) { return __any_sync(0xffffffffu, p); }
VK_DEV u32 warp_ballot(bool p) { return __ballot_sync(0xffffffffu, p); }
VK_DEV void sync_warp() { __syncwarp(); }
VK_DEV void sync_block() { __syncthreads(); }
VK_DEV void fence() { __threadfence(); }
VK_DEV u32 atomic_inc_u32(u32* p) { return atomicAdd(p, 1u); }
VK_DEV void atomic_add_i32(int* p, int v) { atomicAdd(p, v); }
VK_DEV float ld_cg_f32(const float* p) { return __ldcg(p); }
VK_DEV void atomic_min_u64(u64* p, u64 v) { atomicMin(p, v); }
VK_DEV void store_u32_volatile(u32* p, u32 v) { *(volatile u32*)p = v; }

// Shared-memory address of a generic pointer, for cp.async / ldmatrix.
VK_DEV u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16-byte asynchronous global -> shared copy (L2 only, bypassing L1).
VK_DEV void cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(smem)), "l"(gmem));
}
// The same with a source size (bytes past `src_bytes` are zero-filled).
VK_DEV void cp_async16_zfill(void* smem, const void* gmem, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes));
}
VK_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
VK_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// ldmatrix .x4 .trans: lane i gives the address of row (i % 8) of matrix (i / 8); register j
// receives, for matrix j, the elements (row 2*(lane%4) + {0,1}, column lane/4).
VK_DEV void ldmatrix_x4_trans(u32 r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
// movmatrix .trans: transposes the 8x8 f16 matrix held one pair per lane (row lane/4, columns
// 2*(lane%4) + {0,1}).
VK_DEV u32 movmatrix_trans(u32 x) {
    u32 y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}
// D = A(16x16, f16, row) * B(16x8, f16, col) + C, f32 accumulate.
VK_DEV void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Loads that bypass L1 for streamed data.
VK_DEV u32 ld_u32(const void* p) { return *(const u32*)p; }
VK_DEV u16 ld_u16(const void* p) { return *(const u16*)p; }
VK_DEV u8 ld_u8(const void* p) { return *(const u8*)p; }

// Dynamic shared memory of every kernel.
extern __shared__ __align__(16) u8 vk_smem[];

#endif  // !VIDKV_EMU

// ---------------------------------------------------------------------------------------------
// Shared arithmetic (identical on host and device).
// ---------------------------------------------------------------------------------------------

#define F16_MAX_F 65504.0f

VK_DEV float r16(float x) { return h2f(f2h(x)); }
VK_DEV float arith_step(int arith, float x) { return arith == ARITH_REF ? r16(x) : x; }
VK_DEV bool is_imag_lane(int j) { return j > 0 && (j & 1) == 0; }
VK_DEV int lane_bin(int j) { return j == 0 ? 0 : (j + 1) >> 1; }

// Reads element `i` of a raw input buffer as f32.
VK_DEV float load_elem(const u8* base, int dtype, i64 i) {
    if (dtype == DT_F32) return *(const float*)(base + 4 * i);
    u16 b = *(const u16*)(base + 2 * i);
    return dtype == DT_F16 ? h2f(b) : bf2f(b);
}

VK_DEV u16 rd16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
VK_DEV u32 rd32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
VK_DEV void wr16(u8* p, u16 v) {
    p[0] = (u8)v;
    p[1] = (u8)(v >> 8);
}

// f16 bit-pattern checks.
VK_DEV bool h_finite(u16 h) { return (h & 0x7c00) != 0x7c00; }
VK_DEV bool h_negative(u16 h) { return (h & 0x8000) != 0; }

// Affine decode (vidkv-cpu affine::decode).
VK_DEV float affine_decode(int arith, u16 lo, u16 step, u32 code) {
    float scaled = arith_step(arith, fmul_rn((float)code, h2f(step)));
    scaled = scaled < F16_MAX_F ? scaled : F16_MAX_F;
    float sum = fadd_rn(scaled, h2f(lo));
    return arith_step(arith, sum < F16_MAX_F ? sum : F16_MAX_F);
}

// Records an error at `position` with `code` in slot `slot` (smallest position wins).
VK_DEV void report(u64* errors, int slot, u64 position, u32 code) {
    if (errors) atomic_min_u64(errors + slot, (position << 8) | code);
}

#ifdef __cplusplus
static_assert(sizeof(KCodec) == 112, "KCodec layout (src/params.rs)");
static_assert(sizeof(EncodeParams) == 168, "EncodeParams layout (src/params.rs)");
static_assert(sizeof(DecodeParams) == 152, "DecodeParams layout (src/params.rs)");
static_assert(sizeof(DenseDesc) == 32, "DenseDesc layout (src/params.rs)");
static_assert(sizeof(AttnJob) == 144, "AttnJob layout (src/params.rs)");
static_assert(sizeof(AttnParams) == 280, "AttnParams layout (src/params.rs)");
#endif
