// Which attention each head of a model runs during a long prefill: a pattern per (layer,
// query head), a default for heads not listed, and when to use them. Built by the prefill
// worker from a pattern file (prefill_worker/sparse_patterns.h, docs/sparse-patterns.md).
#ifndef TIERKV_MODEL_SPARSE_PLAN_H_
#define TIERKV_MODEL_SPARSE_PLAN_H_

#include <cstdint>
#include <vector>

#include "kernels/sparse_attention.h"

namespace tierkv {

struct SparsePlan {
  // Prefill calls whose attention spans fewer keys than this (cached prefix included) run
  // dense attention everywhere.
  // Measured on an H200 (sparse_prefill_bench --min-tokens=0, vertical-slash 1000 / 6096,
  // Llama-3-8B layer): the index costs more than it saves below 32K (16K: structured heads
  // 1.1x slower than dense, unstructured 1.3x); at 32K structured heads run 1.65x faster and
  // unstructured ones (which fall back to dense after the estimate) 1.12x slower; at 64K
  // 3.5x faster and 1.04x slower.
  int64_t min_tokens = 32768;
  // A head whose index would cover more than this fraction of the causal work runs the dense
  // kernel instead (never slower than dense; 1: never falls back). The GPU counts the tiles
  // its kernel computes (pairs of row blocks compute the union of both lists). Measured on
  // an H200 (sparse_prefill_bench --sweep): the sparse kernel takes as long as the dense one
  // at 0.93-0.95 of the tiles for windows and slash lines, 0.84 for blocks drawn at random
  // per row block.
  double max_coverage = 0.85;
  kernels::HeadPattern default_pattern;
  // layers[l][h]: query head h of layer l. Empty (or shorter than the model) means the
  // default for the rest.
  std::vector<std::vector<kernels::HeadPattern>> layers;

  const kernels::HeadPattern& For(int layer, int head) const {
    if (layer < static_cast<int>(layers.size()) &&
        head < static_cast<int>(layers[layer].size())) {
      return layers[layer][head];
    }
    return default_pattern;
  }
  // Whether some of query heads [0, heads) of `layer` has a pattern other than dense.
  bool AnySparseHead(int layer, int heads) const {
    for (int h = 0; h < heads; ++h) {
      if (For(layer, h).pattern != kernels::SparsePattern::kDense) return true;
    }
    return false;
  }
};

}  // namespace tierkv

#endif  // TIERKV_MODEL_SPARSE_PLAN_H_
