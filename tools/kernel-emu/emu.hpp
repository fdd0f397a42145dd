// A functional warp emulator for the vidkv CUDA kernels (crates/vidkv-cuda/kernels/*.cu).
//
// The kernels are compiled as host C++ with -DVIDKV_EMU; every CUDA thread of a CTA becomes an OS
// thread, warp collectives (shuffles, votes, ldmatrix, movmatrix, mma) exchange their operands
// through per-warp slots between two barriers, and __syncthreads is a CTA barrier. CTAs run one
// after another. It checks indexing, fragment layouts and bit tricks; it says nothing about
// performance, races the hardware would expose, or the exact rounding of tensor-core sums.
#pragma once

#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <atomic>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define VK_DEV static inline
#define VK_HD static inline
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __restrict__

struct EmuDim {
    unsigned x = 1, y = 1, z = 1;
};
extern thread_local EmuDim threadIdx, blockIdx;
extern EmuDim blockDim, gridDim;

struct EmuWarp {
    std::barrier<>* bar;
    u32 u[32][8];
    float f[32][8];
    const void* p[32];
};
extern EmuWarp* emu_warps;  // one per warp of the running CTA
extern std::barrier<>* emu_cta_barrier;
alignas(16) extern u8 vk_smem[];

static inline u32 lane_id() { return threadIdx.x & 31; }
static inline u32 warp_id() { return threadIdx.x >> 5; }
static inline EmuWarp& emu_w() { return emu_warps[warp_id()]; }
static inline void emu_wsync() { emu_w().bar->arrive_and_wait(); }

// --- scalar helpers -------------------------------------------------------------------------
static inline u32 __float_as_uint(float f) {
    u32 u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline float __uint_as_float(u32 u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline float __int_as_float(int i) { return __uint_as_float((u32)i); }
static inline u32 __brev(u32 x) {
    u32 r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline int __ffs(int x) { return x == 0 ? 0 : __builtin_ctz((u32)x) + 1; }
static inline int __popc(u32 x) { return __builtin_popcount(x); }

static inline float h2f(u16 h) {
    u32 s = (u32)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
    if (e == 0) {
        float v = std::ldexp((float)m, -24);
        return s ? -v : v;
    }
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
    return __uint_as_float(s | ((e + 112) << 23) | (m << 13));
}
static inline u16 f2h(float f) {  // round to nearest even
    u32 x = __float_as_uint(f);
    u32 sign = (x >> 16) & 0x8000u;
    u32 ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (u16)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (u16)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                               // below the smallest normal f16
        float v = __uint_as_float(ax);
        float q = v * 16777216.0f;                         // in units of 2^-24 (exact)
        float r = std::nearbyint(q);                       // ties to even (default mode)
        return (u16)(sign | (u32)r);
    }
    u32 e = (ax >> 23) - 112, m = ax & 0x7fffffu;
    u32 h = (e << 10) | (m >> 13);
    u32 rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return (u16)(sign | h);
}
static inline float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
static inline u32 pack_h2(float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); }
static inline u32 hmul2(u32 a, u32 b) {
    float lo = h2f((u16)a) * h2f((u16)b), hi = h2f((u16)(a >> 16)) * h2f((u16)(b >> 16));
    return pack_h2(lo, hi);
}
static inline u32 __byte_perm(u32 a, u32 b, u32 s) {
    u64 v = ((u64)b << 32) | a;
    u32 r = 0;
    for (int i = 0; i < 4; ++i) r |= (u32)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static inline u32 prmt(u32 a, u32 b, u32 sel) { return __byte_perm(a, b, sel); }
static inline u32 lop3_and_or(u32 a, u32 b, u32 c) { return (a & b) | c; }
static inline u32 lop3_and_xor(u32 a, u32 b, u32 c) { return (a & b) ^ c; }
static inline u32 __funnelshift_r(u32 lo, u32 hi, u32 n) {
    n &= 31;
    u64 v = ((u64)hi << 32) | lo;
    return (u32)(v >> n);
}
static inline u32 __funnelshift_l(u32 lo, u32 hi, u32 n) {
    n &= 31;
    u64 v = ((u64)hi << 32) | lo;
    return (u32)((v << n) >> 32);
}
static inline u32 rotr(u32 x, u32 n) { return __funnelshift_r(x, x, n); }
static inline u32 rotl(u32 x, u32 n) { return __funnelshift_l(x, x, n); }
static inline u32 fshr(u32 lo, u32 hi, u32 n) { return __funnelshift_r(lo, hi, n); }
static inline int popc(u32 x) { return __popc(x); }
static inline float fast_exp2(float x) { return std::exp2(x); }
static inline float fmul_rn(float a, float b) { return a * b; }
static inline float fadd_rn(float a, float b) { return a + b; }
static inline float fsub_rn(float a, float b) { return a - b; }
static inline float fdiv_rn(float a, float b) { return a / b; }
static inline float fsqrt_rn(float a) { return std::sqrt(a); }
static inline double dmul_rn(double a, double b) { return a * b; }
static inline double dadd_rn(double a, double b) { return a + b; }
static inline double ddiv_rn(double a, double b) { return a / b; }
static inline float rint_f(float x) { return std::nearbyint(x); }

// --- memory helpers ---------------------------------------------------------------------------
static inline u32 ld_u32(const void* p) {
    u32 v;
    std::memcpy(&v, p, 4);
    return v;
}
static inline u16 ld_u16(const void* p) {
    u16 v;
    std::memcpy(&v, p, 2);
    return v;
}
static inline u8 ld_u8(const void* p) { return *(const u8*)p; }
static inline float ld_cg_f32(const float* p) { return __uint_as_float(__atomic_load_n((const u32*)p, __ATOMIC_SEQ_CST)); }
static inline void fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline u32 atomic_inc_u32(u32* p) { return __atomic_fetch_add(p, 1u, __ATOMIC_SEQ_CST); }
static inline void atomic_add_i32(int* p, int v) { __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void atomic_min_u64(u64* p, u64 v) {
    u64 cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
}
static inline void store_u32_volatile(u32* p, u32 v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline void cp_async16(void* smem, const void* gmem) { std::memcpy(smem, gmem, 16); }
static inline void cp_async_commit() {}
template <int N>
static inline void cp_async_wait() {}

// --- barriers and collectives -----------------------------------------------------------------
static inline void sync_block() { emu_cta_barrier->arrive_and_wait(); }
static inline void sync_warp() { emu_wsync(); }

static inline float shfl_xor(float v, int m) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.f[l][0] = v;
    emu_wsync();
    float r = w.f[l ^ (u32)m][0];
    emu_wsync();
    return r;
}
static inline u32 shfl_xor_u(u32 v, int m) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.u[l][0] = v;
    emu_wsync();
    u32 r = w.u[l ^ (u32)m][0];
    emu_wsync();
    return r;
}
static inline float shfl_idx(float v, int src) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.f[l][0] = v;
    emu_wsync();
    float r = w.f[src & 31][0];
    emu_wsync();
    return r;
}
static inline u32 warp_ballot(bool pr) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.u[l][0] = pr ? 1u : 0u;
    emu_wsync();
    u32 r = 0;
    for (int i = 0; i < 32; ++i) r |= w.u[i][0] << i;
    emu_wsync();
    return r;
}
static inline bool warp_any(bool pr) { return warp_ballot(pr) != 0; }

static inline u32 smem_addr(const void* p) { return (u32)(uintptr_t)p; }

// ldmatrix .x4 .trans: lane i gives row (i % 8) of matrix (i / 8).
static inline void ldmatrix_x4_trans(u32 r[4], const void* row) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.p[l] = row;
    emu_wsync();
    u32 g = l >> 2, t = l & 3;
    for (int j = 0; j < 4; ++j) {
        const u16* r0 = (const u16*)w.p[8 * j + 2 * t];
        const u16* r1 = (const u16*)w.p[8 * j + 2 * t + 1];
        r[j] = (u32)ld_u16(r0 + g) | ((u32)ld_u16(r1 + g) << 16);
    }
    emu_wsync();
}
static inline u32 movmatrix_trans(u32 x) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    w.u[l][0] = x;
    emu_wsync();
    u32 g = l >> 2, t = l & 3;
    u32 src0 = w.u[4 * (2 * t) + g / 2][0], src1 = w.u[4 * (2 * t + 1) + g / 2][0];
    u32 lo = (g & 1) ? (src0 >> 16) : (src0 & 0xffffu);
    u32 hi = (g & 1) ? (src1 >> 16) : (src1 & 0xffffu);
    emu_wsync();
    return lo | (hi << 16);
}
static inline void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
    EmuWarp& w = emu_w();
    u32 l = lane_id();
    for (int i = 0; i < 4; ++i) w.u[l][i] = a[i];
    w.u[l][4] = b[0];
    w.u[l][5] = b[1];
    emu_wsync();
    float A[16][16], B[16][8];
    for (int ln = 0; ln < 32; ++ln) {
        int g = ln >> 2, t = ln & 3;
        const u32* fa = w.u[ln];
        auto lo = [](u32 v) { return h2f((u16)v); };
        auto hi = [](u32 v) { return h2f((u16)(v >> 16)); };
        A[g][2 * t] = lo(fa[0]);
        A[g][2 * t + 1] = hi(fa[0]);
        A[g + 8][2 * t] = lo(fa[1]);
        A[g + 8][2 * t + 1] = hi(fa[1]);
        A[g][2 * t + 8] = lo(fa[2]);
        A[g][2 * t + 9] = hi(fa[2]);
        A[g + 8][2 * t + 8] = lo(fa[3]);
        A[g + 8][2 * t + 9] = hi(fa[3]);
        B[2 * t][g] = lo(fa[4]);
        B[2 * t + 1][g] = hi(fa[4]);
        B[2 * t + 8][g] = lo(fa[5]);
        B[2 * t + 9][g] = hi(fa[5]);
    }
    emu_wsync();
    int g = l >> 2, t = l & 3;
    int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        double acc = d[i];
        for (int k = 0; k < 16; ++k) acc += (double)A[rows[i]][k] * (double)B[k][cols[i]];
        d[i] = (float)acc;
    }
}
