// Launchers of the attention kernels (attention.cu), and the plan that picks the path and
// the key split. Params are already checked by attention.cc; these only plan, enqueue work
// and return the launch error. No abseil here: this header is also compiled by nvcc.
//
// Prefill runs the FlashAttention-3 style wgmma + TMA kernel of attention_wgmma.cu when
// WgmmaPrefillSupports() says so (and the tensor maps can be built); otherwise, and for
// decode, one mma.sync kernel template (FlashAttention-2 style, attention.cu), whose two
// uses differ in what a block's rows are:
// - prefill: the rows of a block are consecutive queries of one q head; grid
//   (q heads, query tiles, 1), the heaviest (last) query tiles first.
// - decode: the rows are (query, q head) pairs of the q heads that share one KV head
//   ("packed GQA"), so each K/V tile is read once for the whole group; the keys are split
//   across `splits` blocks (flash-decoding), each writing normalized fp32 partial outputs and
//   their log2-sum-exp into the workspace, and a combine kernel merges them.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_ATTENTION_LAUNCH_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_ATTENTION_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>


namespace tierkv::kernels::cuda::internal {

// Tile configurations of the prefill kernel, for the benchmark's sweep. kPrefillAuto picks
// the tuned one for the head dimension.
enum PrefillVariant : int {
  kPrefillAuto = -1,
  kPrefillM128N64W4 = 0,  // 4 warps x 32 query rows, 64-key tiles, 2 stages.
  kPrefillM128N64W8 = 1,  // 8 warps x 16 query rows (q fragments held in registers).
  kPrefillM128N32W4 = 2,  // 4 warps x 32 query rows, 32-key tiles, 3 stages.
  kPrefillWgmmaS2 = 3,    // wgmma + TMA, 128 query rows x 128-key tiles, 2 K/V stages.
  kPrefillWgmmaS3 = 4,    // Same, 3 stages (4 for head_dim 64).
  kPrefillWgmmaM192 = 5,  // head_dim 64: 192 query rows (3 consumer warpgroups), 3 stages;
                          // head_dim 128: the same as kPrefillWgmmaS2.
  kPrefillVariants = 6,
};
// The wgmma variants, used when the kernel takes the params (kPrefillAuto picks one of them
// then: kPrefillWgmmaS2 at head_dim 128, kPrefillWgmmaM192 at 64).
inline bool IsWgmmaVariant(int variant) {
  return variant == kPrefillWgmmaS2 || variant == kPrefillWgmmaS3 ||
         variant == kPrefillWgmmaM192;
}
const char* PrefillVariantName(int variant);

// Decode (split-K) is used for at most this many queries.
inline constexpr int64_t kDecodeMaxQueries = 16;

// The fields of kernels::cuda::AttentionParams (ops.h, which nvcc must not see because it
// pulls in abseil), with the same meaning; attention.cc copies them over.
struct AttentionProblem {
  const uint16_t* q = nullptr;
  int64_t ldq = 0;
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  int64_t ldkv = 0;
  uint16_t* out = nullptr;
  int64_t ldo = 0;
  int64_t num_queries = 0;
  int64_t query_position = 0;
  int64_t num_keys = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;
  int64_t sliding_window = 0;
  void* workspace = nullptr;
};

struct AttentionPlan {
  bool decode = false;
  int splits = 1;               // Key splits (decode); > 1 needs the workspace.
  int64_t tile_base = 0;        // First key tile (in units of key_tile) of split 0.
  int64_t tiles_per_split = 0;  // Key tiles per split.
  int key_tile = 0;             // Keys per tile of the chosen configuration.
  size_t workspace_bytes = 0;
};

// Pure function of the params (no device query), so AttentionWorkspaceBytes and Attention
// always agree.
AttentionPlan PlanAttention(const AttentionProblem& p);

// True when the wgmma prefill kernel handles p (head_dim 64 or 128, more than
// kDecodeMaxQueries queries, 16-byte aligned q/k/v and strides).
bool WgmmaPrefillSupports(const AttentionProblem& p);

// Enqueues the wgmma prefill kernel (attention_wgmma.cu) in configuration `variant` (a wgmma
// PrefillVariant, or kPrefillAuto). cudaErrorNotSupported, with nothing enqueued, when the
// driver cannot build the TMA tensor maps; the caller then falls back to mma.sync.
cudaError_t LaunchPrefillWgmma(const AttentionProblem& p, int variant, cudaStream_t stream);

// Enqueues the kernels of `plan` (from PlanAttention(p)); p.workspace holds at least
// plan.workspace_bytes. `variant` is a PrefillVariant (prefill only).
cudaError_t LaunchAttention(const AttentionProblem& p, const AttentionPlan& plan, int variant,
                            cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_ATTENTION_LAUNCH_H_
