// Host side of the attention kernels: parameter checks, then the plan and the launch
// (attention.cu).
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/attention_launch.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("Attention: ", std::string(field), ": ", std::string(why)));
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

internal::AttentionProblem ToProblem(const AttentionParams& p) {
  internal::AttentionProblem x;
  x.q = p.q;
  x.ldq = p.ldq;
  x.k = p.k;
  x.v = p.v;
  x.ldkv = p.ldkv;
  x.out = p.out;
  x.ldo = p.ldo;
  x.num_queries = p.num_queries;
  x.query_position = p.query_position;
  x.num_keys = p.num_keys;
  x.num_q_heads = p.num_q_heads;
  x.num_kv_heads = p.num_kv_heads;
  x.head_dim = p.head_dim;
  x.scale = p.scale;
  x.sliding_window = p.sliding_window;
  x.workspace = p.workspace;
  return x;
}

// Everything but the workspace, in field order, so the first bad field is the one named.
// The kernels load and store 16-byte chunks of bf16 rows (cp.async, uint4), hence the
// alignment rules on pointers and strides; they index keys and positions with 32-bit ints.
absl::Status CheckShape(const AttentionParams& p) {
  if (p.q == nullptr) return Bad("q", "null");
  if (p.k == nullptr) return Bad("k", "null");
  if (p.v == nullptr) return Bad("v", "null");
  if (p.out == nullptr) return Bad("out", "null");
  if (p.num_queries < 0) return Bad("num_queries", "negative");
  if (p.query_position < 0) return Bad("query_position", "negative");
  if (p.num_keys < 0) return Bad("num_keys", "negative");
  if (p.num_kv_heads <= 0) return Bad("num_kv_heads", "must be positive");
  if (p.num_q_heads <= 0) return Bad("num_q_heads", "must be positive");
  if (p.num_q_heads % p.num_kv_heads != 0) {
    return Bad("num_q_heads", absl::StrCat(p.num_q_heads, " is not a multiple of num_kv_heads ",
                                           p.num_kv_heads));
  }
  if (p.head_dim != 64 && p.head_dim != 128) {
    return Bad("head_dim", absl::StrCat(p.head_dim, " is not 64 or 128"));
  }
  if (p.num_keys < p.query_position + p.num_queries) {
    return Bad("num_keys", absl::StrCat(p.num_keys, " is less than query_position + "
                                                    "num_queries = ",
                                        p.query_position + p.num_queries));
  }
  constexpr int64_t kMaxKeys = int64_t{1} << 30;
  if (p.num_keys >= kMaxKeys) return Bad("num_keys", "must be below 2^30");
  if (p.num_queries * p.num_q_heads >= (int64_t{1} << 31)) {
    return Bad("num_queries", "num_queries * num_q_heads must be below 2^31");
  }
  const int64_t q_row = int64_t{p.num_q_heads} * p.head_dim;
  const int64_t kv_row = int64_t{p.num_kv_heads} * p.head_dim;
  if (p.ldq < q_row) return Bad("ldq", absl::StrCat(p.ldq, " < num_q_heads * head_dim"));
  if (p.ldkv < kv_row) return Bad("ldkv", absl::StrCat(p.ldkv, " < num_kv_heads * head_dim"));
  if (p.ldo < q_row) return Bad("ldo", absl::StrCat(p.ldo, " < num_q_heads * head_dim"));
  if (p.ldq % 8 != 0) return Bad("ldq", "must be a multiple of 8 (16-byte rows)");
  if (p.ldkv % 8 != 0) return Bad("ldkv", "must be a multiple of 8 (16-byte rows)");
  if (p.ldo % 8 != 0) return Bad("ldo", "must be a multiple of 8 (16-byte rows)");
  if (!Aligned16(p.q)) return Bad("q", "not 16-byte aligned");
  if (!Aligned16(p.k)) return Bad("k", "not 16-byte aligned");
  if (!Aligned16(p.v)) return Bad("v", "not 16-byte aligned");
  if (!Aligned16(p.out)) return Bad("out", "not 16-byte aligned");
  // Positive: the online softmax tracks the row maximum of the unscaled scores.
  if (!std::isfinite(p.scale) || p.scale <= 0) return Bad("scale", "not finite and positive");
  if (p.sliding_window < 0) return Bad("sliding_window", "negative");
  return absl::OkStatus();
}

}  // namespace

size_t AttentionWorkspaceBytes(const AttentionParams& p) {
  if (!CheckShape(p).ok()) return 0;
  return internal::PlanAttention(ToProblem(p)).workspace_bytes;
}

absl::Status CheckAttentionParams(const AttentionParams& p) { return CheckShape(p); }

absl::Status Attention(const AttentionParams& p, Stream stream) {
  if (absl::Status s = CheckShape(p); !s.ok()) return s;
  const internal::AttentionProblem problem = ToProblem(p);
  const internal::AttentionPlan plan = internal::PlanAttention(problem);
  if (p.workspace_bytes < plan.workspace_bytes) {
    return Bad("workspace_bytes", absl::StrCat(p.workspace_bytes, " < the ",
                                               plan.workspace_bytes, " needed"));
  }
  if (plan.workspace_bytes > 0) {
    if (p.workspace == nullptr) return Bad("workspace", "null");
    if (!Aligned16(p.workspace)) return Bad("workspace", "not 16-byte aligned");
  }
  if (p.num_queries == 0) return absl::OkStatus();
  return CudaStatus(internal::LaunchAttention(problem, plan, internal::kPrefillAuto,
                                              reinterpret_cast<cudaStream_t>(stream)),
                    "Attention launch");
}

}  // namespace tierkv::kernels::cuda
