#include "prefill_worker/pattern_search.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace tierkv {
namespace {

using kernels::SparseHeadIndex;

// Dense softmax weights of the call's last `rows` queries for one head.
struct Sample {
  int64_t first_row = 0;
  std::vector<std::vector<double>> weights;  // [row][key], keys up to the row's position.
};

// The sample avoids the last `held_out` queries (those vertical-slash estimates from, which
// would favour it) when the call has enough queries before them.
Sample DenseSample(const kernels::AttentionParams& p, int head, int64_t rows, int64_t held_out) {
  Sample s;
  rows = std::min(rows, p.num_queries);
  const int64_t end = p.num_queries - held_out >= rows ? p.num_queries - held_out : p.num_queries;
  s.first_row = end - rows;
  const int kv_head = head / (p.num_q_heads / p.num_kv_heads);
  for (int64_t row = s.first_row; row < end; ++row) {
    const int64_t pos = p.query_position + row;
    const float* q = p.q + row * p.ldq + static_cast<int64_t>(head) * p.head_dim;
    std::vector<double> w(pos + 1);
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j <= pos; ++j) {
      const float* k = p.k + j * p.ldkv + static_cast<int64_t>(kv_head) * p.head_dim;
      double dot = 0;
      for (int e = 0; e < p.head_dim; ++e) dot += static_cast<double>(q[e]) * k[e];
      w[j] = dot * p.scale;
      mx = std::max(mx, w[j]);
    }
    double sum = 0;
    for (double& x : w) sum += (x = std::exp(x - mx));
    for (double& x : w) x /= sum;
    s.weights.push_back(std::move(w));
  }
  return s;
}

double Recovered(const Sample& s, const SparseHeadIndex& ix) {
  double total = 0;
  for (size_t i = 0; i < s.weights.size(); ++i) {
    const int64_t row = s.first_row + static_cast<int64_t>(i);
    const int64_t r = row / kernels::kSparseBlock;
    const auto blocks = ix.BlocksOf(r);
    const auto columns = ix.ColumnsOf(r);
    const std::vector<double>& w = s.weights[i];
    double in = 0;
    for (int32_t b : blocks) {
      const int64_t lo = static_cast<int64_t>(b) * kernels::kSparseBlock;
      const int64_t hi = std::min<int64_t>(lo + kernels::kSparseBlock, w.size());
      for (int64_t j = lo; j < hi; ++j) in += w[j];
    }
    for (int32_t c : columns) {
      if (c < static_cast<int64_t>(w.size())) in += w[c];
    }
    total += in;
  }
  return s.weights.empty() ? 0 : total / static_cast<double>(s.weights.size());
}

// The largest x in [lo, hi] whose index covers at most `cost` (the smallest, lo, when none
// does), with its index. Coverage grows with x for every pattern here (larger budgets keep
// supersets), so a binary search finds it.
absl::StatusOr<std::pair<int64_t, SparseHeadIndex>> LargestWithin(
    int64_t lo, int64_t hi, double cost, const kernels::SparseShape& shape,
    const std::function<absl::StatusOr<SparseHeadIndex>(int64_t)>& build) {
  TIERKV_ASSIGN_OR_RETURN(SparseHeadIndex best, build(lo));
  int64_t best_x = lo;
  if (kernels::CoveredFraction(best, shape) > cost) return std::make_pair(best_x, best);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    TIERKV_ASSIGN_OR_RETURN(SparseHeadIndex ix, build(mid));
    if (kernels::CoveredFraction(ix, shape) <= cost) {
      lo = mid;
      best_x = mid;
      best = std::move(ix);
    } else {
      hi = mid - 1;
    }
  }
  return std::make_pair(best_x, best);
}

}  // namespace

absl::StatusOr<HeadChoice> SearchHeadPattern(const kernels::AttentionParams& p, int head,
                                             const PatternSearchOptions& options) {
  TIERKV_RETURN_IF_ERROR(kernels::ValidateAttentionParams(p));
  if (p.kt != nullptr || p.sliding_window != 0) {
    return absl::InvalidArgumentError("pattern search takes neither kt nor a sliding window");
  }
  if (head < 0 || head >= p.num_q_heads) {
    return absl::InvalidArgumentError(absl::StrCat("head ", head, " outside [0, ",
                                                   p.num_q_heads, ")"));
  }
  if (!(options.cost > 0 && options.cost <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("cost ", options.cost, " outside (0, 1]"));
  }
  if (options.sample_rows < 1 || !(options.min_recovery >= 0 && options.min_recovery <= 1)) {
    return absl::InvalidArgumentError("sample_rows must be >= 1 and min_recovery in [0, 1]");
  }
  const kernels::SparseShape shape{p.num_queries, p.query_position};
  const int64_t keys = p.query_position + p.num_queries;
  const int64_t key_blocks = (keys + kernels::kSparseBlock - 1) / kernels::kSparseBlock;
  const Sample sample =
      DenseSample(p, head, options.sample_rows, std::min<int64_t>(64, p.num_queries));
  HeadChoice choice;

  // A-shape: the first min(64, keys) keys and the largest window that fits.
  {
    kernels::HeadPattern pat;
    pat.pattern = kernels::SparsePattern::kAShape;
    pat.a_shape.n_init = std::min<int64_t>(64, keys);
    TIERKV_ASSIGN_OR_RETURN(auto found, LargestWithin(1, keys, options.cost, shape, [&](int64_t x) {
      kernels::AShapeParams a = pat.a_shape;
      a.local = x;
      return kernels::AShapeIndex(shape, a);
    }));
    pat.a_shape.local = found.first;
    choice.candidates.push_back(
        {pat, Recovered(sample, found.second), kernels::CoveredFraction(found.second, shape)});
  }
  // Vertical-slash: verticals per slash in MInference's 1000 : 6096 proportion, and in two
  // richer ones (columns are cheap next to slashes on short prompts); the best of the three.
  {
    const int64_t last_q = std::min<int64_t>(64, p.num_queries);
    TIERKV_ASSIGN_OR_RETURN(kernels::AttentionMass mass,
                            kernels::EstimateAttentionMass(p, head, last_q));
    std::optional<PatternCandidate> best;
    for (const double ratio : {1000.0 / 6096.0, 1.0, 4.0}) {
      kernels::HeadPattern pat;
      pat.pattern = kernels::SparsePattern::kVerticalSlash;
      pat.vertical_slash.last_q = last_q;
      auto budgets = [&](int64_t slash) {
        kernels::VerticalSlashParams v = pat.vertical_slash;
        v.slash = slash;
        v.vertical = std::clamp<int64_t>(static_cast<int64_t>(slash * ratio), 1, keys);
        v.keep_near = std::min<int64_t>(100, slash);
        v.keep_first = std::min<int64_t>(30, v.vertical);
        return v;
      };
      TIERKV_ASSIGN_OR_RETURN(auto found,
                              LargestWithin(1, keys, options.cost, shape, [&](int64_t x) {
                                const kernels::VerticalSlashParams v = budgets(x);
                                return kernels::VerticalSlashIndex(
                                    shape,
                                    kernels::TopIndices(mass.per_key, v.vertical, v.keep_first),
                                    kernels::TopIndices(mass.per_distance, v.slash, v.keep_near));
                              }));
      pat.vertical_slash = budgets(found.first);
      PatternCandidate c{pat, Recovered(sample, found.second),
                         kernels::CoveredFraction(found.second, shape)};
      if (!best || c.recovered > best->recovered) best = c;
    }
    choice.candidates.push_back(*best);
  }
  // Block-sparse.
  {
    kernels::HeadPattern pat;
    pat.pattern = kernels::SparsePattern::kBlockSparse;
    TIERKV_ASSIGN_OR_RETURN(auto found,
                            LargestWithin(1, key_blocks, options.cost, shape, [&](int64_t x) {
                              return kernels::BuildBlockSparseIndex(p, head, {x});
                            }));
    pat.block_sparse.top_blocks = found.first;
    choice.candidates.push_back(
        {pat, Recovered(sample, found.second), kernels::CoveredFraction(found.second, shape)});
  }
  // The most mass at the cost; ties by the order above (cheaper indices to build first).
  const PatternCandidate* best = &choice.candidates[0];
  for (const PatternCandidate& c : choice.candidates) {
    if (c.recovered > best->recovered) best = &c;
  }
  if (best->recovered >= options.min_recovery) {
    choice.pattern = best->pattern;
    choice.recovered = best->recovered;
    choice.coverage = best->coverage;
  } else {
    choice.pattern.pattern = kernels::SparsePattern::kDense;
  }
  return choice;
}

absl::StatusOr<SparsePlan> SearchModelPatterns(
    const Model& model, std::span<const uint32_t> prompt, const ModelSearchOptions& options,
    std::vector<std::vector<HeadChoice>>* choices, const std::function<void(int layer)>& progress) {
  if (model.config().sliding_window != 0) {
    return absl::InvalidArgumentError("sparse patterns do not combine with a sliding window");
  }
  if (options.min_tokens < 1 || !(options.max_coverage > 0 && options.max_coverage <= 1)) {
    return absl::InvalidArgumentError("min_tokens must be >= 1 and max_coverage in (0, 1]");
  }
  const int layers = static_cast<int>(model.config().num_layers);
  const int heads = static_cast<int>(model.config().num_heads);
  std::vector<std::vector<HeadChoice>> found(layers, std::vector<HeadChoice>(heads));
  absl::Status failed;
  const int64_t end = static_cast<int64_t>(prompt.size());
  KvCache kv = model.NewKvCache();
  auto observe = [&](int layer, const kernels::AttentionParams& ap) {
    // Only the last chunk: the prompt's last queries over all its keys. A short last chunk
    // would fit the budgets to a few rows.
    if (!failed.ok() || ap.query_position + ap.num_queries != end) return;
    if (ap.num_queries < kernels::kSparseBlock) {
      failed = absl::InvalidArgumentError(absl::StrCat(
          "the prompt's last forward chunk has ", ap.num_queries, " queries; the search needs "
          "at least ", kernels::kSparseBlock, " (load the model with a prefill chunk as long "
          "as the prompt)"));
      return;
    }
    kernels::AttentionParams p = ap;
    p.kt = nullptr;
    p.kt_blocks = 0;
    for (int h = 0; h < heads && failed.ok(); ++h) {
      absl::StatusOr<HeadChoice> c = SearchHeadPattern(p, h, options.head);
      if (c.ok()) {
        found[layer][h] = *std::move(c);
      } else {
        failed = c.status();
      }
    }
    if (progress && failed.ok()) progress(layer);
  };
  TIERKV_RETURN_IF_ERROR(model.PrefillObserved(prompt, &kv, observe).status());
  TIERKV_RETURN_IF_ERROR(failed);
  SparsePlan plan;
  plan.min_tokens = options.min_tokens;
  plan.max_coverage = options.max_coverage;
  plan.layers.assign(layers, std::vector<kernels::HeadPattern>(heads));
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < heads; ++h) plan.layers[l][h] = found[l][h].pattern;
  }
  if (choices != nullptr) *choices = std::move(found);
  return plan;
}

}  // namespace tierkv
