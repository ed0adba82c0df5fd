#include "kernels/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace tierkv::kernels {
namespace {

constexpr int64_t kB = kSparseBlock;

int64_t RowBlocks(const SparseShape& s) { return (s.num_queries + kB - 1) / kB; }
// Positions of the first and last query of row block r.
int64_t FirstPos(const SparseShape& s, int64_t r) { return s.query_position + r * kB; }
int64_t LastPos(const SparseShape& s, int64_t r) {
  return s.query_position + std::min(s.num_queries, (r + 1) * kB) - 1;
}

const float* QRow(const AttentionParams& p, int64_t row, int head) {
  return p.q + row * p.ldq + static_cast<int64_t>(head) * p.head_dim;
}
const float* KRow(const AttentionParams& p, int64_t key, int kv_head) {
  return p.k + key * p.ldkv + static_cast<int64_t>(kv_head) * p.head_dim;
}
const float* VRow(const AttentionParams& p, int64_t key, int kv_head) {
  return p.v + key * p.ldkv + static_cast<int64_t>(kv_head) * p.head_dim;
}
float Dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(s);
}

absl::Status CheckHead(const AttentionParams& p, int head) {
  if (absl::Status s = ValidateAttentionParams(p); !s.ok()) return s;
  if (head < 0 || head >= p.num_q_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("head ", head, " outside [0, ", p.num_q_heads, ")"));
  }
  if (p.sliding_window != 0) {
    return absl::InvalidArgumentError("sparse attention does not combine with sliding_window");
  }
  return absl::OkStatus();
}

SparseShape ShapeOf(const AttentionParams& p) { return {p.num_queries, p.query_position}; }

// The selection order of every top-k here: higher value first, equal values (-0 and +0
// included) by lower index, NaN after every number (NaNs among themselves by index).
bool Better(float va, int64_t a, float vb, int64_t b) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return nb;
  if (!na && va != vb) return va > vb;
  return a < b;
}

}  // namespace

absl::Status ValidateSparseIndex(const SparseHeadIndex& index, const SparseShape& shape) {
  const int64_t rows = RowBlocks(shape);
  if (static_cast<int64_t>(index.block_begin.size()) != rows + 1 ||
      static_cast<int64_t>(index.column_begin.size()) != rows + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index has ", index.block_begin.size(), " block offsets and ", index.column_begin.size(),
        " column offsets; ", rows, " row blocks need ", rows + 1, " of each"));
  }
  if (index.block_begin[0] != 0 || index.column_begin[0] != 0 ||
      index.block_begin[rows] != static_cast<int64_t>(index.blocks.size()) ||
      index.column_begin[rows] != static_cast<int64_t>(index.columns.size())) {
    return absl::InvalidArgumentError("index offsets do not span its block and column lists");
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (index.block_begin[r + 1] < index.block_begin[r] ||
        index.column_begin[r + 1] < index.column_begin[r]) {
      return absl::InvalidArgumentError(absl::StrCat("row block ", r, ": offsets decrease"));
    }
    const int64_t last = LastPos(shape, r);
    const int64_t diagonal = last / kB;
    // A row block starting inside a key block (query_position not a multiple of 64) spans
    // two: its first rows' own keys lie in the first.
    const int64_t first_diagonal = FirstPos(shape, r) / kB;
    bool has_diagonal = false, has_first = false;
    int64_t previous = -1;
    for (int32_t b : index.BlocksOf(r)) {
      if (b <= previous || b < 0 || b > diagonal) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row block ", r, ": key block ", b, " is out of order or after its last key block ",
            diagonal));
      }
      has_diagonal = has_diagonal || b == diagonal;
      has_first = has_first || b == first_diagonal;
      previous = b;
    }
    if (!has_diagonal) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row block ", r, ": its diagonal key block ", diagonal, " is missing"));
    }
    if (!has_first) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row block ", r, ": key block ", first_diagonal, ", which holds its first rows' own "
          "keys, is missing"));
    }
    const auto blocks = index.BlocksOf(r);
    previous = -1;
    for (int32_t c : index.ColumnsOf(r)) {
      if (c <= previous || c < 0 || c > last) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row block ", r, ": column ", c, " is out of order or after position ", last));
      }
      if (std::binary_search(blocks.begin(), blocks.end(), static_cast<int32_t>(c / kB))) {
        return absl::InvalidArgumentError(
            absl::StrCat("row block ", r, ": column ", c, " lies in a listed block"));
      }
      previous = c;
    }
  }
  return absl::OkStatus();
}

double CoveredFraction(const SparseHeadIndex& index, const SparseShape& shape) {
  double covered = 0, total = 0;
  for (int64_t r = 0; r < index.num_row_blocks(); ++r) {
    for (int64_t pos = FirstPos(shape, r); pos <= LastPos(shape, r); ++pos) {
      total += static_cast<double>(pos + 1);
      for (int32_t b : index.BlocksOf(r)) {
        const int64_t lo = static_cast<int64_t>(b) * kB;
        covered += static_cast<double>(std::max<int64_t>(0, std::min(pos + 1, lo + kB) - lo));
      }
      for (int32_t c : index.ColumnsOf(r)) covered += c <= pos ? 1 : 0;
    }
  }
  return total == 0 ? 0 : covered / total;
}

SparseHeadIndex FullIndex(const SparseShape& shape) {
  SparseHeadIndex index;
  index.block_begin.push_back(0);
  index.column_begin.push_back(0);
  for (int64_t r = 0; r < RowBlocks(shape); ++r) {
    for (int64_t b = 0; b <= LastPos(shape, r) / kB; ++b) {
      index.blocks.push_back(static_cast<int32_t>(b));
    }
    index.block_begin.push_back(static_cast<int64_t>(index.blocks.size()));
    index.column_begin.push_back(0);
  }
  return index;
}

absl::StatusOr<SparseHeadIndex> AShapeIndex(const SparseShape& shape, const AShapeParams& params) {
  if (params.n_init < 0 || params.local < 1) {
    return absl::InvalidArgumentError(absl::StrCat("A-shape: n_init ", params.n_init,
                                                   " must be >= 0 and local ", params.local,
                                                   " >= 1"));
  }
  SparseHeadIndex index;
  index.block_begin.push_back(0);
  index.column_begin.push_back(0);
  for (int64_t r = 0; r < RowBlocks(shape); ++r) {
    const int64_t first = FirstPos(shape, r), last = LastPos(shape, r);
    const int64_t diagonal = last / kB;
    // Keys [0, n_init) and (first - local, last]: the union of every row's keys.
    const int64_t init_end = std::min(params.n_init, last + 1);  // Exclusive.
    const int64_t local_begin = std::max<int64_t>(0, first - params.local + 1);
    for (int64_t b = 0; b <= diagonal; ++b) {
      const int64_t lo = b * kB, hi = lo + kB;  // [lo, hi)
      const bool init = lo < init_end;
      const bool local = hi > local_begin;
      if (init || local) index.blocks.push_back(static_cast<int32_t>(b));
    }
    index.block_begin.push_back(static_cast<int64_t>(index.blocks.size()));
    index.column_begin.push_back(0);
  }
  return index;
}

absl::StatusOr<AttentionMass> EstimateAttentionMass(const AttentionParams& p, int head,
                                                    int64_t last_q) {
  if (absl::Status s = CheckHead(p, head); !s.ok()) return s;
  if (last_q < 1 || last_q > p.num_queries) {
    return absl::InvalidArgumentError(absl::StrCat("last_q ", last_q, " outside [1, ",
                                                   p.num_queries, "] queries of the call"));
  }
  const int kv_head = head / (p.num_q_heads / p.num_kv_heads);
  const int64_t end = p.query_position + p.num_queries;  // Keys visible to the last query.
  AttentionMass mass;
  mass.per_key.assign(end, 0.0f);
  mass.per_distance.assign(end, 0.0f);
  std::vector<double> per_key(end, 0.0), per_distance(end, 0.0);
  std::vector<double> scores(end);
  for (int64_t row = p.num_queries - last_q; row < p.num_queries; ++row) {
    const int64_t pos = p.query_position + row;
    const float* q = QRow(p, row, head);
    double max_score = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j <= pos; ++j) {
      scores[j] = static_cast<double>(p.scale) * Dot(q, KRow(p, j, kv_head), p.head_dim);
      max_score = std::max(max_score, scores[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j <= pos; ++j) sum += std::exp(scores[j] - max_score);
    for (int64_t j = 0; j <= pos; ++j) {
      const double a = std::exp(scores[j] - max_score) / sum;
      per_key[j] += a;
      per_distance[pos - j] += a;
    }
  }
  for (int64_t j = 0; j < end; ++j) {
    mass.per_key[j] = static_cast<float>(per_key[j]);
    mass.per_distance[j] = static_cast<float>(per_distance[j]);
  }
  return mass;
}

std::vector<int32_t> TopIndices(std::span<const float> values, int64_t count, int64_t keep) {
  const int64_t n = static_cast<int64_t>(values.size());
  count = std::clamp<int64_t>(count, 0, n);
  keep = std::clamp<int64_t>(keep, 0, count);
  std::vector<int32_t> out;
  out.reserve(count);
  for (int64_t i = 0; i < keep; ++i) out.push_back(static_cast<int32_t>(i));
  std::vector<int32_t> rest(n - keep);
  std::iota(rest.begin(), rest.end(), static_cast<int32_t>(keep));
  const int64_t more = count - keep;
  auto better = [&](int32_t a, int32_t b) { return Better(values[a], a, values[b], b); };
  std::partial_sort(rest.begin(), rest.begin() + more, rest.end(), better);
  out.insert(out.end(), rest.begin(), rest.begin() + more);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<SparseHeadIndex> VerticalSlashIndex(const SparseShape& shape,
                                                   std::span<const int32_t> verticals,
                                                   std::span<const int32_t> slashes) {
  const int64_t keys = shape.query_position + shape.num_queries;
  for (int32_t v : verticals) {
    if (v < 0 || v >= keys) {
      return absl::InvalidArgumentError(absl::StrCat("vertical ", v, " outside [0, ", keys, ")"));
    }
  }
  for (int32_t d : slashes) {
    if (d < 0 || d >= keys) {
      return absl::InvalidArgumentError(absl::StrCat("slash ", d, " outside [0, ", keys, ")"));
    }
  }
  std::vector<int32_t> sorted_verticals(verticals.begin(), verticals.end());
  std::sort(sorted_verticals.begin(), sorted_verticals.end());
  sorted_verticals.erase(std::unique(sorted_verticals.begin(), sorted_verticals.end()),
                         sorted_verticals.end());
  SparseHeadIndex index;
  index.block_begin.push_back(0);
  index.column_begin.push_back(0);
  std::vector<uint8_t> hit;
  for (int64_t r = 0; r < RowBlocks(shape); ++r) {
    const int64_t first = FirstPos(shape, r), last = LastPos(shape, r);
    const int64_t diagonal = last / kB;
    hit.assign(diagonal + 1, 0);
    // Distance d reaches keys [first - d, last - d] from this row block's rows.
    for (int32_t d : slashes) {
      const int64_t hi = last - d;
      if (hi < 0) continue;
      const int64_t lo = std::max<int64_t>(0, first - d);
      for (int64_t b = lo / kB; b <= hi / kB; ++b) hit[b] = 1;
    }
    hit[diagonal] = 1;  // A query always sees itself (both blocks its rows' keys lie in).
    hit[first / kB] = 1;
    for (int64_t b = 0; b <= diagonal; ++b) {
      if (hit[b]) index.blocks.push_back(static_cast<int32_t>(b));
    }
    for (int32_t v : sorted_verticals) {
      if (v > last) break;
      if (!hit[v / kB]) index.columns.push_back(v);
    }
    index.block_begin.push_back(static_cast<int64_t>(index.blocks.size()));
    index.column_begin.push_back(static_cast<int64_t>(index.columns.size()));
  }
  return index;
}

absl::StatusOr<SparseHeadIndex> BuildVerticalSlashIndex(const AttentionParams& p, int head,
                                                        const VerticalSlashParams& params) {
  if (params.vertical < 0 || params.slash < 1 || params.keep_first < 0 || params.keep_near < 1) {
    return absl::InvalidArgumentError(
        "vertical-slash: budgets must be vertical >= 0, slash >= 1, keep_first >= 0, "
        "keep_near >= 1");
  }
  absl::StatusOr<AttentionMass> mass =
      EstimateAttentionMass(p, head, std::min(params.last_q, p.num_queries));
  if (!mass.ok()) return mass.status();
  const std::vector<int32_t> verticals =
      TopIndices(mass->per_key, params.vertical, params.keep_first);
  const std::vector<int32_t> slashes =
      TopIndices(mass->per_distance, params.slash, params.keep_near);
  return VerticalSlashIndex(ShapeOf(p), verticals, slashes);
}

absl::StatusOr<std::vector<float>> PooledBlockScores(const AttentionParams& p, int head) {
  if (absl::Status s = CheckHead(p, head); !s.ok()) return s;
  const SparseShape shape = ShapeOf(p);
  const int64_t rows = RowBlocks(shape);
  const int64_t keys = shape.query_position + shape.num_queries;
  const int64_t key_blocks = (keys + kB - 1) / kB;
  const int kv_head = head / (p.num_q_heads / p.num_kv_heads);
  const int d = p.head_dim;
  // Every step is one fp32 operation rounded to nearest, in a fixed order, with the
  // multiply-adds explicit (std::fma) and nothing left to the compiler to contract: the GPU
  // builder (kernels/cuda BuildBlockSparseIndex) performs the same operations and gets the
  // same bits, which is what lets it select the same blocks.
  auto mean = [d](auto row_of, int64_t n, float* out) {
    for (int e = 0; e < d; ++e) {
      float s = 0.0f;
      for (int64_t i = 0; i < n; ++i) s += row_of(i)[e];
      out[e] = s / static_cast<float>(n);
    }
  };
  std::vector<float> qbar(rows * d), kbar(key_blocks * d);
  for (int64_t r = 0; r < rows; ++r) {
    mean([&](int64_t i) { return QRow(p, r * kB + i, head); },
         std::min(p.num_queries, (r + 1) * kB) - r * kB, &qbar[r * d]);
  }
  for (int64_t b = 0; b < key_blocks; ++b) {
    mean([&](int64_t i) { return KRow(p, b * kB + i, kv_head); },
         std::min(keys, (b + 1) * kB) - b * kB, &kbar[b * d]);
  }
  std::vector<float> scores(rows * key_blocks, -std::numeric_limits<float>::infinity());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t diagonal = LastPos(shape, r) / kB;
    const float* qr = &qbar[r * d];
    for (int64_t b = 0; b <= diagonal; ++b) {
      const float* kb = &kbar[b * d];
      float dot = 0.0f;
      for (int e = 0; e < d; ++e) dot = std::fma(qr[e], kb[e], dot);
      scores[r * key_blocks + b] = p.scale * dot;
    }
  }
  return scores;
}

absl::StatusOr<SparseHeadIndex> BuildBlockSparseIndex(const AttentionParams& p, int head,
                                                      const BlockSparseParams& params) {
  if (params.top_blocks < 1) {
    return absl::InvalidArgumentError("block-sparse: top_blocks must be at least 1");
  }
  absl::StatusOr<std::vector<float>> scores = PooledBlockScores(p, head);
  if (!scores.ok()) return scores.status();
  const SparseShape shape = ShapeOf(p);
  const int64_t rows = RowBlocks(shape);
  const int64_t key_blocks = (shape.query_position + shape.num_queries + kB - 1) / kB;
  SparseHeadIndex index;
  index.block_begin.push_back(0);
  index.column_begin.push_back(0);
  std::vector<int32_t> others;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t diagonal = LastPos(shape, r) / kB;
    const int64_t first_block = FirstPos(shape, r) / kB;
    const int64_t forced = first_block == diagonal ? 1 : 2;
    const int64_t budget = std::min(std::max(params.top_blocks, forced), diagonal + 1);
    // The blocks of the row block's own positions are in whatever the scores say (not as
    // +infinity scores, which an overflowing score would tie with); the rest of the budget
    // goes to the best of the other visible blocks.
    const float* row = scores->data() + r * key_blocks;
    others.clear();
    for (int64_t b = 0; b <= diagonal; ++b) {
      if (b != first_block && b != diagonal) others.push_back(static_cast<int32_t>(b));
    }
    const int64_t more = budget - forced;
    std::partial_sort(others.begin(), others.begin() + more, others.end(),
                      [row](int32_t a, int32_t b) { return Better(row[a], a, row[b], b); });
    others.resize(more);
    others.push_back(static_cast<int32_t>(first_block));
    if (forced == 2) others.push_back(static_cast<int32_t>(diagonal));
    std::sort(others.begin(), others.end());
    index.blocks.insert(index.blocks.end(), others.begin(), others.end());
    index.block_begin.push_back(static_cast<int64_t>(index.blocks.size()));
    index.column_begin.push_back(0);
  }
  return index;
}

std::string_view SparsePatternName(SparsePattern pattern) {
  switch (pattern) {
    case SparsePattern::kDense:
      return "dense";
    case SparsePattern::kAShape:
      return "a_shape";
    case SparsePattern::kVerticalSlash:
      return "vertical_slash";
    case SparsePattern::kBlockSparse:
      return "block_sparse";
  }
  return "unknown";
}

absl::StatusOr<SparsePattern> ParseSparsePattern(std::string_view name) {
  for (SparsePattern p : {SparsePattern::kDense, SparsePattern::kAShape,
                          SparsePattern::kVerticalSlash, SparsePattern::kBlockSparse}) {
    if (name == SparsePatternName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown pattern \"", std::string(name), "\"; one of dense, a_shape, vertical_slash, block_sparse"));
}

absl::StatusOr<SparseHeadIndex> BuildIndex(const AttentionParams& p, int head,
                                           const HeadPattern& pattern) {
  switch (pattern.pattern) {
    case SparsePattern::kDense:
      if (absl::Status s = CheckHead(p, head); !s.ok()) return s;
      return FullIndex(ShapeOf(p));
    case SparsePattern::kAShape:
      if (absl::Status s = CheckHead(p, head); !s.ok()) return s;
      return AShapeIndex(ShapeOf(p), pattern.a_shape);
    case SparsePattern::kVerticalSlash:
      return BuildVerticalSlashIndex(p, head, pattern.vertical_slash);
    case SparsePattern::kBlockSparse:
      return BuildBlockSparseIndex(p, head, pattern.block_sparse);
  }
  return absl::InvalidArgumentError("unknown pattern");
}

absl::Status SparseAttention(const AttentionParams& p, std::span<const SparseHeadIndex> index,
                             ThreadPool* pool) {
  if (absl::Status s = ValidateAttentionParams(p); !s.ok()) return s;
  if (p.kt != nullptr || p.sliding_window != 0) {
    return absl::InvalidArgumentError(
        "sparse attention takes neither transposed keys nor a sliding window");
  }
  if (static_cast<int64_t>(index.size()) != p.num_q_heads) {
    return absl::InvalidArgumentError(absl::StrCat(index.size(), " indices for ",
                                                   p.num_q_heads, " query heads"));
  }
  const SparseShape shape = ShapeOf(p);
  for (int h = 0; h < p.num_q_heads; ++h) {
    if (absl::Status s = ValidateSparseIndex(index[h], shape); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("head ", h, ": ", s.message()));
    }
  }
  const int64_t rows = RowBlocks(shape);
  const int group = p.num_q_heads / p.num_kv_heads;
  ParallelFor(pool, rows * p.num_q_heads, [&](int64_t task) {
    const int h = static_cast<int>(task % p.num_q_heads);
    const int64_t r = task / p.num_q_heads;
    const int kv_head = h / group;
    const SparseHeadIndex& ix = index[h];
    std::vector<int64_t> keys;
    for (int32_t b : ix.BlocksOf(r)) {
      for (int64_t j = static_cast<int64_t>(b) * kB; j < (b + 1) * kB; ++j) keys.push_back(j);
    }
    for (int32_t c : ix.ColumnsOf(r)) keys.push_back(c);
    std::vector<double> scores(keys.size());
    std::vector<double> acc(p.head_dim);
    for (int64_t row = r * kB; row < std::min(p.num_queries, (r + 1) * kB); ++row) {
      const int64_t pos = p.query_position + row;
      const float* q = QRow(p, row, h);
      double max_score = -std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i] > pos) continue;
        scores[i] = static_cast<double>(p.scale) * Dot(q, KRow(p, keys[i], kv_head), p.head_dim);
        max_score = std::max(max_score, scores[i]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = 0;
      for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i] > pos) continue;
        const double w = std::exp(scores[i] - max_score);
        sum += w;
        const float* v = VRow(p, keys[i], kv_head);
        for (int e = 0; e < p.head_dim; ++e) acc[e] += w * v[e];
      }
      float* out = p.out + row * p.ldo + static_cast<int64_t>(h) * p.head_dim;
      for (int e = 0; e < p.head_dim; ++e) out[e] = static_cast<float>(acc[e] / sum);
    }
  });
  return absl::OkStatus();
}

}  // namespace tierkv::kernels
