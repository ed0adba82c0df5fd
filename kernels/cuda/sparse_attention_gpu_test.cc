// Block-sparse prefill attention on the GPU: over the full index it equals the dense kernel;
// over A-shape, vertical-slash and block-sparse indices it equals the CPU reference
// (kernels::SparseAttention) within bf16 rounding, outputs poisoned before each run (NaN
// never passes); random indices whose adjacent row blocks list different blocks and columns
// (what the wgmma kernel's merged pairs must keep apart); every kernel variant; and a timing
// print beside the dense kernel. Needs an sm_90 GPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/internal/sparse_attention_launch.h"
#include "kernels/cuda/internal/sparse_attention_variant.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"
#include "kernels/sparse_attention.h"

namespace tierkv::kernels::cuda {
namespace {

std::mt19937_64& Rng() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng;
}

struct Case {
  int64_t nq, qp;
  int qh, kvh, d;
};

// bf16 inputs (and their fp32 images), device copies, and both kernels' params.
struct Problem {
  Case c;
  std::vector<uint16_t> q, k, v;
  std::vector<float> qf, kf, vf;
  DeviceBuffer dq, dk, dv, dout;
  explicit Problem(const Case& cs) : c(cs) {
    const int64_t keys = c.qp + c.nq;
    auto fill = [](size_t n, std::vector<uint16_t>& bits, std::vector<float>& f) {
      std::normal_distribution<float> d(0.0f, 1.0f);
      bits.resize(n);
      f.resize(n);
      for (size_t i = 0; i < n; ++i) {
        bits[i] = FloatToBf16(d(Rng()));
        f[i] = Bf16ToFloat(bits[i]);
      }
    };
    fill(c.nq * c.qh * c.d, q, qf);
    fill(keys * c.kvh * c.d, k, kf);
    fill(keys * c.kvh * c.d, v, vf);
    dq = *Upload<uint16_t>(q);
    dk = *Upload<uint16_t>(k);
    dv = *Upload<uint16_t>(v);
    dout = *DeviceBuffer::Allocate(c.nq * c.qh * c.d * 2);
  }
  AttentionParams Gpu() {
    AttentionParams p;
    p.q = dq.as<Bf16>();
    p.ldq = static_cast<int64_t>(c.qh) * c.d;
    p.k = dk.as<Bf16>();
    p.v = dv.as<Bf16>();
    p.ldkv = static_cast<int64_t>(c.kvh) * c.d;
    p.out = dout.as<Bf16>();
    p.ldo = p.ldq;
    p.num_queries = c.nq;
    p.query_position = c.qp;
    p.num_keys = c.qp + c.nq;
    p.num_q_heads = c.qh;
    p.num_kv_heads = c.kvh;
    p.head_dim = c.d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    return p;
  }
  kernels::AttentionParams Cpu(std::vector<float>& out) {
    kernels::AttentionParams p;
    p.q = qf.data();
    p.ldq = static_cast<int64_t>(c.qh) * c.d;
    p.k = kf.data();
    p.v = vf.data();
    p.ldkv = static_cast<int64_t>(c.kvh) * c.d;
    out.assign(c.nq * c.qh * c.d, 0.0f);
    p.out = out.data();
    p.ldo = p.ldq;
    p.num_queries = c.nq;
    p.query_position = c.qp;
    p.num_keys = c.qp + c.nq;
    p.num_q_heads = c.qh;
    p.num_kv_heads = c.kvh;
    p.head_dim = c.d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    return p;
  }
  // Runs `run` with the output poisoned (NaN) and returns it as floats.
  template <typename F>
  std::vector<float> Run(F run) {
    EXPECT_TRUE(FillBytes(dout.data(), 0xff, dout.size()).ok());
    absl::Status s = run();
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(SynchronizeDevice().ok());
    const auto bits = *Download<uint16_t>(dout.data(), c.nq * c.qh * c.d);
    std::vector<float> f(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) f[i] = Bf16ToFloat(bits[i]);
    return f;
  }
};

// The per-head CPU indices as the device CSR over (head, row block).
struct DeviceIndex {
  DeviceBuffer block_offsets, blocks, column_offsets, columns;
  int64_t total_blocks = 0, total_columns = 0;
  explicit DeviceIndex(const std::vector<SparseHeadIndex>& heads) {
    std::vector<int64_t> bo = {0}, co = {0};
    std::vector<int32_t> b, c;
    for (const SparseHeadIndex& h : heads) {
      for (int64_t r = 0; r < h.num_row_blocks(); ++r) {
        for (int32_t x : h.BlocksOf(r)) b.push_back(x);
        for (int32_t x : h.ColumnsOf(r)) c.push_back(x);
        bo.push_back(static_cast<int64_t>(b.size()));
        co.push_back(static_cast<int64_t>(c.size()));
      }
    }
    total_blocks = static_cast<int64_t>(b.size());
    total_columns = static_cast<int64_t>(c.size());
    if (b.empty()) b.push_back(0);
    if (c.empty()) c.push_back(0);
    block_offsets = *Upload<int64_t>(bo);
    blocks = *Upload<int32_t>(b);
    column_offsets = *Upload<int64_t>(co);
    columns = *Upload<int32_t>(c);
  }
  SparseIndexView View() const {
    SparseIndexView v{block_offsets.as<int64_t>(), blocks.as<int32_t>(),
                      column_offsets.as<int64_t>(), columns.as<int32_t>()};
    v.total_blocks = total_blocks;
    v.total_columns = total_columns;
    return v;
  }
};

// Sparse attention with `variant` (internal::SparseVariant), its workspace allocated here.
absl::Status RunSparse(AttentionParams p, const SparseIndexView& view, int variant,
                       DeviceBuffer& workspace) {
  const size_t need = SparseAttentionWorkspaceBytes(p, view);
  if (workspace.size() < need) workspace = *DeviceBuffer::Allocate(need);
  p.workspace = workspace.data();
  p.workspace_bytes = workspace.size();
  return internal::SparseAttentionVariant(p, view, variant, nullptr);
}

constexpr int kVariants[] = {internal::kSparseAuto, internal::kSparseMmaSync,
                             internal::kSparseWgmmaS2, internal::kSparseWgmmaS3};

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    num += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

TEST(SparseAttentionGpu, FullIndexEqualsTheDenseKernel) {
  TIERKV_REQUIRE_GPU();
  for (const Case& c : {Case{300, 0, 8, 2, 128}, Case{200, 130, 4, 4, 64}, Case{64, 0, 2, 1, 128},
                        Case{1000, 3000, 4, 1, 128}}) {
    SCOPED_TRACE(testing::Message() << c.nq << " queries at " << c.qp << ", heads " << c.qh
                                    << "/" << c.kvh << ", d " << c.d);
    Problem pr(c);
    AttentionParams p = pr.Gpu();
    const std::vector<float> dense = pr.Run([&] { return Attention(p, nullptr); });
    DeviceIndex index(std::vector<SparseHeadIndex>(c.qh, FullIndex({c.nq, c.qp})));
    DeviceBuffer ws;
    for (int variant : kVariants) {
      SCOPED_TRACE(internal::SparseVariantName(variant));
      const std::vector<float> sparse =
          pr.Run([&] { return RunSparse(p, index.View(), variant, ws); });
      EXPECT_LT(RelativeError(sparse, dense), 1e-2);
    }
  }
}

TEST(SparseAttentionGpu, IndicesOfEveryShapeMatchTheReference) {
  TIERKV_REQUIRE_GPU();
  for (const Case& c : {Case{700, 0, 4, 2, 128}, Case{333, 1000, 4, 1, 64}}) {
    SCOPED_TRACE(testing::Message() << c.nq << " queries at " << c.qp << ", d " << c.d);
    Problem pr(c);
    std::vector<float> cpu_out;
    kernels::AttentionParams cp = pr.Cpu(cpu_out);
    // Head h: A-shape, vertical-slash (random lines), block-sparse, vertical-slash estimated.
    std::vector<SparseHeadIndex> heads;
    const SparseShape shape{c.nq, c.qp};
    const int64_t keys = c.qp + c.nq;
    for (int h = 0; h < c.qh; ++h) {
      absl::StatusOr<SparseHeadIndex> ix;
      switch (h % 4) {
        case 0:
          ix = AShapeIndex(shape, {70, 150});
          break;
        case 1: {
          std::vector<float> rv(keys), rs(keys);
          std::uniform_real_distribution<float> u(0.0f, 1.0f);
          for (float& x : rv) x = u(Rng());
          for (float& x : rs) x = u(Rng());
          ix = VerticalSlashIndex(shape, kernels::TopIndices(rv, 90, 5),
                                  kernels::TopIndices(rs, 12, 3));
          break;
        }
        case 2:
          ix = BuildBlockSparseIndex(cp, h, {4});
          break;
        default: {
          VerticalSlashParams vs;
          vs.vertical = 50;
          vs.slash = 20;
          vs.keep_first = 4;
          vs.keep_near = 8;
          ix = BuildVerticalSlashIndex(cp, h, vs);
        }
      }
      ASSERT_TRUE(ix.ok()) << ix.status();
      ASSERT_TRUE(ValidateSparseIndex(*ix, shape).ok());
      heads.push_back(*ix);
    }
    ASSERT_TRUE(kernels::SparseAttention(cp, heads, nullptr).ok());
    DeviceIndex index(heads);
    AttentionParams p = pr.Gpu();
    DeviceBuffer ws;
    for (int variant : kVariants) {
      const std::vector<float> got =
          pr.Run([&] { return RunSparse(p, index.View(), variant, ws); });
      const double err = RelativeError(got, cpu_out);
      std::printf("sparse attention (A-shape, vertical-slash, block-sparse heads), %lld "
                  "queries at %lld, d %d, %s: relative error %.2e against the CPU reference\n",
                  static_cast<long long>(c.nq), static_cast<long long>(c.qp), c.d,
                  internal::SparseVariantName(variant), err);
      EXPECT_LT(err, 1e-2) << internal::SparseVariantName(variant);
    }
  }
}

// A valid index drawn at random: each row block lists its own key blocks and each earlier
// block with probability `block_p`, and each key before its first row not in a listed block
// as a column with probability `column_p`. Adjacent row blocks then list different blocks
// and columns, columns of one lie in blocks of the other, and some columns are shared.
SparseHeadIndex RandomIndex(const SparseShape& shape, double block_p, double column_p) {
  SparseHeadIndex ix;
  const int64_t rows = (shape.num_queries + 63) / 64;
  std::bernoulli_distribution take_block(block_p), take_column(column_p);
  ix.block_begin.push_back(0);
  ix.column_begin.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t first_pos = shape.query_position + r * 64;
    const int64_t last_pos =
        shape.query_position + std::min<int64_t>(shape.num_queries, (r + 1) * 64) - 1;
    const int64_t first_block = first_pos / 64, last_block = last_pos / 64;
    std::vector<bool> listed(last_block + 1, false);
    for (int64_t b = 0; b <= last_block; ++b) {
      listed[b] = b >= first_block || take_block(Rng());
      if (listed[b]) ix.blocks.push_back(static_cast<int32_t>(b));
    }
    for (int64_t key = 0; key < first_block * 64; ++key) {
      if (!listed[key / 64] && take_column(Rng())) ix.columns.push_back(static_cast<int32_t>(key));
    }
    ix.block_begin.push_back(static_cast<int64_t>(ix.blocks.size()));
    ix.column_begin.push_back(static_cast<int64_t>(ix.columns.size()));
  }
  return ix;
}

TEST(SparseAttentionGpu, RandomIndicesMatchTheReferenceInEveryVariant) {
  TIERKV_REQUIRE_GPU();
  // Odd and even row-block counts, a partial last row block, continuation off the 64 grid,
  // GQA, both head sizes; sparse and dense lists, no columns and many.
  struct R {
    Case c;
    double block_p, column_p;
  };
  for (const R& rc : {R{{640, 0, 4, 2, 128}, 0.3, 0.05}, R{{577, 1000, 4, 1, 128}, 0.1, 0.2},
                      R{{129, 37, 2, 2, 64}, 0.5, 0.0}, R{{1000, 200, 8, 2, 64}, 0.05, 0.01},
                      R{{64, 4000, 2, 1, 128}, 0.02, 0.3}, R{{250, 0, 2, 1, 128}, 1.0, 0.0}}) {
    const Case& c = rc.c;
    SCOPED_TRACE(testing::Message() << c.nq << " queries at " << c.qp << ", heads " << c.qh
                                    << "/" << c.kvh << ", d " << c.d << ", p " << rc.block_p
                                    << "/" << rc.column_p);
    Problem pr(c);
    std::vector<float> cpu_out;
    kernels::AttentionParams cp = pr.Cpu(cpu_out);
    const SparseShape shape{c.nq, c.qp};
    std::vector<SparseHeadIndex> heads;
    for (int h = 0; h < c.qh; ++h) {
      heads.push_back(RandomIndex(shape, rc.block_p, rc.column_p));
      ASSERT_TRUE(ValidateSparseIndex(heads.back(), shape).ok());
    }
    ASSERT_TRUE(kernels::SparseAttention(cp, heads, nullptr).ok());
    DeviceIndex index(heads);
    AttentionParams p = pr.Gpu();
    DeviceBuffer ws;
    for (int variant : kVariants) {
      const std::vector<float> got =
          pr.Run([&] { return RunSparse(p, index.View(), variant, ws); });
      EXPECT_LT(RelativeError(got, cpu_out), 1e-2) << internal::SparseVariantName(variant);
    }
    // The tiles the Hopper kernel computes: per pair of row blocks, the union of their
    // blocks plus both column lists 64 at a time, in whole 128-key tiles, for 128 rows.
    p.workspace = ws.data();
    p.workspace_bytes = ws.size();
    auto computed = SparseAttentionComputedTiles(p, index.View(), nullptr);
    ASSERT_TRUE(computed.ok()) << computed.status();
    for (int h = 0; h < c.qh; ++h) {
      const SparseHeadIndex& ix = heads[h];
      int64_t want = 0;
      for (int64_t r = 0; r < ix.num_row_blocks(); r += 2) {
        std::vector<int32_t> u;
        int64_t columns = 0;
        for (int64_t q = r; q < std::min(r + 2, ix.num_row_blocks()); ++q) {
          for (int32_t b : ix.BlocksOf(q)) u.push_back(b);
          columns += static_cast<int64_t>(ix.ColumnsOf(q).size());
        }
        std::sort(u.begin(), u.end());
        const int64_t slots = (std::unique(u.begin(), u.end()) - u.begin()) + (columns + 63) / 64;
        want += 4 * ((slots + 1) / 2);
      }
      EXPECT_EQ((*computed)[h], want) << "head " << h;
    }
  }
}

TEST(SparseAttentionGpu, WgmmaKernelNeedsItsWorkspace) {
  TIERKV_REQUIRE_GPU();
  const Case c{256, 0, 2, 1, 128};
  Problem pr(c);
  DeviceIndex index(std::vector<SparseHeadIndex>(c.qh, FullIndex({c.nq, c.qp})));
  AttentionParams p = pr.Gpu();
  ASSERT_GT(SparseAttentionWorkspaceBytes(p, index.View()), 0u);
  const absl::Status s = SparseAttention(p, index.View(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("workspace"), std::string::npos) << s;
  SparseIndexView bad = index.View();
  bad.total_blocks = -1;
  EXPECT_EQ(SparseAttention(p, bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // Lengths left unset (they size the workspace): refused, not a workspace too small.
  bad.total_blocks = 0;
  bad.total_columns = 0;
  const absl::Status unset = SparseAttention(p, bad, nullptr);
  EXPECT_EQ(unset.code(), absl::StatusCode::kInvalidArgument) << unset;
  EXPECT_NE(unset.message().find("total_blocks"), std::string::npos) << unset;
  EXPECT_EQ(internal::SparseAttentionVariant(p, index.View(), 7, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// Not an assertion: the sparse kernel's time and rate on the tiles it computes, beside the
// dense kernel on the same inputs (32 query heads, 8 KV heads, head_dim 128).
TEST(SparseAttentionGpu, PrintsTheRateOnComputedTiles) {
  TIERKV_REQUIRE_GPU();
  const Case c{32768, 0, 32, 8, 128};
  Problem pr(c);
  AttentionParams p = pr.Gpu();
  const SparseShape shape{c.nq, c.qp};
  auto index_of = AShapeIndex(shape, {1024, 4096});
  ASSERT_TRUE(index_of.ok());
  DeviceIndex index(std::vector<SparseHeadIndex>(c.qh, *index_of));
  auto time = [&](auto run) {
    EXPECT_TRUE(run().ok());
    EXPECT_TRUE(SynchronizeDevice().ok());
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int kReps = 5;
    for (int r = 0; r < kReps; ++r) EXPECT_TRUE(run().ok());
    EXPECT_TRUE(SynchronizeDevice().ok());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
               .count() /
           kReps;
  };
  const double dense_ms = time([&] { return Attention(p, nullptr); });
  const double causal_flops =
      4.0 * c.d * c.qh * (static_cast<double>(c.nq) * (c.nq + 1) / 2);  // QK and PV.
  const double fraction = CoveredFraction(*index_of, shape);
  DeviceBuffer ws;
  for (int variant : {internal::kSparseMmaSync, internal::kSparseWgmmaS2,
                      internal::kSparseWgmmaS3}) {
    const double sparse_ms = time([&] { return RunSparse(p, index.View(), variant, ws); });
    std::printf("32K tokens, 32/8 heads, d 128: dense %.2f ms (%.0f TFLOP/s); A-shape 1024 + "
                "4096 sparse (%s) %.2f ms covering %.3f of the causal pairs (%.0f TFLOP/s on "
                "them, %.2f of the dense rate)\n",
                dense_ms, causal_flops / dense_ms / 1e9, internal::SparseVariantName(variant),
                sparse_ms, fraction, fraction * causal_flops / sparse_ms / 1e9,
                (fraction * causal_flops / sparse_ms) / (causal_flops / dense_ms));
  }
}

}  // namespace
}  // namespace tierkv::kernels::cuda
