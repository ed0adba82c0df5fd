// Offline choice of each attention head's sparse pattern (the tierkv-pattern-search tool):
// for one head of one attention call (a long sample prompt's queries over its keys), every
// pattern gets the largest budget whose index stays within the same share of the causal
// work, and the pattern whose index recovers the most attention mass wins. A-shape keeps 64
// initial keys and grows its window; vertical-slash grows its slashes with verticals at
// three proportions (MInference's 1000 : 6096, 1 : 1 and 4 : 1) and keeps the best;
// block-sparse grows its blocks per row block.
//
// Attention mass recovered by an index: over `sample_rows` queries, the average of the dense
// softmax weight that falls on keys the index covers (1 for the full index). The sample ends
// before the call's last 64 queries, which vertical-slash estimates from (when the call has
// that many more; else it is the last queries). Cost: kernels::CoveredFraction of the index.
#ifndef TIERKV_PREFILL_WORKER_PATTERN_SEARCH_H_
#define TIERKV_PREFILL_WORKER_PATTERN_SEARCH_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "model/sparse_plan.h"

namespace tierkv {

struct PatternSearchOptions {
  // Share of the causal work every candidate may use (CoveredFraction), in (0, 1].
  double cost = 0.1;
  // A head whose best pattern recovers less than this runs dense.
  double min_recovery = 0.0;
  // Queries whose attention mass is measured (see above); >= 1.
  int64_t sample_rows = 256;
};

struct PatternCandidate {
  kernels::HeadPattern pattern;
  double recovered = 0;  // Attention mass recovered, in [0, 1].
  double coverage = 0;   // CoveredFraction of its index.
};

struct HeadChoice {
  kernels::HeadPattern pattern;  // The winner (kDense when none recovers min_recovery).
  double recovered = 1;
  double coverage = 1;
  std::vector<PatternCandidate> candidates;  // A-shape, vertical-slash, block-sparse.
};

// Searches query head `head` of `p` (q, k, v and shape fields; kt and sliding_window must be
// unset). INVALID_ARGUMENT for malformed params or options.
absl::StatusOr<HeadChoice> SearchHeadPattern(const kernels::AttentionParams& p, int head,
                                             const PatternSearchOptions& options);

struct ModelSearchOptions {
  PatternSearchOptions head;
  // Written into the plan (see SparsePlan).
  int64_t min_tokens = SparsePlan{}.min_tokens;
  double max_coverage = 0.85;
};

// Prefills `prompt` on the CPU model `model` (fp32, the reference) and searches every head of
// every layer on the attention of the prompt's last forward chunk (its queries over all the
// prompt's keys; at least 64 of them, else INVALID_ARGUMENT: load the model with a prefill
// chunk as long as the prompt). Each head gets its own pattern and budgets (both runtimes run
// such plans; the GPU builds the vertical-slash heads of a layer in one index with per-head
// budgets, and A-shape / block-sparse heads once per distinct window / block count). Returns the plan (every head listed) and, in `choices`
// when not null, what each head's candidates recovered ([layer][head]). `progress` (when
// set) runs after each layer. INVALID_ARGUMENT for a model with a sliding window or bad options; errors of Prefill.
absl::StatusOr<SparsePlan> SearchModelPatterns(
    const Model& model, std::span<const uint32_t> prompt, const ModelSearchOptions& options,
    std::vector<std::vector<HeadChoice>>* choices = nullptr,
    const std::function<void(int layer)>& progress = nullptr);

}  // namespace tierkv

#endif  // TIERKV_PREFILL_WORKER_PATTERN_SEARCH_H_
