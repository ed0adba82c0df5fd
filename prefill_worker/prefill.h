// Prefill: from a prompt to KV cache and a first token, reusing what the cache holds.
//
//   keys      = the prompt's block key chain under the model's spec and the tenant's salt
//   prefix    = the longest cached, checksum-verified prefix of those keys (fetched)
//   compute   = the model's prefill of every token after the prefix
//   store     = every new full block, extracted in the block object layout and stored
//
// At least one token is always computed (the first generated token needs the last prompt
// token's logits), so a prompt of whole blocks reuses all but its last block.
//
// The decode worker runs the same preparation (PrepareSequence) before it generates.
#ifndef TIERKV_PREFILL_WORKER_PREFILL_H_
#define TIERKV_PREFILL_WORKER_PREFILL_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache_client/cache_client.h"
#include "core/block_key.h"
#include "model/model.h"  // Also the sampling types of kernels/.
#include "model/runtime.h"
#include "tierkv/v1/common.pb.h"
#include "tierkv/v1/prefill_service.pb.h"

namespace tierkv {

// Checks what every worker request carries. FAILED_PRECONDITION when `model_id` names
// another model than `model` serves (empty accepts any); INVALID_ARGUMENT for an empty
// prompt, a token id outside the vocabulary, or bad sampling parameters; OUT_OF_RANGE when
// the prompt (plus `extra_tokens` to generate) does not fit the model's context.
absl::Status ValidateRequest(const Runtime& model, const std::string& model_id,
                             std::span<const uint32_t> tokens,
                             const v1::SamplingParams& sampling, int64_t extra_tokens);

// Sampling parameters of the kernels from the API's.
kernels::SamplingParams ToSamplingParams(const v1::SamplingParams& sampling);

// A prompt ready to generate from: its KV (cached prefix plus computed rest) and the
// logits of its last token.
struct PreparedSequence {
  std::unique_ptr<Sequence> seq;  // On the runtime's device.
  std::vector<float> logits;
  std::vector<BlockKey> keys;  // Full blocks of the prompt.
  uint32_t cached_blocks = 0;
  uint32_t cached_tokens = 0;
  uint32_t computed_tokens = 0;
  uint32_t checksum_failures = 0;
  // The cache could not be reached (only possible when it was optional).
  bool cache_unavailable = false;
  absl::Duration lookup_time;
  absl::Duration fetch_time;
  absl::Duration compute_time;
};

// Looks up and fetches the cached prefix of `tokens` (under the model's spec and `salt`)
// and computes the rest, in a sequence with room for `extra_tokens` more (generation). With `cache_required`, an unreachable cache manager is an error
// (UNAVAILABLE); otherwise the whole prompt is computed and cache_unavailable is set.
// `cache` may be null (nothing cached). Errors of the model's Prefill.
absl::StatusOr<PreparedSequence> PrepareSequence(const Runtime& model, CacheClient* cache,
                                                 const std::string& salt,
                                                 std::span<const uint32_t> tokens,
                                                 bool cache_required, int64_t extra_tokens = 0);

// The whole Prefill call: validate, prepare, sample the first token, store the new full
// blocks. A failure to store (a full cache of pinned blocks, say) does not fail the call:
// the first token is still right, and stored_blocks says what was stored.
absl::StatusOr<v1::PrefillResponse> RunPrefill(const Runtime& model, CacheClient& cache,
                                               const v1::PrefillRequest& request);

}  // namespace tierkv

#endif  // TIERKV_PREFILL_WORKER_PREFILL_H_
