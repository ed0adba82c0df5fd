// The sparse index builders on the GPU against the CPU reference (kernels/sparse_attention.h):
// attention mass sums within fp32 rounding and bit-identical across runs; top-k and the
// vertical-slash conversion exactly equal to the reference fed the same values; the whole
// estimate-select-convert pipeline on planted inputs; and the time of that pipeline for a
// Llama-3-8B layer at 128K tokens. Needs an sm_90 GPU; skips, saying why, without one.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"
#include "kernels/sparse_attention.h"

namespace tierkv::kernels::cuda {
namespace {

using ::testing::HasSubstr;

std::mt19937_64& Rng() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng;
}

// Random bf16 values and their exact fp32 images (for the CPU reference). `fast`: uniform
// values from a cheap generator, and no fp32 images (hundreds of millions of values).
struct Bf16Tensor {
  std::vector<uint16_t> bits;
  std::vector<float> f32;
  explicit Bf16Tensor(size_t n, float stddev = 1.0f, bool fast = false) : bits(n) {
    if (fast) {
      uint64_t x = Rng()() | 1;
      for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const float u = static_cast<float>(x >> 40) / static_cast<float>(1 << 24);  // [0, 1)
        bits[i] = FloatToBf16((2.0f * u - 1.0f) * 1.7320508f * stddev);
      }
      return;
    }
    f32.resize(n);
    std::normal_distribution<float> d(0.0f, stddev);
    for (size_t i = 0; i < n; ++i) {
      bits[i] = FloatToBf16(d(Rng()));
      f32[i] = Bf16ToFloat(bits[i]);
    }
  }
};

template <typename T>
DeviceBuffer Up(const std::vector<T>& v) {
  absl::StatusOr<DeviceBuffer> b = Upload<T>(std::span<const T>(v));
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : DeviceBuffer();
}

DeviceBuffer Alloc(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(bytes, 16));
  EXPECT_TRUE(b.ok()) << b.status();
  // NaN poison: every output element must be written.
  if (b.ok()) {
    EXPECT_TRUE(FillBytes(b->data(), 0xff, b->size()).ok());
  }
  return b.ok() ? *std::move(b) : DeviceBuffer();
}

struct MassCase {
  int64_t nq, qp;
  int qh, kvh, d;
  int64_t last_q;
};

// Runs the GPU estimate; returns per_key then per_distance ([heads][keys] each).
std::pair<std::vector<float>, std::vector<float>> GpuMass(const MassCase& c, const Bf16Tensor& q,
                                                          const Bf16Tensor& k, float scale,
                                                          size_t workspace_heads) {
  const int64_t keys = c.qp + c.nq;
  DeviceBuffer dq = Up(q.bits), dk = Up(k.bits);
  DeviceBuffer per_key = Alloc(c.qh * keys * 4), per_distance = Alloc(c.qh * keys * 4);
  AttentionMassParams p;
  p.q = dq.as<Bf16>();
  p.ldq = static_cast<int64_t>(c.qh) * c.d;
  p.k = dk.as<Bf16>();
  p.ldkv = static_cast<int64_t>(c.kvh) * c.d;
  p.num_queries = c.nq;
  p.query_position = c.qp;
  p.num_q_heads = c.qh;
  p.num_kv_heads = c.kvh;
  p.head_dim = c.d;
  p.scale = scale;
  p.last_q = c.last_q;
  p.per_key = per_key.as<float>();
  p.per_distance = per_distance.as<float>();
  const size_t min_bytes = AttentionMassMinWorkspaceBytes(p);
  EXPECT_GT(min_bytes, 0u);
  DeviceBuffer ws = Alloc(min_bytes * workspace_heads);
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  absl::Status s = EstimateAttentionMass(p, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(SynchronizeDevice().ok());
  return {*Download<float>(per_key.data(), c.qh * keys),
          *Download<float>(per_distance.data(), c.qh * keys)};
}

TEST(SparseIndexGpu, AttentionMassMatchesTheReferenceAndRepeatsBitForBit) {
  TIERKV_REQUIRE_GPU();
  for (const MassCase& c : {MassCase{300, 0, 4, 2, 64, 64}, MassCase{200, 1000, 4, 1, 128, 17},
                            MassCase{64, 37, 2, 2, 128, 64}, MassCase{1, 500, 8, 2, 64, 1}}) {
    SCOPED_TRACE(testing::Message() << "nq " << c.nq << " qp " << c.qp << " heads " << c.qh
                                    << "/" << c.kvh << " d " << c.d << " last_q " << c.last_q);
    const int64_t keys = c.qp + c.nq;
    Bf16Tensor q(c.nq * c.qh * c.d), k(keys * c.kvh * c.d);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    auto [per_key, per_distance] = GpuMass(c, q, k, scale, /*workspace_heads=*/1);
    auto [again_key, again_distance] = GpuMass(c, q, k, scale, /*workspace_heads=*/3);
    EXPECT_EQ(per_key, again_key);  // Same bits whatever the rounds.
    EXPECT_EQ(per_distance, again_distance);
    kernels::AttentionParams ref;
    ref.q = q.f32.data();
    ref.ldq = static_cast<int64_t>(c.qh) * c.d;
    ref.k = k.f32.data();
    ref.v = k.f32.data();
    ref.ldkv = static_cast<int64_t>(c.kvh) * c.d;
    std::vector<float> unused(q.f32.size());
    ref.out = unused.data();
    ref.ldo = ref.ldq;
    ref.num_queries = c.nq;
    ref.query_position = c.qp;
    ref.num_keys = keys;
    ref.num_q_heads = c.qh;
    ref.num_kv_heads = c.kvh;
    ref.head_dim = c.d;
    ref.scale = scale;
    for (int h = 0; h < c.qh; ++h) {
      auto want = kernels::EstimateAttentionMass(ref, h, c.last_q);
      ASSERT_TRUE(want.ok()) << want.status();
      int bad = 0;
      for (int64_t j = 0; j < keys; ++j) {
        const float gk = per_key[h * keys + j], gd = per_distance[h * keys + j];
        const float wk = want->per_key[j], wd = want->per_distance[j];
        if (!(std::fabs(gk - wk) <= 1e-4f * wk + 1e-6f) ||
            !(std::fabs(gd - wd) <= 1e-4f * wd + 1e-6f)) {
          if (++bad <= 3) {
            ADD_FAILURE() << "head " << h << " key/distance " << j << ": gpu " << gk << " / " << gd
                          << ", reference " << wk << " / " << wd;
          }
        }
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

std::vector<int32_t> GpuTop(const std::vector<float>& values, int64_t n, int segments,
                            int64_t count, int64_t keep) {
  DeviceBuffer dv = Up(values);
  DeviceBuffer out = Alloc(std::max<int64_t>(1, count * segments) * 4);
  TopIndicesParams p;
  p.values = dv.as<float>();
  p.n = n;
  p.segments = segments;
  p.count = count;
  p.keep = keep;
  p.out = out.as<int32_t>();
  DeviceBuffer ws = Alloc(TopIndicesWorkspaceBytes(p));
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  absl::Status s = TopIndices(p, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(SynchronizeDevice().ok());
  return *Download<int32_t>(out.data(), count * segments);
}

TEST(SparseIndexGpu, TopIndicesEqualTheReference) {
  TIERKV_REQUIRE_GPU();
  for (const auto& [n, segments, count, keep] :
       {std::tuple<int64_t, int, int64_t, int64_t>{1000, 3, 100, 30},
        {131072, 4, 1000, 30}, {6096, 2, 6096, 100}, {50, 5, 7, 0}}) {
    SCOPED_TRACE(testing::Message() << n << " x " << segments << ", top " << count << " keep "
                                    << keep);
    std::vector<float> values(n * segments);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (float& v : values) v = u(Rng());
    // Ties, zeros and a NaN, which the reference puts last and the GPU treats as -infinity.
    for (int s = 0; s < segments; ++s) {
      for (int i = 0; i < 20 && i < n; ++i) values[s * n + (i * 7919) % n] = 0.5f;
      values[s * n + n / 2] = 0.0f;
    }
    const std::vector<int32_t> got = GpuTop(values, n, segments, count, keep);
    for (int s = 0; s < segments; ++s) {
      const std::vector<int32_t> want = kernels::TopIndices(
          std::span<const float>(values).subspan(s * n, n), count, keep);
      EXPECT_EQ(std::vector<int32_t>(got.begin() + s * count, got.begin() + (s + 1) * count),
                want)
          << "segment " << s;
    }
  }
}

// The GPU conversion of per-head lines, as CPU SparseHeadIndex lists.
std::vector<SparseHeadIndex> GpuIndex(const std::vector<int32_t>& verticals, int64_t nv,
                                      const std::vector<int32_t>& slashes, int64_t ns, int heads,
                                      const SparseShape& shape, int64_t capacity_blocks = -1) {
  DeviceBuffer dv = Up(verticals), ds = Up(slashes);
  const int64_t rows = (shape.num_queries + 63) / 64;
  const int64_t n = rows * heads;
  DeviceBuffer bo = Alloc((n + 1) * 8), co = Alloc((n + 1) * 8);
  const int64_t key_blocks = (shape.query_position + shape.num_queries + 63) / 64;
  const int64_t cap_b = capacity_blocks >= 0 ? capacity_blocks : n * key_blocks;
  const int64_t cap_c = n * nv;
  DeviceBuffer blocks = Alloc(std::max<int64_t>(1, cap_b) * 4),
               columns = Alloc(std::max<int64_t>(1, cap_c) * 4);
  VerticalSlashIndexParams p;
  p.verticals = dv.as<int32_t>();
  p.num_verticals = nv;
  p.slashes = ds.as<int32_t>();
  p.num_slashes = ns;
  p.heads = heads;
  p.num_queries = shape.num_queries;
  p.query_position = shape.query_position;
  p.block_offsets = bo.as<int64_t>();
  p.column_offsets = co.as<int64_t>();
  p.blocks = blocks.as<int32_t>();
  p.blocks_capacity = cap_b;
  p.columns = columns.as<int32_t>();
  p.columns_capacity = cap_c;
  DeviceBuffer ws = Alloc(VerticalSlashIndexWorkspaceBytes(p));
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  absl::Status s = BuildVerticalSlashIndex(p, nullptr);
  if (capacity_blocks >= 0) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(s.message(), HasSubstr("room for"));
    return {};
  }
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(SynchronizeDevice().ok());
  const auto block_offsets = *Download<int64_t>(bo.data(), n + 1);
  const auto column_offsets = *Download<int64_t>(co.data(), n + 1);
  EXPECT_EQ(block_offsets[n], p.total_blocks);
  EXPECT_EQ(column_offsets[n], p.total_columns);
  const auto all_blocks = *Download<int32_t>(blocks.data(), std::max<int64_t>(1, p.total_blocks));
  const auto all_columns =
      *Download<int32_t>(columns.data(), std::max<int64_t>(1, p.total_columns));
  std::vector<SparseHeadIndex> out(heads);
  for (int h = 0; h < heads; ++h) {
    SparseHeadIndex& ix = out[h];
    ix.block_begin.push_back(0);
    ix.column_begin.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e = h * rows + r;
      ix.blocks.insert(ix.blocks.end(), all_blocks.begin() + block_offsets[e],
                       all_blocks.begin() + block_offsets[e + 1]);
      ix.columns.insert(ix.columns.end(), all_columns.begin() + column_offsets[e],
                        all_columns.begin() + column_offsets[e + 1]);
      ix.block_begin.push_back(static_cast<int64_t>(ix.blocks.size()));
      ix.column_begin.push_back(static_cast<int64_t>(ix.columns.size()));
    }
  }
  return out;
}

void ExpectSameIndex(const SparseHeadIndex& got, const SparseHeadIndex& want, int head) {
  EXPECT_EQ(got.block_begin, want.block_begin) << "head " << head;
  EXPECT_EQ(got.blocks, want.blocks) << "head " << head;
  EXPECT_EQ(got.column_begin, want.column_begin) << "head " << head;
  EXPECT_EQ(got.columns, want.columns) << "head " << head;
}

TEST(SparseIndexGpu, VerticalSlashIndexEqualsTheReference) {
  TIERKV_REQUIRE_GPU();
  for (const SparseShape shape : {SparseShape{1000, 0}, SparseShape{777, 4321}, SparseShape{64, 64},
                                  SparseShape{3, 10}}) {
    SCOPED_TRACE(testing::Message() << "queries " << shape.num_queries << " at "
                                    << shape.query_position);
    const int heads = 3;
    const int64_t keys = shape.query_position + shape.num_queries;
    const int64_t nv = std::min<int64_t>(keys, 50), ns = std::min<int64_t>(keys, 40);
    std::vector<int32_t> verticals, slashes;
    std::vector<std::vector<int32_t>> per_head_v(heads), per_head_s(heads);
    for (int h = 0; h < heads; ++h) {
      std::vector<float> rv(keys), rs(keys);
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      for (float& x : rv) x = u(Rng());
      for (float& x : rs) x = u(Rng());
      per_head_v[h] = kernels::TopIndices(rv, nv, 3);
      per_head_s[h] = kernels::TopIndices(rs, ns, 5);
      verticals.insert(verticals.end(), per_head_v[h].begin(), per_head_v[h].end());
      slashes.insert(slashes.end(), per_head_s[h].begin(), per_head_s[h].end());
    }
    const std::vector<SparseHeadIndex> got = GpuIndex(verticals, nv, slashes, ns, heads, shape);
    ASSERT_EQ(got.size(), static_cast<size_t>(heads));
    for (int h = 0; h < heads; ++h) {
      auto want = kernels::VerticalSlashIndex(shape, per_head_v[h], per_head_s[h]);
      ASSERT_TRUE(want.ok());
      ExpectSameIndex(got[h], *want, h);
    }
    // Too little room: RESOURCE_EXHAUSTED with the totals.
    GpuIndex(verticals, nv, slashes, ns, heads, shape, /*capacity_blocks=*/0);
  }
}

// The pipeline of a layer: estimate, select and convert on the GPU; equal to the reference's
// selection and conversion of the GPU's sums; timed for a Llama-3-8B layer at 128K tokens.
TEST(SparseIndexGpu, PipelineEqualsTheReferenceAndPrintsItsTime) {
  TIERKV_REQUIRE_GPU();
  for (const bool big : {false, true}) {
    const int64_t n = big ? 131072 : 4096;
    const int qh = big ? 32 : 4, kvh = big ? 8 : 2, d = 128;
    const int64_t nv = big ? 1000 : 100, ns = big ? 6096 : 300;
    Bf16Tensor q(n * qh * d, 0.5f, /*fast=*/true), k(n * kvh * d, 0.5f, /*fast=*/true);
    DeviceBuffer dq = Up(q.bits), dk = Up(k.bits);
    DeviceBuffer per_key = Alloc(qh * n * 4), per_distance = Alloc(qh * n * 4);
    DeviceBuffer verticals = Alloc(qh * nv * 4), slashes = Alloc(qh * ns * 4);
    AttentionMassParams mp;
    mp.q = dq.as<Bf16>();
    mp.ldq = static_cast<int64_t>(qh) * d;
    mp.k = dk.as<Bf16>();
    mp.ldkv = static_cast<int64_t>(kvh) * d;
    mp.num_queries = n;
    mp.num_q_heads = qh;
    mp.num_kv_heads = kvh;
    mp.head_dim = d;
    mp.scale = 1.0f / std::sqrt(static_cast<float>(d));
    mp.per_key = per_key.as<float>();
    mp.per_distance = per_distance.as<float>();
    const size_t mass_ws = AttentionMassMinWorkspaceBytes(mp) * 8;
    TopIndicesParams tv{per_key.as<float>(), n, qh, nv, 30, verticals.as<int32_t>()};
    TopIndicesParams ts{per_distance.as<float>(), n, qh, ns, 100, slashes.as<int32_t>()};
    const size_t top_ws = std::max(TopIndicesWorkspaceBytes(tv), TopIndicesWorkspaceBytes(ts));
    const int64_t rows = n / 64;
    DeviceBuffer bo = Alloc((rows * qh + 1) * 8), co = Alloc((rows * qh + 1) * 8);
    // Room for every visible block (random inputs spread their slashes everywhere).
    const int64_t cap_b = (rows * (rows + 1) / 2) * qh, cap_c = rows * qh * nv;
    DeviceBuffer blocks = Alloc(cap_b * 4), columns = Alloc(cap_c * 4);
    VerticalSlashIndexParams ip;
    ip.verticals = verticals.as<int32_t>();
    ip.num_verticals = nv;
    ip.slashes = slashes.as<int32_t>();
    ip.num_slashes = ns;
    ip.heads = qh;
    ip.num_queries = n;
    ip.block_offsets = bo.as<int64_t>();
    ip.column_offsets = co.as<int64_t>();
    ip.blocks = blocks.as<int32_t>();
    ip.blocks_capacity = cap_b;
    ip.columns = columns.as<int32_t>();
    ip.columns_capacity = cap_c;
    const size_t index_ws = VerticalSlashIndexWorkspaceBytes(ip);
    DeviceBuffer ws = Alloc(std::max({mass_ws, top_ws, index_ws}));
    mp.workspace = tv.workspace = ts.workspace = ip.workspace = ws.data();
    mp.workspace_bytes = tv.workspace_bytes = ts.workspace_bytes = ip.workspace_bytes = ws.size();
    auto run = [&] {
      absl::Status s = EstimateAttentionMass(mp, nullptr);
      if (s.ok()) s = TopIndices(tv, nullptr);
      if (s.ok()) s = TopIndices(ts, nullptr);
      if (s.ok()) s = BuildVerticalSlashIndex(ip, nullptr);
      if (s.ok()) s = SynchronizeDevice();
      return s;
    };
    {
      absl::Status first = run();
      ASSERT_TRUE(first.ok()) << first;
    }
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int kReps = 3;
    for (int r = 0; r < kReps; ++r) ASSERT_TRUE(run().ok());
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        kReps;
    std::printf("vertical-slash index, %lld tokens, %d q heads / %d kv heads, head_dim %d, "
                "budgets %lld / %lld: %.2f ms a layer (estimate + top-k + conversion); "
                "%lld blocks and %lld columns listed\n",
                static_cast<long long>(n), qh, kvh, d, static_cast<long long>(nv),
                static_cast<long long>(ns), ms, static_cast<long long>(ip.total_blocks),
                static_cast<long long>(ip.total_columns));
    // The reference's selection and conversion of the GPU's sums, for a few heads.
    const auto keys_host = *Download<float>(per_key.data(), qh * n);
    const auto dist_host = *Download<float>(per_distance.data(), qh * n);
    const auto got_v = *Download<int32_t>(verticals.data(), qh * nv);
    const auto got_s = *Download<int32_t>(slashes.data(), qh * ns);
    for (int h : {0, qh - 1}) {
      const auto want_v =
          kernels::TopIndices(std::span<const float>(keys_host).subspan(h * n, n), nv, 30);
      const auto want_s =
          kernels::TopIndices(std::span<const float>(dist_host).subspan(h * n, n), ns, 100);
      EXPECT_EQ(std::vector<int32_t>(got_v.begin() + h * nv, got_v.begin() + (h + 1) * nv),
                want_v);
      EXPECT_EQ(std::vector<int32_t>(got_s.begin() + h * ns, got_s.begin() + (h + 1) * ns),
                want_s);
    }
    if (!big) {
      const auto got = GpuIndex(got_v, nv, got_s, ns, qh, {n, 0});
      for (int h = 0; h < qh; ++h) {
        auto want = kernels::VerticalSlashIndex(
            {n, 0}, std::span<const int32_t>(got_v).subspan(h * nv, nv),
            std::span<const int32_t>(got_s).subspan(h * ns, ns));
        ASSERT_TRUE(want.ok());
        ExpectSameIndex(got[h], *want, h);
      }
    }
  }
}

}  // namespace
}  // namespace tierkv::kernels::cuda
