#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/random.h"

namespace tierkv::kernels {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite and >= 0, got ", params.temperature));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", params.top_p));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", params.top_k));
  }
  return absl::OkStatus();
}

uint32_t ArgMax(std::span<const float> logits) {
  uint32_t best = 0;
  bool found = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (!found || logits[i] > logits[best]) {
      best = static_cast<uint32_t>(i);
      found = true;
    }
  }
  return best;
}

uint32_t SampleToken(std::span<const float> logits, const SamplingParams& params, uint64_t step) {
  if (params.temperature == 0.0f || params.top_k == 1 || logits.size() <= 1) {
    return ArgMax(logits);
  }
  const float max_logit = logits[ArgMax(logits)];
  if (!std::isfinite(max_logit)) return ArgMax(logits);
  std::vector<double> weight(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    weight[i] = std::isnan(logits[i])
                    ? 0.0
                    : std::exp((static_cast<double>(logits[i]) - max_logit) / params.temperature);
  }
  const double u =
      Uniform01(RandomBits(StreamKey(params.seed, Fnv1a64("sampling")), step));

  const bool truncate =
      params.top_p < 1.0f || (params.top_k > 0 && static_cast<size_t>(params.top_k) < logits.size());
  if (!truncate) {
    const double total = std::accumulate(weight.begin(), weight.end(), 0.0);
    const double target = u * total;
    double cum = 0;
    uint32_t last = 0;
    for (size_t i = 0; i < weight.size(); ++i) {
      if (weight[i] <= 0) continue;
      cum += weight[i];
      last = static_cast<uint32_t>(i);
      if (cum > target) return last;
    }
    return last;
  }

  std::vector<uint32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0u);
  auto more_likely = [&](uint32_t a, uint32_t b) {
    return weight[a] != weight[b] ? weight[a] > weight[b] : a < b;
  };
  size_t keep = order.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < keep) {
    keep = static_cast<size_t>(params.top_k);
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), more_likely);
  } else {
    std::sort(order.begin(), order.end(), more_likely);
  }
  double kept_total = 0;
  for (size_t i = 0; i < keep; ++i) kept_total += weight[order[i]];
  if (params.top_p < 1.0f) {
    const double mass = params.top_p * kept_total;
    double cum = 0;
    size_t n = 0;
    while (n < keep) {
      cum += weight[order[n]];
      ++n;
      if (cum >= mass) break;
    }
    keep = n;
    kept_total = cum;
  }
  const double target = u * kept_total;
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += weight[order[i]];
    if (cum > target) return order[i];
  }
  return order[keep - 1];
}

}  // namespace tierkv::kernels
