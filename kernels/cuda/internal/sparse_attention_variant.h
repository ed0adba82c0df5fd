// SparseAttention with a chosen kernel (internal::SparseVariant), for the tests and the
// benchmark that compare them. C++ only (abseil): not for .cu files.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_VARIANT_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_VARIANT_H_

#include "absl/status/status.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda::internal {

// kSparseAuto is SparseAttention itself. A wgmma variant the params do not allow is
// FAILED_PRECONDITION (not a silent fallback).
absl::Status SparseAttentionVariant(const AttentionParams& p, const SparseIndexView& index,
                                    int variant, Stream stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_VARIANT_H_
