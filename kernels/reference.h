// Naive reference versions of the kernels in kernels/ops.h: plain loops in double
// precision, written for clarity, single-threaded. Tests check the fast kernels (and later
// the CUDA ones) against these within a tolerance; they are not bitwise equal.
#ifndef TIERKV_KERNELS_REFERENCE_H_
#define TIERKV_KERNELS_REFERENCE_H_

#include <span>
#include <vector>

#include "kernels/ops.h"

namespace tierkv::kernels::reference {

// Same params and meaning as the fast kernels; outputs written in place like them.
void Matmul(const MatmulParams& p);
void RmsNorm(const RmsNormParams& p);
void ApplyRope(const RopeParams& p);
void SwiGlu(const SwiGluParams& p);
void Attention(const AttentionParams& p);

// cos/sin tables with angle = position * inv_freq evaluated in double.
void RopeCosSin(std::span<const float> inv_freq, int64_t start, int64_t rows, float* cos,
                float* sin);

}  // namespace tierkv::kernels::reference

#endif  // TIERKV_KERNELS_REFERENCE_H_
