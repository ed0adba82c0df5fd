// Each kernel against the naive reference over a sweep of shapes with fresh random inputs
// and NaN-poisoned outputs; and the determinism contract of ops.h: an output element has
// the same bits however the call is split and whatever the pool size.
#include "kernels/ops.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/internal/simd.h"
#include "kernels/reference.h"

namespace tierkv::kernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> RandomVector(std::mt19937_64& rng, size_t n, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Pools of several sizes, created once: null (inline), 1, 2, 3 and 5 threads.
std::vector<ThreadPool*> Pools() {
  static auto* pools = new std::vector<std::unique_ptr<ThreadPool>>();
  if (pools->empty()) {
    for (int n : {1, 2, 3, 5}) pools->push_back(std::make_unique<ThreadPool>(n));
  }
  std::vector<ThreadPool*> out = {nullptr};
  for (auto& p : *pools) out.push_back(p.get());
  return out;
}

ThreadPool* Pool2() { return Pools()[2]; }

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// |got - want| <= atol + rtol * scale for every element; NaN never passes.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double atol,
                 double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = atol + rtol * std::abs(want[i]);
    if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      if (++bad <= 5) {
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
      }
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// ---------------------------------------------------------------------------------------
// SIMD building blocks.

TEST(Simd, ReduceSum16MatchesReduceSumBitwise) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    internal::V16 a[16];
    for (auto& v : a) {
      for (int l = 0; l < 16; ++l) v[l] = std::ldexp(RandomVector(rng, 1)[0], trial % 40 - 20);
    }
    const internal::V16 sums = internal::ReduceSum16(a);
    for (int j = 0; j < 16; ++j) {
      const float one = internal::ReduceSum(a[j]);
      EXPECT_EQ(std::memcmp(&one, &sums[j], 4), 0) << "vector " << j;
    }
  }
}

TEST(Simd, ExpIsAccurateAndHandlesSpecialValues) {
  std::vector<float> xs;
  for (float x = -100.0f; x <= 100.0f; x += 0.0137f) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1.0f, -1.0f, 88.0f, 88.5f, 88.72f, 88.73f, -87.3f, -87.4f,
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity()}) {
    xs.push_back(x);
  }
  while (xs.size() % 16 != 0) xs.push_back(0.0f);
  for (size_t i = 0; i < xs.size(); i += 16) {
    const internal::V16 y = internal::Exp(internal::Load(xs.data() + i));
    for (int l = 0; l < 16; ++l) {
      const float x = xs[i + l];
      const double want = std::exp(static_cast<double>(x));
      if (x < -87.33655f) {
        EXPECT_EQ(y[l], 0.0f) << x;
      } else if (want > std::numeric_limits<float>::max()) {
        EXPECT_EQ(y[l], std::numeric_limits<float>::infinity()) << x;
      } else {
        EXPECT_NEAR(y[l], want, want * 3e-7) << x;
      }
    }
  }
  const internal::V16 zero = internal::Exp(internal::V16{});
  EXPECT_EQ(zero[0], 1.0f);
  const internal::V16 nan = internal::Exp(internal::Splat(kNaN));
  EXPECT_TRUE(std::isnan(nan[3]));
}

// ---------------------------------------------------------------------------------------
// Matmul.

struct MatmulCase {
  int64_t m, n, k;
  bool bias, accumulate;
};

TEST(Matmul, MatchesReferenceOverShapes) {
  std::mt19937_64 rng(42);
  std::vector<MatmulCase> cases;
  for (int64_t m : {1, 2, 3, 4, 5, 17, 64, 67, 130}) {
    for (int64_t n : {1, 3, 4, 16, 17, 33, 70}) {
      for (int64_t k : {0, 1, 7, 16, 17, 64, 100}) {
        cases.push_back({m, n, k, (m + n + k) % 2 == 0, (m * n + k) % 3 == 0});
      }
    }
  }
  for (const MatmulCase& c : cases) {
    const int64_t ldx = c.k + (c.m % 3), ldw = c.k + (c.n % 2), ldy = c.n + 1;
    std::vector<float> x = RandomVector(rng, c.m * ldx), w = RandomVector(rng, c.n * ldw);
    std::vector<float> bias = RandomVector(rng, c.n);
    std::vector<float> y0 = c.accumulate ? RandomVector(rng, c.m * ldy)
                                         : std::vector<float>(c.m * ldy, kNaN);
    MatmulParams p{x.data(), ldx, w.data(), ldw, c.bias ? bias.data() : nullptr,
                   nullptr,  ldy, c.m,      c.n, c.k,    c.accumulate};
    std::vector<float> want = y0;
    p.y = want.data();
    reference::Matmul(p);
    std::vector<float> got = y0;
    p.y = got.data();
    ASSERT_TRUE(Matmul(p, Pool2()).ok());
    // Compare only the m x n outputs (the stride padding keeps its poison).
    std::vector<float> g, r;
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        g.push_back(got[i * ldy + j]);
        r.push_back(want[i * ldy + j]);
      }
    }
    ExpectClose(g, r, 1e-5 * (c.k + 2), 1e-6,
                "m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) +
                    " k=" + std::to_string(c.k));
    if (!c.accumulate) {
      for (int64_t i = 0; i < c.m; ++i) EXPECT_TRUE(std::isnan(got[i * ldy + c.n]));
    }
  }
}

TEST(Matmul, RowsAreBitwiseIndependentOfBatchingAndThreads) {
  std::mt19937_64 rng(7);
  for (int64_t k : {64, 100, 512}) {
    const int64_t m = 75, n = 70;
    std::vector<float> x = RandomVector(rng, m * k), w = RandomVector(rng, n * k);
    std::vector<float> bias = RandomVector(rng, n);
    auto run = [&](int64_t row0, int64_t rows, ThreadPool* pool, std::vector<float>& y) {
      MatmulParams p{x.data() + row0 * k, k, w.data(), k, bias.data(), y.data() + row0 * n,
                     n, rows, n, k, false};
      ASSERT_TRUE(Matmul(p, pool).ok());
    };
    std::vector<float> whole(m * n, kNaN);
    run(0, m, nullptr, whole);
    for (ThreadPool* pool : Pools()) {
      // One call, every row alone, and uneven runs of rows.
      std::vector<float> same(m * n, kNaN), alone(m * n, kNaN), runs(m * n, kNaN);
      run(0, m, pool, same);
      for (int64_t i = 0; i < m; ++i) run(i, 1, pool, alone);
      for (int64_t i = 0, len = 1; i < m; i += len, len = len % 6 + 1) {
        run(i, std::min(len, m - i), pool, runs);
      }
      EXPECT_TRUE(SameBits(whole, same)) << "k=" << k;
      EXPECT_TRUE(SameBits(whole, alone)) << "k=" << k;
      EXPECT_TRUE(SameBits(whole, runs)) << "k=" << k;
    }
  }
}

TEST(Matmul, RejectsBadParams) {
  float buf[16] = {};
  MatmulParams p{buf, 2, buf, 4, nullptr, buf, 4, 2, 2, 4, false};
  EXPECT_EQ(Matmul(p, nullptr).code(), absl::StatusCode::kInvalidArgument);  // ldx < k
  p.ldx = 4;
  p.y = nullptr;
  EXPECT_EQ(Matmul(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.y = buf;
  p.m = -1;
  EXPECT_EQ(Matmul(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// RMSNorm, RoPE, SwiGLU.

TEST(RmsNorm, MatchesReferenceAndIsRowIndependent) {
  std::mt19937_64 rng(3);
  for (int64_t dim : {1, 15, 16, 64, 100, 512}) {
    for (int64_t rows : {1, 5, 33}) {
      std::vector<float> x = RandomVector(rng, rows * dim, -3, 3);
      std::vector<float> w = RandomVector(rng, dim, 0.5, 1.5);
      std::vector<float> got(rows * dim, kNaN), want(rows * dim, kNaN);
      RmsNormParams p{x.data(), dim, w.data(), got.data(), dim, rows, dim, 1e-5f};
      ASSERT_TRUE(RmsNorm(p, Pool2()).ok());
      p.y = want.data();
      reference::RmsNorm(p);
      ExpectClose(got, want, 1e-6, 2e-6, "rmsnorm dim=" + std::to_string(dim));
      std::vector<float> alone(rows * dim, kNaN);
      for (int64_t r = 0; r < rows; ++r) {
        RmsNormParams one{x.data() + r * dim, dim, w.data(), alone.data() + r * dim, dim, 1, dim,
                          1e-5f};
        ASSERT_TRUE(RmsNorm(one, nullptr).ok());
      }
      EXPECT_TRUE(SameBits(got, alone));
    }
  }
  // In place.
  std::vector<float> x = RandomVector(rng, 64), w(64, 1.0f), copy = x, out(64, kNaN);
  RmsNormParams p{x.data(), 64, w.data(), out.data(), 64, 1, 64, 1e-6f};
  ASSERT_TRUE(RmsNorm(p, nullptr).ok());
  p.y = x.data();
  ASSERT_TRUE(RmsNorm(p, nullptr).ok());
  EXPECT_TRUE(SameBits(x, out));
}

TEST(Rope, MatchesReferenceAndTablesAreSplitInvariant) {
  std::mt19937_64 rng(4);
  for (int head_dim : {2, 16, 64, 128}) {
    const int half = head_dim / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) {
      inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / head_dim));
    }
    const int64_t rows = 37, start = 1000;
    const int heads = 3;
    std::vector<float> cos(rows * half, kNaN), sin(rows * half, kNaN);
    RopeCosSin(inv_freq, start, rows, cos.data(), sin.data());
    std::vector<float> rcos(rows * half), rsin(rows * half);
    reference::RopeCosSin(inv_freq, start, rows, rcos.data(), rsin.data());
    // The fp32 angle (as Hugging Face computes it) differs from the exact one by at most
    // half an ulp of position * inv_freq.
    ExpectClose(cos, rcos, 2e-4, 0, "cos");
    ExpectClose(sin, rsin, 2e-4, 0, "sin");
    std::vector<float> cos2(rows * half), sin2(rows * half);
    RopeCosSin(inv_freq, start, 10, cos2.data(), sin2.data());
    RopeCosSin(inv_freq, start + 10, rows - 10, cos2.data() + 10 * half, sin2.data() + 10 * half);
    EXPECT_TRUE(SameBits(cos, cos2));
    EXPECT_TRUE(SameBits(sin, sin2));

    const int64_t ldx = heads * head_dim + 5;
    std::vector<float> x = RandomVector(rng, rows * ldx, -2, 2);
    std::vector<float> got = x, want = x;
    RopeParams p{got.data(), ldx, rows, heads, head_dim, cos.data(), sin.data()};
    ASSERT_TRUE(ApplyRope(p, Pool2()).ok());
    p.x = want.data();
    reference::ApplyRope(p);
    ExpectClose(got, want, 1e-6, 1e-6, "rope head_dim=" + std::to_string(head_dim));
  }
}

TEST(SwiGlu, MatchesReferenceOverShapes) {
  std::mt19937_64 rng(5);
  for (int64_t inter : {1, 15, 16, 100, 1408}) {
    const int64_t rows = 9;
    std::vector<float> gu = RandomVector(rng, rows * 2 * inter, -12, 12);
    std::vector<float> got(rows * inter, kNaN), want(rows * inter, kNaN);
    SwiGluParams p{gu.data(), 2 * inter, got.data(), inter, rows, inter};
    ASSERT_TRUE(SwiGlu(p, Pool2()).ok());
    p.out = want.data();
    reference::SwiGlu(p);
    ExpectClose(got, want, 1e-6, 1e-6, "swiglu inter=" + std::to_string(inter));
  }
}

// ---------------------------------------------------------------------------------------
// Attention.

struct AttnShape {
  int hq, hkv, d;
  int64_t num_queries, query_position, window;
};

struct AttnData {
  AttnShape s;
  int64_t num_keys;
  std::vector<float> q, k, v;
  AttentionParams Params(float* out) {
    AttentionParams p;
    p.q = q.data();
    p.ldq = static_cast<int64_t>(s.hq) * s.d;
    p.k = k.data();
    p.v = v.data();
    p.ldkv = static_cast<int64_t>(s.hkv) * s.d;
    p.out = out;
    p.ldo = p.ldq;
    p.num_queries = s.num_queries;
    p.query_position = s.query_position;
    p.num_keys = num_keys;
    p.num_q_heads = s.hq;
    p.num_kv_heads = s.hkv;
    p.head_dim = s.d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(s.d));
    p.sliding_window = s.window;
    return p;
  }
};

AttnData MakeAttn(std::mt19937_64& rng, AttnShape s, int64_t extra_keys = 0) {
  AttnData a{s, s.query_position + s.num_queries + extra_keys, {}, {}, {}};
  a.q = RandomVector(rng, s.num_queries * s.hq * s.d, -2, 2);
  a.k = RandomVector(rng, a.num_keys * s.hkv * s.d, -2, 2);
  a.v = RandomVector(rng, a.num_keys * s.hkv * s.d);
  return a;
}

TEST(Attention, MatchesReferenceOverShapes) {
  std::mt19937_64 rng(6);
  const std::vector<AttnShape> shapes = {
      {1, 1, 16, 1, 0, 0},     {2, 1, 16, 5, 0, 0},     {4, 2, 32, 17, 0, 0},
      {8, 4, 64, 33, 0, 0},    {8, 4, 64, 1, 100, 0},   {8, 4, 64, 20, 45, 0},
      {4, 4, 64, 40, 7, 0},    {6, 2, 128, 19, 30, 0},  {8, 8, 256, 3, 15, 0},
      {8, 4, 64, 50, 0, 5},    {4, 1, 64, 30, 40, 16},  {2, 2, 16, 70, 3, 37},
      {12, 4, 64, 1, 300, 0},  {7, 7, 48, 23, 16, 0},   {8, 2, 64, 64, 64, 0},
      {8, 4, 64, 200, 0, 0},   {5, 5, 80, 130, 70, 0},  {8, 4, 64, 150, 20, 100},
      {4, 2, 256, 70, 60, 0},  {3, 1, 112, 66, 1, 0},
  };
  for (const AttnShape& s : shapes) {
    AttnData a = MakeAttn(rng, s, /*extra_keys=*/3);
    std::vector<float> got(s.num_queries * s.hq * s.d, kNaN), want = got;
    ASSERT_TRUE(Attention(a.Params(got.data()), Pool2()).ok());
    reference::Attention(a.Params(want.data()));
    ExpectClose(got, want, 2e-6, 2e-5,
                "attention hq=" + std::to_string(s.hq) + " hkv=" + std::to_string(s.hkv) +
                    " d=" + std::to_string(s.d) + " nq=" + std::to_string(s.num_queries) +
                    " pos=" + std::to_string(s.query_position) +
                    " window=" + std::to_string(s.window));
  }
}

TEST(Attention, QueriesAreBitwiseIndependentOfSplitsAndThreads) {
  std::mt19937_64 rng(8);
  for (AttnShape s : {AttnShape{8, 4, 64, 150, 0, 0}, AttnShape{4, 2, 128, 90, 40, 0},
                      AttnShape{4, 1, 64, 100, 0, 23}, AttnShape{6, 3, 256, 70, 130, 0},
                      AttnShape{2, 2, 16, 130, 0, 70}}) {
    AttnData a = MakeAttn(rng, s);
    const int64_t row = static_cast<int64_t>(s.hq) * s.d;
    std::vector<float> whole(s.num_queries * row, kNaN);
    ASSERT_TRUE(Attention(a.Params(whole.data()), nullptr).ok());
    for (ThreadPool* pool : Pools()) {
      std::vector<float> same(whole.size(), kNaN);
      ASSERT_TRUE(Attention(a.Params(same.data()), pool).ok());
      EXPECT_TRUE(SameBits(whole, same));
      // Split the queries into runs, as a chunked prefill or decode steps would, each call
      // seeing only the keys up to its last query.
      for (int64_t step : {1, 7, 16, 33}) {
        std::vector<float> split(whole.size(), kNaN);
        for (int64_t r0 = 0; r0 < s.num_queries; r0 += step) {
          AttentionParams p = a.Params(split.data());
          p.num_queries = std::min(step, s.num_queries - r0);
          p.query_position = s.query_position + r0;
          p.num_keys = p.query_position + p.num_queries;
          p.q = a.q.data() + r0 * row;
          p.out = split.data() + r0 * row;
          ASSERT_TRUE(Attention(p, pool).ok());
        }
        EXPECT_TRUE(SameBits(whole, split)) << "step " << step;
      }
      // Full key blocks handed in already transposed, as a KV cache keeps them.
      const int64_t blocks = a.num_keys / kAttentionKeyBlock;
      std::vector<float> kt(std::max<int64_t>(1, blocks) * s.hkv * s.d * kAttentionKeyBlock);
      TransposeKeysParams tp{a.k.data(), static_cast<int64_t>(s.hkv) * s.d, a.num_keys, s.hkv,
                             s.d,        0,                                 blocks,     kt.data()};
      ASSERT_TRUE(TransposeKeys(tp, pool).ok());
      for (int64_t given : {int64_t{0}, blocks / 2, blocks}) {
        std::vector<float> cached(whole.size(), kNaN);
        AttentionParams p = a.Params(cached.data());
        p.kt = kt.data();
        p.kt_blocks = given;
        ASSERT_TRUE(Attention(p, pool).ok());
        EXPECT_TRUE(SameBits(whole, cached)) << given << " blocks given";
      }
    }
  }
}

TEST(TransposeKeys, PutsKeyTOfHeadHDimDAtTheDocumentedOffset) {
  std::mt19937_64 rng(10);
  const int hkv = 3, d = 32;
  const int64_t keys = 150, ldk = hkv * d + 4;
  std::vector<float> k = RandomVector(rng, keys * ldk);
  const int64_t first = 1, last = 3;  // Blocks [1, 3): keys 64 .. 149 and zero padding.
  std::vector<float> kt((last - first) * hkv * d * kAttentionKeyBlock, kNaN);
  ASSERT_TRUE(TransposeKeys({k.data(), ldk, keys, hkv, d, first, last, kt.data()}, Pool2()).ok());
  for (int64_t b = first; b < last; ++b) {
    for (int h = 0; h < hkv; ++h) {
      for (int dd = 0; dd < d; ++dd) {
        for (int t = 0; t < kAttentionKeyBlock; ++t) {
          const int64_t key = b * kAttentionKeyBlock + t;
          const float want = key < keys ? k[key * ldk + h * d + dd] : 0.0f;
          const float got =
              kt[(((b - first) * hkv + h) * d + dd) * kAttentionKeyBlock + t];
          ASSERT_EQ(got, want) << "b=" << b << " h=" << h << " d=" << dd << " t=" << t;
        }
      }
    }
  }
}

TEST(Attention, RejectsBadParams) {
  std::mt19937_64 rng(9);
  AttnData a = MakeAttn(rng, {8, 4, 64, 4, 0, 0});
  std::vector<float> out(4 * 8 * 64);
  AttentionParams p = a.Params(out.data());
  p.num_q_heads = 6;
  EXPECT_EQ(Attention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = a.Params(out.data());
  p.head_dim = 24;
  EXPECT_EQ(Attention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = a.Params(out.data());
  p.num_keys = 3;
  EXPECT_EQ(Attention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tierkv::kernels
