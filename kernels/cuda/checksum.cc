// Host side of BlockChecksums: parameter checks (before any CUDA call, so they hold on a
// machine without a GPU), then the launch.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/checksum_launch.h"
#include "kernels/cuda/internal/xxh3.cuh"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": ", std::string(why)));
}

// What both launchers need of the sizes.
absl::Status CheckCounts(size_t block_bytes, int64_t num_blocks) {
  if (num_blocks < 0) return Bad("num_blocks", "negative");
  if (block_bytes <= xxh3::kMaxShortInput) {
    return Bad("block_bytes", absl::StrCat(block_bytes,
                                           " is not more than 240 (only XXH3's "
                                           "long inputs are implemented)"));
  }
  if (num_blocks > 0x7fffffff) return Bad("num_blocks", "more than 2^31 - 1");
  return absl::OkStatus();
}

}  // namespace

absl::Status BlockChecksums(const void* data, size_t block_bytes, int64_t num_blocks, uint64_t* out,
                            Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckCounts(block_bytes, num_blocks));
  if (static_cast<uint64_t>(num_blocks) > std::numeric_limits<size_t>::max() / block_bytes) {
    return Bad("num_blocks", "num_blocks * block_bytes overflows");
  }
  if (num_blocks > 0 && data == nullptr) return Bad("data", "null");
  if (num_blocks > 0 && out == nullptr) return Bad("out", "null");
  if (reinterpret_cast<uintptr_t>(data) % 8 != 0) return Bad("data", "not 8-byte aligned");
  if (reinterpret_cast<uintptr_t>(out) % 8 != 0) return Bad("out", "not 8-byte aligned");
  if (num_blocks == 0) return absl::OkStatus();
  return CudaStatus(internal::LaunchBlockChecksums(data, block_bytes, num_blocks, out,
                                                   reinterpret_cast<cudaStream_t>(stream)),
                    "BlockChecksums launch");
}

absl::Status BlockChecksumsAt(const void* const* starts, size_t alignment, size_t block_bytes,
                              int64_t num_blocks, uint64_t* out, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckCounts(block_bytes, num_blocks));
  if (alignment != 1 && alignment != 8 && alignment != 16) {
    return Bad("alignment", absl::StrCat(alignment, " is not 1, 8 or 16"));
  }
  if (num_blocks > 0 && starts == nullptr) return Bad("starts", "null");
  if (num_blocks > 0 && out == nullptr) return Bad("out", "null");
  if (reinterpret_cast<uintptr_t>(starts) % 8 != 0) return Bad("starts", "not 8-byte aligned");
  if (reinterpret_cast<uintptr_t>(out) % 8 != 0) return Bad("out", "not 8-byte aligned");
  if (num_blocks == 0) return absl::OkStatus();
  return CudaStatus(
      internal::LaunchBlockChecksumsAt(starts, alignment, block_bytes, num_blocks, out,
                                       reinterpret_cast<cudaStream_t>(stream)),
      "BlockChecksumsAt launch");
}

}  // namespace tierkv::kernels::cuda
