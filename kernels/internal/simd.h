// Portable 16-lane fp32 vectors (GCC/Clang vector extensions) and the fixed-order
// reductions and exp that every CPU kernel shares.
//
// Invariants that make the kernels deterministic (see kernels/ops.h):
// - Arithmetic is per lane, IEEE-754 binary32, round to nearest, never contracted into FMA
//   (kernels/ and model/ compile with -ffp-contract=off). The lane count is fixed at 16
//   whatever the ISA: AVX-512 holds a V16 in one register, AVX2 in two, SSE2 in four, and
//   every one of them computes the same bits.
// - ReduceSum and ReduceSum16 add the 16 lanes in one fixed tree; ReduceSum16 is the same
//   tree applied to 16 vectors at once, so a sum never depends on which helper computed it.
// - Exp is a fixed polynomial built from +, *, comparisons and bit operations only, so it
//   does not depend on libm either.
//
// V16 values live in registers and locals only: GCC aligns V16 to 16 bytes in code built
// for the baseline ISA but assumes 64 in the AVX-512 clones, so memory shared between the
// two is plain floats accessed with Load/Store (unaligned moves).
//
// Only kernels/*.cc include this header.
#ifndef TIERKV_KERNELS_INTERNAL_SIMD_H_
#define TIERKV_KERNELS_INTERNAL_SIMD_H_

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__)
#define TIERKV_INLINE inline __attribute__((always_inline))
#else
#define TIERKV_INLINE inline
#endif

// Compiles a function once per x86-64 ISA level and picks one at load time (GNU ifunc).
// Every clone computes the same bits; the clones only differ in speed. Define
// TIERKV_NO_ISA_CLONES to build the baseline ISA only (for tools that dislike ifuncs, or to
// check that claim).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && \
    !defined(TIERKV_NO_ISA_CLONES)
#define TIERKV_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TIERKV_ISA_CLONES
#endif

namespace tierkv::kernels::internal {

inline constexpr int kLanes = 16;

typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

TIERKV_INLINE V16 Load(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first n (0..16) floats at p; the other lanes are zero. Reads only p[0..n).
TIERKV_INLINE V16 LoadPartial(const float* p, int n) {
  V16 v = {};
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

TIERKV_INLINE void Store(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }

TIERKV_INLINE void StorePartial(float* p, V16 v, int n) {
  for (int i = 0; i < n; ++i) p[i] = v[i];
}

TIERKV_INLINE V16 Splat(float x) { return V16{} + x; }

TIERKV_INLINE I16 Iota() {
  return I16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
}

TIERKV_INLINE V16 Max(V16 a, V16 b) { return a > b ? a : b; }

// Sum of the 16 lanes in this fixed tree:
//   s8[i] = a[i] + a[i+8]   (i < 8)
//   s4[i] = s8[i] + s8[i+4] (i < 4)
//   s2[i] = s4[i] + s4[i+2] (i < 2)
//   sum   = s2[0] + s2[1]
TIERKV_INLINE float ReduceSum(V16 a) {
  float s8[8], s4[4], s2[2];
  for (int i = 0; i < 8; ++i) s8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

// out[j] = ReduceSum(a[j]) for j in 0..15, bit for bit, computed with shuffles so that the
// 16 horizontal sums of a GEMM tile cost 15 vector adds instead of 16 scalar trees.
TIERKV_INLINE V16 ReduceSum16(const V16* a) {
  // Level 1: lanes 0..7 of b[i] hold s8 of a[2i], lanes 8..15 s8 of a[2i+1].
  V16 b[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    const V16 lo = __builtin_shuffle(a[2 * i], a[2 * i + 1],
                                     I16{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23});
    const V16 hi = __builtin_shuffle(a[2 * i], a[2 * i + 1],
                                     I16{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                                         30, 31});
    b[i] = lo + hi;
  }
  // Level 2: lanes 4j..4j+3 of c[i] hold s4 of a[4i+j].
  V16 c[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const V16 lo = __builtin_shuffle(b[2 * i], b[2 * i + 1],
                                     I16{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26,
                                         27});
    const V16 hi = __builtin_shuffle(b[2 * i], b[2 * i + 1],
                                     I16{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                         31});
    c[i] = lo + hi;
  }
  // Level 3: lanes 2j, 2j+1 of d[i] hold s2 of a[8i+j].
  V16 d[2];
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    const V16 lo = __builtin_shuffle(c[2 * i], c[2 * i + 1],
                                     I16{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28,
                                         29});
    const V16 hi = __builtin_shuffle(c[2 * i], c[2 * i + 1],
                                     I16{2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                         31});
    d[i] = lo + hi;
  }
  // Level 4: lane j holds s2[0] + s2[1] of a[j].
  const V16 lo = __builtin_shuffle(d[0], d[1], I16{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,
                                                   24, 26, 28, 30});
  const V16 hi = __builtin_shuffle(d[0], d[1], I16{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23,
                                                   25, 27, 29, 31});
  return lo + hi;
}

// Maximum of the lanes (exact, so the order does not matter for finite values).
TIERKV_INLINE float ReduceMax(V16 a) {
  a = Max(a, __builtin_shuffle(a, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  a = Max(a, __builtin_shuffle(a, I16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
  a = Max(a, __builtin_shuffle(a, I16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
  a = Max(a, __builtin_shuffle(a, I16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
  return a[0];
}

// e^x per lane, within 2 ulp of the true value over the normal range. x below
// ln(FLT_MIN) (about -87.34, including -inf) gives exactly 0; above ln(FLT_MAX) gives +inf;
// NaN gives NaN. exp(0) is exactly 1. Cody-Waite range reduction and the Cephes expf
// polynomial, with rounding to an integer done by the 1.5*2^23 trick.
TIERKV_INLINE V16 Exp(V16 x) {
  const float kLo = -87.33654475f;
  const float kHi = 88.72283935f;
  V16 xc = x < kLo ? Splat(kLo) : x;
  xc = xc > kHi ? Splat(kHi) : xc;
  const V16 t = xc * 1.44269504088896341f;
  const V16 n = (t + 12582912.0f) - 12582912.0f;  // In [-126, 128].
  V16 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V16 p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  V16 y = p * (r * r) + r + 1.0f;
  // 2^n as a float built from its exponent bits; n = 128 has no such float, so it is
  // applied as 2^127 * 2.
  const V16 n_lo = n > 127.0f ? Splat(127.0f) : n;
  const I16 bits = (__builtin_convertvector(n_lo, I16) + 127) << 23;
  V16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  y = n > 127.0f ? y * 2.0f : y;
  y = x > kHi ? Splat(std::numeric_limits<float>::infinity()) : y;
  y = x < kLo ? Splat(0.0f) : y;
  return y;
}

// x * sigmoid(x) = x / (1 + e^-x) per lane.
TIERKV_INLINE V16 Silu(V16 x) { return x / (1.0f + Exp(-x)); }

}  // namespace tierkv::kernels::internal

#endif  // TIERKV_KERNELS_INTERNAL_SIMD_H_
