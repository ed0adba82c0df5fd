// The sparse index builders on the GPU against the CPU reference (kernels/sparse_attention.h):
// attention mass sums within fp32 rounding and bit-identical across runs; top-k and the
// vertical-slash conversion exactly equal to the reference fed the same values; the whole
// estimate-select-convert pipeline on planted inputs; the A-shape lists and the block-sparse
// pooled scores and lists exactly equal to the reference (bit for bit); capacities and bad
// params refused with the reason; and the time of the vertical-slash pipeline and of the
// block-sparse build for a Llama-3-8B layer at 128K tokens. Needs an sm_90 GPU; skips, saying
// why, without one (the parameter checks, which return before any CUDA call, run anyway).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"
#include "kernels/sparse_attention.h"

namespace tierkv::kernels::cuda {
namespace {

// Mean milliseconds of `reps` runs after one warm-up run; -1 (and a failure) when one fails.
double MillisPerRun(const std::function<absl::Status()>& run, int reps) {
  if (absl::Status first = run(); !first.ok()) {
    ADD_FAILURE() << first;
    return -1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    if (absl::Status s = run(); !s.ok()) {
      ADD_FAILURE() << s;
      return -1;
    }
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
             .count() /
         reps;
}

using ::testing::HasSubstr;
using ::testing::StartsWith;

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
                            int64_t count, int64_t keep,
                            const std::vector<int64_t>* counts = nullptr,
                            const std::vector<int64_t>* keeps = nullptr) {
  DeviceBuffer dv = Up(values);
  DeviceBuffer out = Alloc(std::max<int64_t>(1, count * segments) * 4);
  TopIndicesParams p;
  p.values = dv.as<float>();
  p.n = n;
  p.segments = segments;
  p.count = count;
  p.keep = keep;
  p.out = out.as<int32_t>();
  if (counts != nullptr) {
    p.segment_counts = counts->data();
    p.segment_keeps = keeps->data();
  }
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
        {131072, 4, 1000, 30}, {6096, 2, 6096, 100}, {50, 5, 7, 0}, {300, 33, 40, 3}}) {
    SCOPED_TRACE(testing::Message() << n << " x " << segments << ", top " << count << " keep "
                                    << keep);
    std::vector<float> values(n * segments);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (float& v : values) v = u(Rng());
    // Ties, zeros and a NaN, which the reference puts last and the GPU treats as -infinity.
    for (int s = 0; s < segments; ++s) {
      for (int i = 0; i < 20 && i < n; ++i) values[s * n + (i * 7919) % n] = 0.5f;
      values[s * n + n / 2] = 0.0f;
      // -0 equals +0 (ties by index), infinities, and a NaN (ranked as -infinity).
      values[s * n + n / 3] = -0.0f;
      values[s * n + n / 5] = 0.0f;
      values[s * n + n - 1] = INFINITY;
      values[s * n + n / 7] = -INFINITY;
      values[s * n + n / 11] = std::numeric_limits<float>::quiet_NaN();
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

TEST(SparseIndexGpu, TopIndicesTakeEachSegmentsOwnCountAndKeep) {
  TIERKV_REQUIRE_GPU();
  const int64_t n = 5000;
  const int segments = 5;
  const std::vector<int64_t> counts = {0, 1, 700, 1000, 333}, keeps = {0, 1, 30, 0, 333};
  std::vector<float> values(n * segments);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& v : values) v = u(Rng());
  for (int s = 0; s < segments; ++s) values[s * n + 77] = values[s * n + 78];  // A tie.
  const std::vector<int32_t> got = GpuTop(values, n, segments, 1000, 0, &counts, &keeps);
  for (int s = 0; s < segments; ++s) {
    const std::vector<int32_t> want =
        kernels::TopIndices(std::span<const float>(values).subspan(s * n, n), counts[s], keeps[s]);
    const auto row = got.begin() + s * 1000;
    EXPECT_EQ(std::vector<int32_t>(row, row + counts[s]), want) << "segment " << s;
    EXPECT_TRUE(std::all_of(row + counts[s], row + 1000,
                            [](int32_t x) { return x == std::numeric_limits<int32_t>::max(); }))
        << "segment " << s << ": padding";
  }
  // A count above the stride, or a keep above its count: INVALID_ARGUMENT naming the field.
  TopIndicesParams bad;
  bad.values = reinterpret_cast<const float*>(16);
  bad.n = n;
  bad.segments = 2;
  bad.count = 10;
  bad.out = reinterpret_cast<int32_t*>(16);
  const int64_t too_many[] = {5, 11}, keeps_ok[] = {0, 0}, too_kept[] = {6, 0};
  bad.segment_counts = too_many;
  bad.segment_keeps = keeps_ok;
  EXPECT_THAT(TopIndices(bad, nullptr).message(), HasSubstr("segment_counts"));
  const int64_t counts_ok[] = {5, 10};
  bad.segment_counts = counts_ok;
  bad.segment_keeps = too_kept;
  EXPECT_THAT(TopIndices(bad, nullptr).message(), HasSubstr("segment_keeps"));
}

// The GPU conversion of per-head lines, as CPU SparseHeadIndex lists.
std::vector<SparseHeadIndex> GpuIndex(const std::vector<int32_t>& verticals, int64_t nv,
                                      const std::vector<int32_t>& slashes, int64_t ns, int heads,
                                      const SparseShape& shape, int64_t capacity_blocks = -1,
                                      const std::vector<int64_t>* head_verticals = nullptr,
                                      const std::vector<int64_t>* head_slashes = nullptr) {
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
  if (head_verticals != nullptr) p.head_verticals = head_verticals->data();
  if (head_slashes != nullptr) p.head_slashes = head_slashes->data();
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
    // Each head its own number of lines (a prefix of its row; the rest is padding).
    const std::vector<int64_t> hv = {nv, nv / 2, 0}, hs = {ns / 3, ns, 1};
    std::vector<int32_t> padded_v = verticals, padded_s = slashes;
    for (int h = 0; h < heads; ++h) {
      std::fill(padded_v.begin() + h * nv + hv[h], padded_v.begin() + (h + 1) * nv, INT32_MAX);
      std::fill(padded_s.begin() + h * ns + hs[h], padded_s.begin() + (h + 1) * ns, INT32_MAX);
    }
    const std::vector<SparseHeadIndex> own =
        GpuIndex(padded_v, nv, padded_s, ns, heads, shape, -1, &hv, &hs);
    ASSERT_EQ(own.size(), static_cast<size_t>(heads));
    for (int h = 0; h < heads; ++h) {
      const std::vector<int32_t> v(per_head_v[h].begin(), per_head_v[h].begin() + hv[h]);
      const std::vector<int32_t> sl(per_head_s[h].begin(), per_head_s[h].begin() + hs[h]);
      auto want = kernels::VerticalSlashIndex(shape, v, sl);
      ASSERT_TRUE(want.ok()) << want.status();
      ExpectSameIndex(own[h], *want, h);
    }
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
    const double ms = MillisPerRun(run, 3);
    ASSERT_GT(ms, 0) << "a run failed";
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

// ---------------------------------------------------------------------------------------
// A-shape and block-sparse

// Per-head indices from CSR lists of `heads` x `rows` entries without columns (the column
// offsets must all be 0).
std::vector<SparseHeadIndex> HeadsOf(const std::vector<int64_t>& block_offsets,
                                     const std::vector<int32_t>& blocks,
                                     const std::vector<int64_t>& column_offsets, int heads,
                                     int64_t rows) {
  for (size_t i = 0; i < column_offsets.size(); ++i) {
    EXPECT_EQ(column_offsets[i], 0) << "column offset " << i;
  }
  std::vector<SparseHeadIndex> out(heads);
  for (int h = 0; h < heads; ++h) {
    SparseHeadIndex& ix = out[h];
    ix.block_begin.push_back(0);
    ix.column_begin.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e = h * rows + r;
      ix.blocks.insert(ix.blocks.end(), blocks.begin() + block_offsets[e],
                       blocks.begin() + block_offsets[e + 1]);
      ix.block_begin.push_back(static_cast<int64_t>(ix.blocks.size()));
      ix.column_begin.push_back(0);
    }
  }
  return out;
}

// The GPU A-shape index; `capacity` < 0: room for every block.
absl::Status GpuAShape(const SparseShape& shape, const AShapeParams& a, int heads,
                       int64_t capacity, std::vector<SparseHeadIndex>* out,
                       int64_t* total = nullptr) {
  const int64_t rows = (shape.num_queries + 63) / 64;
  const int64_t n = rows * heads;
  const int64_t key_blocks = (shape.query_position + shape.num_queries + 63) / 64;
  const int64_t cap = capacity >= 0 ? capacity : n * key_blocks;
  DeviceBuffer bo = Alloc((n + 1) * 8), co = Alloc((n + 1) * 8), blocks = Alloc(cap * 4);
  AShapeIndexParams p;
  p.heads = heads;
  p.num_queries = shape.num_queries;
  p.query_position = shape.query_position;
  p.n_init = a.n_init;
  p.local = a.local;
  p.block_offsets = bo.as<int64_t>();
  p.column_offsets = co.as<int64_t>();
  p.blocks = blocks.as<int32_t>();
  p.blocks_capacity = cap;
  DeviceBuffer ws = Alloc(AShapeIndexWorkspaceBytes(p));
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  absl::Status s = BuildAShapeIndex(p, nullptr);
  EXPECT_TRUE(SynchronizeDevice().ok());
  if (total != nullptr) *total = p.total_blocks;
  const auto block_offsets = *Download<int64_t>(bo.data(), n + 1);
  EXPECT_EQ(block_offsets[n], p.total_blocks);  // Written whether the lists fit or not.
  if (!s.ok()) return s;
  *out = HeadsOf(block_offsets, *Download<int32_t>(blocks.data(), std::max<int64_t>(1, p.total_blocks)),
                 *Download<int64_t>(co.data(), n + 1), heads, rows);
  return s;
}

TEST(SparseIndexGpu, AShapeIndexEqualsTheReference) {
  TIERKV_REQUIRE_GPU();
  for (const SparseShape shape : {SparseShape{1000, 0}, SparseShape{777, 4321}, SparseShape{64, 64},
                                  SparseShape{3, 10}, SparseShape{130, 32}, SparseShape{1, 0},
                                  SparseShape{200, 5000}}) {
    for (const AShapeParams a :
         {AShapeParams{128, 3968}, AShapeParams{0, 1}, AShapeParams{100, 300},
          AShapeParams{70, 150}, AShapeParams{5000, 64}, AShapeParams{1, int64_t{1} << 40},
          AShapeParams{64, 64}}) {
      SCOPED_TRACE(testing::Message() << "queries " << shape.num_queries << " at "
                                      << shape.query_position << ", n_init " << a.n_init
                                      << " local " << a.local);
      const int heads = 3;
      std::vector<SparseHeadIndex> got;
      absl::Status s = GpuAShape(shape, a, heads, -1, &got);
      ASSERT_TRUE(s.ok()) << s;
      auto want = kernels::AShapeIndex(shape, a);
      ASSERT_TRUE(want.ok());
      for (int h = 0; h < heads; ++h) ExpectSameIndex(got[h], *want, h);
    }
  }
}

struct BlockCase {
  int64_t nq, qp;
  int qh, kvh, d;
  int64_t top;
};

std::string Describe(const BlockCase& c) {
  return testing::PrintToString(c.nq) + " queries at " + testing::PrintToString(c.qp) + ", " +
         std::to_string(c.qh) + "/" + std::to_string(c.kvh) + " heads, d " +
         std::to_string(c.d) + ", top " + testing::PrintToString(c.top);
}

struct GpuBlockSparseResult {
  absl::Status status;
  std::vector<SparseHeadIndex> index;
  std::vector<float> scores;  // [heads][rows][key_blocks] when exported.
  int64_t total = 0;
  int64_t offsets_total = 0;  // block_offsets[heads * rows] as written.
};

// The GPU block-sparse build. export_scores: the scores into their own array (one round);
// else rounds of heads_per_round heads in the workspace. capacity < 0: room for all.
GpuBlockSparseResult GpuBlockSparse(const BlockCase& c, const std::vector<uint16_t>& q,
                                    const std::vector<uint16_t>& k, float scale,
                                    bool export_scores, int heads_per_round,
                                    int64_t capacity = -1) {
  const int64_t keys = c.qp + c.nq;
  const int64_t rows = (c.nq + 63) / 64, key_blocks = (keys + 63) / 64;
  const int64_t n = rows * c.qh;
  const int64_t cap = capacity >= 0 ? capacity : n * key_blocks;
  DeviceBuffer dq = Up(q), dk = Up(k);
  DeviceBuffer bo = Alloc((n + 1) * 8), co = Alloc((n + 1) * 8), blocks = Alloc(cap * 4);
  DeviceBuffer scores = Alloc(export_scores ? c.qh * rows * key_blocks * 4 : 16);
  BlockSparseIndexParams p;
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
  p.top_blocks = c.top;
  p.scores = export_scores ? scores.as<float>() : nullptr;
  p.block_offsets = bo.as<int64_t>();
  p.column_offsets = co.as<int64_t>();
  p.blocks = blocks.as<int32_t>();
  p.blocks_capacity = cap;
  const size_t ws_bytes = BlockSparseIndexWorkspaceBytes(p, heads_per_round);
  EXPECT_GT(ws_bytes, 0u);
  DeviceBuffer ws = Alloc(ws_bytes);
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  GpuBlockSparseResult r;
  r.status = BuildBlockSparseIndex(p, nullptr);
  EXPECT_TRUE(SynchronizeDevice().ok());
  r.total = p.total_blocks;
  const auto block_offsets = *Download<int64_t>(bo.data(), n + 1);
  r.offsets_total = block_offsets[n];
  if (!r.status.ok()) return r;
  r.index = HeadsOf(block_offsets,
                    *Download<int32_t>(blocks.data(), std::max<int64_t>(1, p.total_blocks)),
                    *Download<int64_t>(co.data(), n + 1), c.qh, rows);
  if (export_scores) r.scores = *Download<float>(scores.data(), c.qh * rows * key_blocks);
  return r;
}

// The CPU reference's params over the fp32 images of q and k.
kernels::AttentionParams RefParams(const BlockCase& c, const std::vector<float>& q,
                                   const std::vector<float>& k, float scale,
                                   std::vector<float>& out) {
  kernels::AttentionParams ref;
  ref.q = q.data();
  ref.ldq = static_cast<int64_t>(c.qh) * c.d;
  ref.k = k.data();
  ref.v = k.data();
  ref.ldkv = static_cast<int64_t>(c.kvh) * c.d;
  out.resize(q.size());
  ref.out = out.data();
  ref.ldo = ref.ldq;
  ref.num_queries = c.nq;
  ref.query_position = c.qp;
  ref.num_keys = c.qp + c.nq;
  ref.num_q_heads = c.qh;
  ref.num_kv_heads = c.kvh;
  ref.head_dim = c.d;
  ref.scale = scale;
  return ref;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The GPU build of `c` (scores exported, and again in rounds of one head and of three)
// against the reference: every pooled score bit for bit, every head's lists equal.
void ExpectBlockSparseEqualsReference(const BlockCase& c, const std::vector<uint16_t>& q_bits,
                                      const std::vector<float>& q, const std::vector<uint16_t>& k_bits,
                                      const std::vector<float>& k) {
  SCOPED_TRACE(Describe(c));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  const int64_t rows = (c.nq + 63) / 64, key_blocks = (c.qp + c.nq + 63) / 64;
  const GpuBlockSparseResult got = GpuBlockSparse(c, q_bits, k_bits, scale, true, 1);
  ASSERT_TRUE(got.status.ok()) << got.status;
  ASSERT_EQ(got.index.size(), static_cast<size_t>(c.qh));
  std::vector<float> out;
  const kernels::AttentionParams ref = RefParams(c, q, k, scale, out);
  const SparseShape shape{c.nq, c.qp};
  int64_t want_total = 0;
  for (int h = 0; h < c.qh; ++h) {
    auto want_scores = kernels::PooledBlockScores(ref, h);
    ASSERT_TRUE(want_scores.ok()) << want_scores.status();
    int bad = 0;
    for (int64_t i = 0; i < rows * key_blocks; ++i) {
      const float g = got.scores[h * rows * key_blocks + i], w = (*want_scores)[i];
      // Any NaN ranks as NaN: its sign and payload (which differ between the CPU's and the
      // GPU's NaN-producing operations) do not count.
      const bool same = Bits(g) == Bits(w) || (std::isnan(g) && std::isnan(w));
      if (!same && ++bad <= 3) {
        ADD_FAILURE() << "head " << h << " row block " << i / key_blocks << " key block "
                      << i % key_blocks << ": gpu " << g << ", reference " << w;
      }
    }
    EXPECT_EQ(bad, 0) << "head " << h;
    auto want = kernels::BuildBlockSparseIndex(ref, h, {c.top});
    ASSERT_TRUE(want.ok()) << want.status();
    ExpectSameIndex(got.index[h], *want, h);
    EXPECT_TRUE(ValidateSparseIndex(got.index[h], shape).ok()) << "head " << h;
    want_total += static_cast<int64_t>(want->blocks.size());
  }
  EXPECT_EQ(got.total, want_total);
  EXPECT_EQ(got.offsets_total, want_total);
  // The workspace path, one head a round and three: the same lists.
  for (const int per_round : {1, 3}) {
    const GpuBlockSparseResult again = GpuBlockSparse(c, q_bits, k_bits, scale, false, per_round);
    ASSERT_TRUE(again.status.ok()) << again.status;
    for (int h = 0; h < c.qh; ++h) ExpectSameIndex(again.index[h], got.index[h], h);
  }
}

TEST(SparseIndexGpu, BlockSparseIndexEqualsTheReferenceBitForBit) {
  TIERKV_REQUIRE_GPU();
  for (const BlockCase& c : {
           BlockCase{1000, 0, 4, 2, 128, 5},      // GQA.
           BlockCase{777, 4321, 4, 1, 64, 8},     // Continuation (4321 % 64 = 33), GQA 4:1.
           BlockCase{50, 0, 2, 2, 128, 3},        // One partial row block.
           BlockCase{40, 100, 2, 1, 64, 2},       // One partial row block over two key blocks.
           BlockCase{300, 0, 2, 1, 128, 1000},    // Budget above the visible blocks.
           BlockCase{64, 64, 3, 1, 128, 1},       // Only the own blocks.
           BlockCase{1, 500, 2, 2, 64, 4},        // A single query.
           BlockCase{9000, 0, 2, 1, 64, 40},      // Several tiles, some wholly invisible.
           BlockCase{5000, 3000, 4, 2, 128, 30},  // Several tiles, continuation.
           BlockCase{200, 300000, 2, 1, 64, 50},  // Rows of > 4096 blocks (keys not cached).
       }) {
    const int64_t keys = c.qp + c.nq;
    Bf16Tensor q(c.nq * c.qh * c.d), k(keys * c.kvh * c.d);
    ExpectBlockSparseEqualsReference(c, q.bits, q.f32, k.bits, k.f32);
  }
}

// Equal scores everywhere (ties go to the lower blocks), and scores that are +infinity,
// -infinity and NaN (NaN after every number; the own blocks stay in against +infinity).
TEST(SparseIndexGpu, BlockSparseTiesAndNonFiniteScoresMatchTheReference) {
  TIERKV_REQUIRE_GPU();
  const BlockCase c{700, 90, 4, 2, 64, 4};
  const int64_t keys = c.qp + c.nq;
  auto images = [](const std::vector<uint16_t>& bits) {
    std::vector<float> f(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) f[i] = Bf16ToFloat(bits[i]);
    return f;
  };
  for (const float value : {0.5f, 0.0f, -0.0f}) {
    SCOPED_TRACE(testing::Message() << "every input " << value);
    std::vector<uint16_t> q(c.nq * c.qh * c.d, FloatToBf16(value)),
        k(keys * c.kvh * c.d, FloatToBf16(value));
    ExpectBlockSparseEqualsReference(c, q, images(q), k, images(k));
  }
  Bf16Tensor q(c.nq * c.qh * c.d), k(keys * c.kvh * c.d);
  auto set_key_block = [&](int64_t b, auto value_of) {
    for (int64_t j = b * 64; j < std::min(keys, b * 64 + 64); ++j) {
      for (int e = 0; e < c.kvh * c.d; ++e) k.bits[j * c.kvh * c.d + e] = value_of(e);
    }
  };
  const uint16_t nan = FloatToBf16(std::numeric_limits<float>::quiet_NaN());
  set_key_block(1, [&](int e) { return e % c.d == 0 ? nan : FloatToBf16(0.1f); });
  set_key_block(2, [](int) { return FloatToBf16(1e30f); });
  set_key_block(3, [](int) { return FloatToBf16(-1e30f); });
  set_key_block(4, [](int) { return FloatToBf16(3e38f); });  // The sum overflows.
  for (int64_t row = 5 * 64; row < 6 * 64; ++row) {  // Row block 5 points along everything.
    for (int e = 0; e < c.qh * c.d; ++e) q.bits[row * c.qh * c.d + e] = FloatToBf16(1e30f);
  }
  ExpectBlockSparseEqualsReference(c, q.bits, images(q.bits), k.bits, images(k.bits));
}

TEST(SparseIndexGpu, AShapeAndBlockSparseRunOutOfRoomNamingTheirTotals) {
  TIERKV_REQUIRE_GPU();
  const SparseShape shape{777, 4321};
  const AShapeParams a{100, 300};
  auto want = kernels::AShapeIndex(shape, a);
  ASSERT_TRUE(want.ok());
  const int heads = 3;
  const int64_t total = heads * static_cast<int64_t>(want->blocks.size());
  for (const int64_t capacity : {int64_t{0}, total - 1}) {
    std::vector<SparseHeadIndex> unused;
    int64_t got_total = 0;
    absl::Status s = GpuAShape(shape, a, heads, capacity, &unused, &got_total);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(total, " blocks; room for ", capacity)));
    EXPECT_EQ(got_total, total);
  }
  std::vector<SparseHeadIndex> fits;
  ASSERT_TRUE(GpuAShape(shape, a, heads, total, &fits).ok());

  const BlockCase c{1000, 70, 4, 2, 64, 6};
  Bf16Tensor q(c.nq * c.qh * c.d), k((c.qp + c.nq) * c.kvh * c.d);
  std::vector<float> out;
  const float scale = 0.125f;
  auto one = kernels::BuildBlockSparseIndex(RefParams(c, q.f32, k.f32, scale, out), 0, {c.top});
  ASSERT_TRUE(one.ok());
  const int64_t block_total = c.qh * static_cast<int64_t>(one->blocks.size());  // Counts fixed.
  const GpuBlockSparseResult r =
      GpuBlockSparse(c, q.bits, k.bits, scale, false, 1, block_total - 1);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted) << r.status;
  EXPECT_THAT(r.status.message(),
              HasSubstr(absl::StrCat(block_total, " blocks; room for ", block_total - 1)));
  EXPECT_EQ(r.total, block_total);
  EXPECT_EQ(r.offsets_total, block_total);
  EXPECT_TRUE(GpuBlockSparse(c, q.bits, k.bits, scale, false, 1, block_total).status.ok());
}

// Parameter checks return before any CUDA call (the workspace is checked last, and is null
// here but where its size is the point), so this runs without a GPU too. The pointers are
// never dereferenced.
TEST(SparseIndexGpu, AShapeAndBlockSparseRefuseBadParamsNamingTheField) {
  int64_t* fake_offsets = reinterpret_cast<int64_t*>(uintptr_t{4096});
  int32_t* fake_blocks = reinterpret_cast<int32_t*>(uintptr_t{8192});
  const Bf16* fake_bf16 = reinterpret_cast<const Bf16*>(uintptr_t{16384});
  auto expect_refused = [](const absl::Status& s, const std::string& field) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field << ": " << s;
    EXPECT_THAT(std::string(s.message()), StartsWith(field + ":")) << s;
  };
  AShapeIndexParams a;
  a.heads = 2;
  a.num_queries = 100;
  a.query_position = 10;
  a.block_offsets = fake_offsets;
  a.column_offsets = fake_offsets;
  a.blocks = fake_blocks;
  a.blocks_capacity = 1000;
  {
    AShapeIndexParams p = a;
    expect_refused(BuildAShapeIndex(p, nullptr), "workspace");  // The baseline is valid.
  }
  auto a_with = [&](auto change, const std::string& field) {
    AShapeIndexParams p = a;
    change(p);
    expect_refused(BuildAShapeIndex(p, nullptr), field);
    EXPECT_EQ(AShapeIndexWorkspaceBytes(p), 0u) << field;
  };
  a_with([](AShapeIndexParams& p) { p.heads = 0; }, "heads");
  a_with([](AShapeIndexParams& p) { p.num_queries = 0; }, "num_queries");
  a_with([](AShapeIndexParams& p) { p.query_position = -1; }, "query_position");
  a_with([](AShapeIndexParams& p) { p.n_init = -1; }, "n_init");
  a_with([](AShapeIndexParams& p) { p.local = 0; }, "local");
  a_with([](AShapeIndexParams& p) { p.block_offsets = nullptr; }, "block_offsets");
  a_with([](AShapeIndexParams& p) { p.column_offsets = nullptr; }, "column_offsets");
  a_with([](AShapeIndexParams& p) { p.blocks = nullptr; }, "blocks");
  a_with([](AShapeIndexParams& p) { p.blocks_capacity = -1; }, "blocks_capacity");
  a_with([](AShapeIndexParams& p) { p.query_position = int64_t{1} << 30; }, "keys");

  BlockSparseIndexParams b;
  b.q = fake_bf16;
  b.ldq = 4 * 64;
  b.k = fake_bf16;
  b.ldkv = 2 * 64;
  b.num_queries = 100;
  b.query_position = 10;
  b.num_q_heads = 4;
  b.num_kv_heads = 2;
  b.head_dim = 64;
  b.scale = 0.125f;
  b.top_blocks = 4;
  b.block_offsets = fake_offsets;
  b.column_offsets = fake_offsets;
  b.blocks = fake_blocks;
  b.blocks_capacity = 1000;
  {
    BlockSparseIndexParams p = b;
    expect_refused(BuildBlockSparseIndex(p, nullptr), "workspace");
  }
  auto b_with = [&](auto change, const std::string& field) {
    BlockSparseIndexParams p = b;
    change(p);
    expect_refused(BuildBlockSparseIndex(p, nullptr), field);
    EXPECT_EQ(BlockSparseIndexWorkspaceBytes(p, 1), 0u) << field;
  };
  b_with([](BlockSparseIndexParams& p) { p.num_kv_heads = 3; }, "num_q_heads");
  b_with([](BlockSparseIndexParams& p) { p.num_q_heads = 0; }, "num_q_heads");
  b_with([](BlockSparseIndexParams& p) { p.num_queries = 0; }, "num_queries");
  b_with([](BlockSparseIndexParams& p) { p.query_position = -5; }, "query_position");
  b_with([](BlockSparseIndexParams& p) { p.head_dim = 72; }, "head_dim");
  b_with([](BlockSparseIndexParams& p) { p.head_dim = 512; }, "head_dim");
  b_with([](BlockSparseIndexParams& p) { p.scale = 0.0f; }, "scale");
  b_with([](BlockSparseIndexParams& p) { p.scale = std::nanf(""); }, "scale");
  b_with([](BlockSparseIndexParams& p) { p.top_blocks = 0; }, "top_blocks");
  b_with([](BlockSparseIndexParams& p) { p.q = nullptr; }, "q");
  b_with([](BlockSparseIndexParams& p) { p.k = nullptr; }, "k");
  b_with([](BlockSparseIndexParams& p) { p.ldq = 4 * 64 - 1; }, "ldq");
  b_with([](BlockSparseIndexParams& p) { p.ldkv = 64; }, "ldkv");
  b_with([](BlockSparseIndexParams& p) { p.block_offsets = nullptr; }, "block_offsets");
  b_with([](BlockSparseIndexParams& p) { p.column_offsets = nullptr; }, "column_offsets");
  b_with([](BlockSparseIndexParams& p) { p.blocks = nullptr; }, "blocks");
  b_with([](BlockSparseIndexParams& p) { p.blocks_capacity = -1; }, "blocks_capacity");
  b_with([](BlockSparseIndexParams& p) { p.query_position = int64_t{1} << 30; }, "keys");
  // 2^30 keys (2^24 key blocks) from 10000 queries (157 row blocks): 2^31 or more pooled
  // scores a head.
  b_with(
      [](BlockSparseIndexParams& p) {
        p.num_queries = 10000;
        p.query_position = (int64_t{1} << 30) - 10000;
      },
      "keys");
}

// The block-sparse build for a Llama-3-8B layer at 128K tokens (all heads a round, the
// pooled scores in the workspace): its time, and two heads against the reference.
TEST(SparseIndexGpu, BlockSparseIndexOfALayerAt128KEqualsTheReferenceAndPrintsItsTime) {
  TIERKV_REQUIRE_GPU();
  const BlockCase c{131072, 0, 32, 8, 128, 64};
  const int64_t rows = c.nq / 64;
  Bf16Tensor q(c.nq * c.qh * c.d, 0.5f, /*fast=*/true), k(c.nq * c.kvh * c.d, 0.5f, true);
  DeviceBuffer dq = Up(q.bits), dk = Up(k.bits);
  const int64_t n = rows * c.qh;
  const int64_t cap = n * c.top;
  DeviceBuffer bo = Alloc((n + 1) * 8), co = Alloc((n + 1) * 8), blocks = Alloc(cap * 4);
  BlockSparseIndexParams p;
  p.q = dq.as<Bf16>();
  p.ldq = static_cast<int64_t>(c.qh) * c.d;
  p.k = dk.as<Bf16>();
  p.ldkv = static_cast<int64_t>(c.kvh) * c.d;
  p.num_queries = c.nq;
  p.num_q_heads = c.qh;
  p.num_kv_heads = c.kvh;
  p.head_dim = c.d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  p.top_blocks = c.top;
  p.block_offsets = bo.as<int64_t>();
  p.column_offsets = co.as<int64_t>();
  p.blocks = blocks.as<int32_t>();
  p.blocks_capacity = cap;
  DeviceBuffer ws = Alloc(BlockSparseIndexWorkspaceBytes(p, c.qh));
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  auto run = [&] {
    absl::Status s = BuildBlockSparseIndex(p, nullptr);
    if (s.ok()) s = SynchronizeDevice();
    return s;
  };
  const double ms = MillisPerRun(run, 5);
  ASSERT_GT(ms, 0) << "a run failed";
  std::printf("block-sparse index, %lld tokens, %d q heads / %d kv heads, head_dim %d, top %lld "
              "blocks: %.2f ms a layer (pooling + pooled scores + selection, %lld blocks "
              "listed; workspace %.0f MiB)\n",
              static_cast<long long>(c.nq), c.qh, c.kvh, c.d, static_cast<long long>(c.top), ms,
              static_cast<long long>(p.total_blocks), ws.size() / 1048576.0);
  const auto block_offsets = *Download<int64_t>(bo.data(), n + 1);
  const auto all_blocks = *Download<int32_t>(blocks.data(), p.total_blocks);
  const auto heads = HeadsOf(block_offsets, all_blocks, *Download<int64_t>(co.data(), n + 1),
                             c.qh, rows);
  for (const int h : {0, c.qh - 1}) {
    // One head's fp32 images (the whole layer's would take 2.5 GB).
    const int g = h / (c.qh / c.kvh);
    std::vector<float> qh(c.nq * c.d), kh(c.nq * c.d), out(c.nq * c.d);
    for (int64_t i = 0; i < c.nq; ++i) {
      for (int e = 0; e < c.d; ++e) {
        qh[i * c.d + e] = Bf16ToFloat(q.bits[(i * c.qh + h) * c.d + e]);
        kh[i * c.d + e] = Bf16ToFloat(k.bits[(i * c.kvh + g) * c.d + e]);
      }
    }
    kernels::AttentionParams ref;
    ref.q = qh.data();
    ref.ldq = c.d;
    ref.k = kh.data();
    ref.v = kh.data();
    ref.ldkv = c.d;
    ref.out = out.data();
    ref.ldo = c.d;
    ref.num_queries = c.nq;
    ref.num_keys = c.nq;
    ref.num_q_heads = 1;
    ref.num_kv_heads = 1;
    ref.head_dim = c.d;
    ref.scale = p.scale;
    auto want = kernels::BuildBlockSparseIndex(ref, 0, {c.top});
    ASSERT_TRUE(want.ok()) << want.status();
    ExpectSameIndex(heads[h], *want, h);
  }
}

}  // namespace
}  // namespace tierkv::kernels::cuda
