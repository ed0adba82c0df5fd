// Matrix products through cuBLAS: bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), bf16
// or fp32 output. Row-major y = x * w^T is computed as the column-major product
// y^T = w * x^T, which is what cuBLAS sees when handed the same pointers.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/elementwise_launch.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": ", std::string(why)));
}

struct HandleDeleter {
  void operator()(cublasContext* h) const { cublasDestroy(h); }
};
using Handle = std::unique_ptr<cublasContext, HandleDeleter>;

// One handle per thread and device: cuBLAS handles must not be shared by threads that set
// different streams concurrently.
absl::StatusOr<cublasHandle_t> ThreadHandle() {
  thread_local std::map<int, Handle> handles;
  int device = 0;
  if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  auto it = handles.find(device);
  if (it == handles.end()) {
    cublasHandle_t h = nullptr;
    if (absl::Status s = CublasStatus(cublasCreate(&h), "cublasCreate"); !s.ok()) return s;
    it = handles.emplace(device, Handle(h)).first;
  }
  return it->second.get();
}

}  // namespace

absl::Status Gemm(const GemmParams& p, Stream stream) {
  if (p.m < 0 || p.n < 0 || p.k < 0) return Bad("m/n/k", "negative");
  if (p.m > INT_MAX || p.n > INT_MAX || p.k > INT_MAX) return Bad("m/n/k", "above 2^31 - 1");
  if ((p.y_bf16 == nullptr) == (p.y_f32 == nullptr)) {
    return Bad("y_bf16/y_f32", "exactly one output must be set");
  }
  if (p.accumulate && p.y_f32 == nullptr) return Bad("accumulate", "needs the fp32 output");
  if (p.ldx < p.k) return Bad("ldx", "smaller than k");
  if (p.ldw < p.k) return Bad("ldw", "smaller than k");
  if (p.ldy < p.n) return Bad("ldy", "smaller than n");
  if (p.ldx > INT_MAX || p.ldw > INT_MAX || p.ldy > INT_MAX) return Bad("ld", "above 2^31 - 1");
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (p.k > 0 && (p.x == nullptr || p.w == nullptr)) return Bad(p.x ? "w" : "x", "null");
  absl::StatusOr<cublasHandle_t> handle = ThreadHandle();
  if (!handle.ok()) return handle.status();
  if (absl::Status s = CublasStatus(
          cublasSetStream(*handle, reinterpret_cast<cudaStream_t>(stream)), "cublasSetStream");
      !s.ok()) {
    return s;
  }
  const float alpha = 1.0f;
  const float beta = p.accumulate ? 1.0f : 0.0f;
  void* y = p.y_f32 != nullptr ? static_cast<void*>(p.y_f32) : static_cast<void*>(p.y_bf16);
  const cudaDataType_t ytype = p.y_f32 != nullptr ? CUDA_R_32F : CUDA_R_16BF;
  absl::Status s = CublasStatus(
      cublasGemmEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.n),
                   static_cast<int>(p.m), static_cast<int>(p.k), &alpha, p.w, CUDA_R_16BF,
                   static_cast<int>(p.ldw), p.x, CUDA_R_16BF, static_cast<int>(p.ldx), &beta, y,
                   ytype, static_cast<int>(p.ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
  if (!s.ok() || p.bias == nullptr) return s;
  return CudaStatus(internal::LaunchAddBias(p.y_bf16, p.y_f32, p.ldy, p.m, p.n, p.bias,
                                            reinterpret_cast<cudaStream_t>(stream)),
                    "AddBias launch");
}

}  // namespace tierkv::kernels::cuda
