// The sparse prefill reference: index validation, the three index shapes (exact lists on
// small cases and coverage properties by brute force), deterministic top-k, sparse attention
// equal to dense over the full index (also after a cached prefix), and on inputs with planted
// vertical and slash structure the recovered attention mass and output error, bounded.
#include "kernels/sparse_attention.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tierkv::kernels {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Problem {
  int64_t num_queries = 0, query_position = 0;
  int num_q_heads = 2, num_kv_heads = 1, head_dim = 32;
  std::vector<float> q, k, v, out;
  AttentionParams Params() {
    AttentionParams p;
    const int64_t keys = query_position + num_queries;
    p.q = q.data();
    p.ldq = static_cast<int64_t>(num_q_heads) * head_dim;
    p.k = k.data();
    p.v = v.data();
    p.ldkv = static_cast<int64_t>(num_kv_heads) * head_dim;
    p.out = out.data();
    p.ldo = p.ldq;
    p.num_queries = num_queries;
    p.query_position = query_position;
    p.num_keys = keys;
    p.num_q_heads = num_q_heads;
    p.num_kv_heads = num_kv_heads;
    p.head_dim = head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    return p;
  }
};

Problem RandomProblem(int64_t nq, int64_t qp, int qh, int kvh, int d, uint64_t seed) {
  Problem pr;
  pr.num_queries = nq;
  pr.query_position = qp;
  pr.num_q_heads = qh;
  pr.num_kv_heads = kvh;
  pr.head_dim = d;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int64_t keys = qp + nq;
  pr.q.resize(nq * qh * d);
  pr.k.resize(keys * kvh * d);
  pr.v.resize(keys * kvh * d);
  for (auto& x : pr.q) x = n(rng);
  for (auto& x : pr.k) x = n(rng);
  for (auto& x : pr.v) x = n(rng);
  pr.out.assign(nq * qh * d, std::numeric_limits<float>::quiet_NaN());
  return pr;
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    num += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

std::vector<SparseHeadIndex> Repeat(const SparseHeadIndex& index, int heads) {
  return std::vector<SparseHeadIndex>(heads, index);
}

TEST(SparseAttention, FullIndexEqualsDenseAlsoAfterACachedPrefix) {
  for (const auto& [nq, qp] : {std::pair<int64_t, int64_t>{200, 0}, {150, 130}, {64, 64}, {1, 77}}) {
    SCOPED_TRACE(testing::Message() << "queries " << nq << " at " << qp);
    Problem pr = RandomProblem(nq, qp, 4, 2, 32, 11 + nq);
    AttentionParams p = pr.Params();
    std::vector<float> dense(pr.out.size(), std::numeric_limits<float>::quiet_NaN());
    AttentionParams pd = p;
    pd.out = dense.data();
    ASSERT_TRUE(Attention(pd, nullptr).ok());
    const SparseHeadIndex full = FullIndex({nq, qp});
    ASSERT_TRUE(ValidateSparseIndex(full, {nq, qp}).ok());
    EXPECT_DOUBLE_EQ(CoveredFraction(full, {nq, qp}), 1.0);
    ASSERT_TRUE(SparseAttention(p, Repeat(full, 4), nullptr).ok());
    EXPECT_LT(RelativeError(pr.out, dense), 1e-5);
  }
}

TEST(SparseAttention, BadIndicesAreRefusedWithTheReason) {
  const SparseShape shape{130, 0};  // Row blocks 0..2; the last holds rows 128, 129.
  SparseHeadIndex ok = FullIndex(shape);
  ASSERT_TRUE(ValidateSparseIndex(ok, shape).ok());

  SparseHeadIndex no_diagonal = ok;
  no_diagonal.blocks = {0, 0, 1, 0, 1};  // Row block 1 lists 0 and... wrong shape below.
  no_diagonal.block_begin = {0, 1, 2, 4};
  no_diagonal.blocks = {0, 0, 0, 1};
  absl::Status s = ValidateSparseIndex(no_diagonal, shape);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("diagonal"));

  SparseHeadIndex late = ok;
  late.blocks[0] = 1;  // Row block 0 cannot see key block 1.
  EXPECT_THAT(ValidateSparseIndex(late, shape).message(), HasSubstr("after its last"));

  SparseHeadIndex column_in_block = ok;
  column_in_block.columns = {5};
  column_in_block.column_begin = {0, 0, 1, 1};
  EXPECT_THAT(ValidateSparseIndex(column_in_block, shape).message(), HasSubstr("listed block"));

  SparseHeadIndex short_offsets = ok;
  short_offsets.block_begin.pop_back();
  EXPECT_THAT(ValidateSparseIndex(short_offsets, shape).message(), HasSubstr("row blocks"));

  // SparseAttention refuses them too, naming the head, and writes nothing.
  Problem pr = RandomProblem(130, 0, 2, 1, 32, 3);
  std::vector<SparseHeadIndex> heads = {ok, late};
  s = SparseAttention(pr.Params(), heads, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("head 1"));
  EXPECT_TRUE(std::isnan(pr.out[0]));
}

// A call resuming at a position inside a key block: each row block spans two key blocks,
// and both must be listed (the first rows see themselves in the first).
TEST(SparseAttention, RowBlocksStartingInsideAKeyBlockNeedBothOwnBlocks) {
  const SparseShape shape{200, 32};  // Row block 0: positions 32..95, key blocks 0 and 1.
  SparseHeadIndex diagonal_only = FullIndex(shape);
  diagonal_only.blocks.erase(diagonal_only.blocks.begin());  // Row block 0 loses block 0.
  for (size_t i = 1; i < diagonal_only.block_begin.size(); ++i) --diagonal_only.block_begin[i];
  EXPECT_THAT(ValidateSparseIndex(diagonal_only, shape).message(),
              HasSubstr("first rows' own keys"));
  // Every builder lists both, even block-sparse with a budget of one block.
  Problem pr = RandomProblem(200, 32, 2, 1, 32, 12);
  auto ix = BuildBlockSparseIndex(pr.Params(), 0, {1});
  ASSERT_TRUE(ix.ok()) << ix.status();
  EXPECT_TRUE(ValidateSparseIndex(*ix, shape).ok());
  EXPECT_THAT(ix->BlocksOf(0), ElementsAre(0, 1));
  const std::vector<int32_t> far = {150}, none = {100};  // No slash reaches a row's own key.
  auto vs = VerticalSlashIndex(shape, none, far);
  ASSERT_TRUE(vs.ok());
  EXPECT_TRUE(ValidateSparseIndex(*vs, shape).ok());
  // And sparse attention over such an index has no row without keys (no NaN).
  ASSERT_TRUE(SparseAttention(pr.Params(), Repeat(*ix, 2), nullptr).ok());
  for (float x : pr.out) ASSERT_FALSE(std::isnan(x));
}

TEST(SparseAttention, PatternNamesRoundTripAndDenseIsTheFullIndex) {
  for (SparsePattern p : {SparsePattern::kDense, SparsePattern::kAShape,
                          SparsePattern::kVerticalSlash, SparsePattern::kBlockSparse}) {
    auto parsed = ParseSparsePattern(SparsePatternName(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, p);
  }
  EXPECT_THAT(ParseSparsePattern("diagonal").status().message(), HasSubstr("a_shape"));
  Problem pr = RandomProblem(100, 30, 2, 1, 32, 4);
  HeadPattern dense;
  dense.pattern = SparsePattern::kDense;
  auto index = BuildIndex(pr.Params(), 1, dense);
  ASSERT_TRUE(index.ok());
  const SparseHeadIndex full = FullIndex({100, 30});
  EXPECT_EQ(index->blocks, full.blocks);
  EXPECT_EQ(index->block_begin, full.block_begin);
}

TEST(SparseAttention, TopIndicesIsDeterministic) {
  const std::vector<float> v = {0.5f, 2.0f, 2.0f, std::nanf(""), 1.0f, 2.0f, -1.0f};
  EXPECT_THAT(TopIndices(v, 3, 0), ElementsAre(1, 2, 5));  // Ties: lower index first.
  EXPECT_THAT(TopIndices(v, 3, 1), ElementsAre(0, 1, 2));  // Index 0 forced.
  EXPECT_THAT(TopIndices(v, 7, 0), ElementsAre(0, 1, 2, 3, 4, 5, 6));
  EXPECT_THAT(TopIndices(v, 6, 0), ElementsAre(0, 1, 2, 4, 5, 6));  // NaN last.
  EXPECT_THAT(TopIndices(v, 100, 2).size(), 7u);
}

// Keys a row at `pos` needs under A-shape.
bool AShapeNeeds(int64_t pos, int64_t key, const AShapeParams& a) {
  return key <= pos && (key < a.n_init || pos - key < a.local);
}

TEST(SparseAttention, AShapeIndexCoversExactlyTheBlocksItsRowsNeed) {
  const AShapeParams a{128, 128};
  const SparseShape shape{640, 0};
  auto index = AShapeIndex(shape, a);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_TRUE(ValidateSparseIndex(*index, shape).ok());
  // Row block 5 (positions 320..383): init blocks 0, 1; local keys from 193: blocks 3..5.
  EXPECT_THAT(index->BlocksOf(5), ElementsAre(0, 1, 3, 4, 5));
  EXPECT_THAT(index->BlocksOf(0), ElementsAre(0));
  for (const SparseShape s : {SparseShape{640, 0}, SparseShape{300, 1000}}) {
    auto ix = AShapeIndex(s, {100, 300});
    ASSERT_TRUE(ix.ok());
    ASSERT_TRUE(ValidateSparseIndex(*ix, s).ok());
    for (int64_t r = 0; r < ix->num_row_blocks(); ++r) {
      const auto blocks = ix->BlocksOf(r);
      std::set<int64_t> listed(blocks.begin(), blocks.end());
      std::set<int64_t> needed;
      for (int64_t row = r * 64; row < std::min(s.num_queries, r * 64 + 64); ++row) {
        const int64_t pos = s.query_position + row;
        for (int64_t key = 0; key <= pos; ++key) {
          if (AShapeNeeds(pos, key, {100, 300})) needed.insert(key / 64);
        }
      }
      EXPECT_EQ(listed, needed) << "row block " << r;
    }
  }
  EXPECT_EQ(AShapeIndex(shape, {0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SparseAttention, VerticalSlashIndexHoldsWhatItsLinesReach) {
  const SparseShape shape{256, 64};  // Positions 64..319, keys 0..319.
  const std::vector<int32_t> verticals = {3, 70, 200, 300};
  const std::vector<int32_t> slashes = {0, 1, 130};
  auto index = VerticalSlashIndex(shape, verticals, slashes);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_TRUE(ValidateSparseIndex(*index, shape).ok());
  // Row block 0: positions 64..127. Distances 0, 1 reach keys 63..127 (blocks 0, 1);
  // distance 130 reaches nothing (127 - 130 < 0). Verticals it sees: 3 and 70, in blocks.
  EXPECT_THAT(index->BlocksOf(0), ElementsAre(0, 1));
  EXPECT_THAT(index->ColumnsOf(0), ElementsAre());
  // Row block 2: positions 192..255. Distances 0, 1: keys 191..255 (blocks 2, 3); 130: keys
  // 62..125 (blocks 0, 1). Vertical 200 is in block 3; 3 and 70 in blocks 0, 1.
  EXPECT_THAT(index->BlocksOf(2), ElementsAre(0, 1, 2, 3));
  // Row block 3: positions 256..319; distance 130 reaches 126..189 (blocks 1, 2).
  EXPECT_THAT(index->BlocksOf(3), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(index->ColumnsOf(3), ElementsAre(3));
  // Brute force on a longer shape: every (row, line) key is covered, and every listed block
  // is the diagonal or reached by a slash from some row of its block.
  const SparseShape big{1000, 300};
  std::vector<int32_t> v2 = {0, 1, 2, 500, 777, 1200}, s2 = {0, 5, 64, 65, 300, 999};
  auto ix = VerticalSlashIndex(big, v2, s2);
  ASSERT_TRUE(ix.ok());
  ASSERT_TRUE(ValidateSparseIndex(*ix, big).ok());
  for (int64_t r = 0; r < ix->num_row_blocks(); ++r) {
    const auto blocks = ix->BlocksOf(r);
    const auto columns = ix->ColumnsOf(r);
    auto covered = [&](int64_t key) {
      return std::binary_search(blocks.begin(), blocks.end(), static_cast<int32_t>(key / 64)) ||
             std::binary_search(columns.begin(), columns.end(), static_cast<int32_t>(key));
    };
    std::set<int64_t> reached;
    const int64_t first = big.query_position + r * 64;
    const int64_t last = big.query_position + std::min(big.num_queries, r * 64 + 64) - 1;
    reached.insert(last / 64);
    for (int64_t pos = first; pos <= last; ++pos) {
      for (int32_t v : v2) {
        if (v <= pos) {
          EXPECT_TRUE(covered(v)) << "row block " << r << " vertical " << v;
        }
      }
      for (int32_t d : s2) {
        if (pos - d >= 0) {
          EXPECT_TRUE(covered(pos - d)) << "row block " << r << " slash " << d;
          reached.insert((pos - d) / 64);
        }
      }
    }
    EXPECT_EQ(std::set<int64_t>(blocks.begin(), blocks.end()), reached) << "row block " << r;
  }
  const std::vector<int32_t> outside = {400}, zero = {0};
  EXPECT_EQ(VerticalSlashIndex(shape, outside, zero).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Queries and keys whose attention concentrates as long-context heads' does: on sink keys,
// on a few planted columns, and on a local band (rotary-style positions).
Problem PlantedProblem(int64_t n, const std::vector<int64_t>& planted, uint64_t seed) {
  Problem pr = RandomProblem(n, 0, 1, 1, 64, seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  const int d = 64;
  for (int64_t i = 0; i < n; ++i) {
    float* q = &pr.q[i * d];
    float* k = &pr.k[i * d];
    for (int e = 0; e < d; ++e) q[e] = noise(rng), k[e] = noise(rng);
    // Dimension 0: a shared direction; sinks and planted keys point along it (10 nats above
    // other keys after the 1/8 scale).
    q[0] = 8.0f;
    const bool special = i < 4 || std::find(planted.begin(), planted.end(), i) != planted.end();
    k[0] = special ? 10.0f : 0.0f;
    // Dimensions 2..33: 16 rotary frequencies from 1 down to 0.05 rad a token; q_i . k_j
    // sums 5 cos(theta_m (i - j)): 10 nats at distance 0, out of phase within tens of tokens.
    for (int m = 0; m < 16; ++m) {
      const double theta = std::pow(0.05, static_cast<double>(m) / 15.0);
      q[2 + 2 * m] = static_cast<float>(2.2360680 * std::cos(theta * i));
      q[3 + 2 * m] = static_cast<float>(2.2360680 * std::sin(theta * i));
      k[2 + 2 * m] = static_cast<float>(2.2360680 * std::cos(theta * i));
      k[3 + 2 * m] = static_cast<float>(2.2360680 * std::sin(theta * i));
    }
  }
  return pr;
}

class PlantedVerticalSlash : public ::testing::TestWithParam<uint64_t> {};

TEST_P(PlantedVerticalSlash, StructureIsRecovered) {
  const int64_t n = 2048;
  const std::vector<int64_t> planted = {517, 1200, 1777};
  Problem pr = PlantedProblem(n, planted, GetParam());
  AttentionParams p = pr.Params();
  VerticalSlashParams vs;
  vs.vertical = 32;
  vs.slash = 48;
  vs.keep_first = 4;
  vs.keep_near = 16;
  auto index = BuildVerticalSlashIndex(p, 0, vs);
  ASSERT_TRUE(index.ok()) << index.status();
  const SparseShape shape{n, 0};
  ASSERT_TRUE(ValidateSparseIndex(*index, shape).ok());
  auto mass = EstimateAttentionMass(p, 0, 64);
  ASSERT_TRUE(mass.ok());
  const std::vector<int32_t> verticals = TopIndices(mass->per_key, vs.vertical, vs.keep_first);
  for (int64_t c : planted) {
    EXPECT_TRUE(std::binary_search(verticals.begin(), verticals.end(), c)) << "column " << c;
  }
  // Attention mass recovered: over every query, the dense softmax weight on covered keys.
  std::vector<float> dense(pr.out.size());
  AttentionParams pd = p;
  pd.out = dense.data();
  ASSERT_TRUE(Attention(pd, nullptr).ok());
  double recovered = 0;
  for (int64_t row = 0; row < n; ++row) {
    const int64_t r = row / 64;
    const auto blocks = index->BlocksOf(r);
    const auto columns = index->ColumnsOf(r);
    std::vector<double> s(row + 1);
    double mx = -1e300, sum = 0, in = 0;
    for (int64_t j = 0; j <= row; ++j) {
      double dot = 0;
      for (int e = 0; e < 64; ++e) dot += pr.q[row * 64 + e] * static_cast<double>(pr.k[j * 64 + e]);
      s[j] = dot * p.scale;
      mx = std::max(mx, s[j]);
    }
    for (int64_t j = 0; j <= row; ++j) {
      const double w = std::exp(s[j] - mx);
      sum += w;
      const bool cov =
          std::binary_search(blocks.begin(), blocks.end(), static_cast<int32_t>(j / 64)) ||
          std::binary_search(columns.begin(), columns.end(), static_cast<int32_t>(j));
      if (cov) in += w;
    }
    recovered += in / sum;
  }
  recovered /= static_cast<double>(n);
  ASSERT_TRUE(SparseAttention(p, Repeat(*index, 1), nullptr).ok());
  const double error = RelativeError(pr.out, dense);
  const double work = CoveredFraction(*index, shape);
  std::printf("planted vertical-slash, %lld tokens: %.4f of the attention mass recovered with "
              "%.3f of the causal work; output relative error %.4f\n",
              static_cast<long long>(n), recovered, work, error);
  EXPECT_GT(recovered, 0.95);
  EXPECT_LT(error, 0.06);
  EXPECT_LT(work, 0.4);
}

INSTANTIATE_TEST_SUITE_P(Seeds, PlantedVerticalSlash, ::testing::Values(5, 6, 7));

TEST(SparseAttention, BlockSparseKeepsTheDiagonalAndThePlantedBlock) {
  const int64_t n = 1024;
  Problem pr = RandomProblem(n, 0, 2, 1, 32, 9);
  // Every query of row block 12 points along dimension 0; so do the keys of block 3 only.
  for (int64_t row = 12 * 64; row < 13 * 64; ++row) {
    for (int h = 0; h < 2; ++h) pr.q[(row * 2 + h) * 32] = 6.0f;
  }
  for (int64_t j = 3 * 64; j < 4 * 64; ++j) pr.k[j * 32] = 6.0f;
  AttentionParams p = pr.Params();
  auto index = BuildBlockSparseIndex(p, 1, {3});
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_TRUE(ValidateSparseIndex(*index, {n, 0}).ok());
  const auto b12 = index->BlocksOf(12);
  EXPECT_EQ(b12.size(), 3u);
  EXPECT_TRUE(std::binary_search(b12.begin(), b12.end(), 3));
  EXPECT_TRUE(std::binary_search(b12.begin(), b12.end(), 12));
  EXPECT_THAT(index->BlocksOf(0), ElementsAre(0));
  EXPECT_EQ(index->BlocksOf(1).size(), 2u);
  EXPECT_EQ(BuildBlockSparseIndex(p, 2, {3}).status().code(), absl::StatusCode::kInvalidArgument);
}

// The pooled scores follow the documented fp32 arithmetic to the bit (the GPU builder relies
// on it), and stay close to the exact value.
TEST(SparseAttention, PooledBlockScoresFollowTheDocumentedArithmetic) {
  Problem pr = RandomProblem(150, 70, 4, 2, 48, 21);  // Row blocks straddle key blocks.
  const AttentionParams p = pr.Params();
  const int64_t keys = 220, rows = 3, key_blocks = 4;
  const int d = 48, head = 3, kv_head = 1;
  auto scores = PooledBlockScores(p, head);
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->size(), static_cast<size_t>(rows * key_blocks));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t nq = std::min<int64_t>(150, r * 64 + 64) - r * 64;
    const int64_t diagonal = (70 + r * 64 + nq - 1) / 64;
    for (int64_t b = 0; b < key_blocks; ++b) {
      const float got = (*scores)[r * key_blocks + b];
      if (b > diagonal) {
        EXPECT_EQ(got, -std::numeric_limits<float>::infinity()) << r << ", " << b;
        continue;
      }
      const int64_t nk = std::min<int64_t>(keys, b * 64 + 64) - b * 64;
      float dot = 0.0f;
      double exact = 0;
      for (int e = 0; e < d; ++e) {
        float qs = 0.0f, ks = 0.0f;
        double qd = 0, kd = 0;
        for (int64_t i = 0; i < nq; ++i) {
          qs += pr.q[((r * 64 + i) * 4 + head) * d + e];
          qd += pr.q[((r * 64 + i) * 4 + head) * d + e];
        }
        for (int64_t i = 0; i < nk; ++i) {
          ks += pr.k[((b * 64 + i) * 2 + kv_head) * d + e];
          kd += pr.k[((b * 64 + i) * 2 + kv_head) * d + e];
        }
        dot = std::fma(qs / static_cast<float>(nq), ks / static_cast<float>(nk), dot);
        exact += qd / static_cast<double>(nq) * (kd / static_cast<double>(nk));
      }
      EXPECT_EQ(got, p.scale * dot) << "row block " << r << " key block " << b;
      EXPECT_NEAR(got, exact * p.scale, 1e-5) << "row block " << r << " key block " << b;
    }
  }
}

TEST(SparseAttention, BlockSparseTiesGoToLowerBlocksAndBigBudgetsTakeEverything) {
  Problem pr = RandomProblem(300, 40, 2, 1, 32, 22);
  for (auto* t : {&pr.q, &pr.k}) std::fill(t->begin(), t->end(), 0.25f);  // Every score equal.
  const SparseShape shape{300, 40};
  auto index = BuildBlockSparseIndex(pr.Params(), 1, {3});
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_TRUE(ValidateSparseIndex(*index, shape).ok());
  // Row block 0 (positions 40..103): its own blocks 0 and 1, nothing else visible.
  EXPECT_THAT(index->BlocksOf(0), ElementsAre(0, 1));
  // Row block 3 (positions 232..295): own blocks 3 and 4, then the lowest other block.
  EXPECT_THAT(index->BlocksOf(3), ElementsAre(0, 3, 4));
  // Row block 4 (positions 296..339): own blocks 4 and 5, then block 0.
  EXPECT_THAT(index->BlocksOf(4), ElementsAre(0, 4, 5));
  auto all = BuildBlockSparseIndex(pr.Params(), 0, {1000});
  ASSERT_TRUE(all.ok());
  const SparseHeadIndex full = FullIndex(shape);
  EXPECT_EQ(all->blocks, full.blocks);
  EXPECT_EQ(all->block_begin, full.block_begin);
}

// A score that overflows to +infinity must not push out the blocks of a row block's own
// positions, and NaN scores come after every number.
TEST(SparseAttention, BlockSparseKeepsItsOwnBlocksAgainstInfiniteAndNaNScores) {
  Problem pr = RandomProblem(256, 0, 1, 1, 32, 23);
  for (float& x : pr.q) x = 1e30f;
  for (int64_t j = 0; j < 64; ++j) {
    for (int e = 0; e < 32; ++e) pr.k[j * 32 + e] = 1e30f;  // Key block 0: +infinity.
  }
  for (int64_t j = 64; j < 128; ++j) pr.k[j * 32] = std::numeric_limits<float>::quiet_NaN();
  auto scores = PooledBlockScores(pr.Params(), 0);
  ASSERT_TRUE(scores.ok());
  EXPECT_EQ((*scores)[3 * 4 + 0], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan((*scores)[3 * 4 + 1]));
  auto one = BuildBlockSparseIndex(pr.Params(), 0, {1});
  ASSERT_TRUE(one.ok());
  ASSERT_TRUE(ValidateSparseIndex(*one, {256, 0}).ok());
  EXPECT_THAT(one->BlocksOf(3), ElementsAre(3));
  auto three = BuildBlockSparseIndex(pr.Params(), 0, {3});
  ASSERT_TRUE(three.ok());
  EXPECT_THAT(three->BlocksOf(3), ElementsAre(0, 2, 3));  // Block 1's NaN comes last.
}

}  // namespace
}  // namespace tierkv::kernels
