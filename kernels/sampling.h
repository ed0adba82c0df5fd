// Choosing the next token from a row of logits: greedy, or temperature / top-k / top-p
// sampling that is reproducible from a seed.
#ifndef TIERKV_KERNELS_SAMPLING_H_
#define TIERKV_KERNELS_SAMPLING_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace tierkv::kernels {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax); otherwise > 0.
  float top_p = 1.0f;        // Nucleus mass in (0, 1]; 1 keeps every token.
  int32_t top_k = 0;         // Keep the k most likely tokens; 0 keeps every token.
  uint64_t seed = 0;         // Picks the stream of random numbers.
};

// OK, or INVALID_ARGUMENT naming the bad field: a negative or non-finite temperature, top_p
// outside (0, 1], a negative top_k.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Index of the largest logit; the lowest index among equal ones; NaN logits are never
// chosen (an empty or all-NaN row gives 0).
uint32_t ArgMax(std::span<const float> logits);

// The token for step `step` (0 for the first generated token, then 1, 2, ...): greedy when
// temperature is 0, otherwise sampled from softmax(logits / temperature) restricted to the
// top_k most likely tokens and then to the smallest most-likely prefix whose mass reaches
// top_p (at least one token). Candidates are ranked by probability, ties by lower index.
// The random number is Uniform01(RandomBits(StreamKey(seed, "sampling"), step)) from
// kernels/random.h, so the same (logits, params, step) always gives the same token.
// `params` must be valid; logits must not be empty.
uint32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step);

// SampleToken with the step counted for you. Not thread-safe; one per sequence.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params) {}
  uint32_t Next(std::span<const float> logits) { return SampleToken(logits, params_, step_++); }
  uint64_t step() const { return step_; }

 private:
  SamplingParams params_;
  uint64_t step_ = 0;
};

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_SAMPLING_H_
