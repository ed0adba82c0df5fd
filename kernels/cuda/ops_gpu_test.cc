// GPU kernels of kernels/cuda/ops.h against the CPU reference (kernels/reference.h) over
// sweeps of shapes, with fresh random inputs and poisoned outputs. Needs an sm_90 GPU; every
// test skips, saying why, where there is none.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"
#include "kernels/random.h"
#include "kernels/reference.h"

namespace tierkv::kernels::cuda {
namespace {


constexpr uint16_t kPoisonBf16 = 0xffff;  // A NaN.

std::mt19937_64& Rng() {
  static std::mt19937_64 rng(20261128);
  return rng;
}

// Fresh bf16 values uniform in [-range, range), returned as bits and as their exact floats.
std::vector<uint16_t> RandomBf16(size_t n, float range, std::vector<float>* as_float) {
  std::uniform_real_distribution<float> d(-range, range);
  std::vector<uint16_t> bits(n);
  as_float->resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = FloatToBf16(d(Rng()));
    (*as_float)[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}

std::vector<float> RandomF32(size_t n, float range) {
  std::uniform_real_distribution<float> d(-range, range);
  std::vector<float> v(n);
  for (float& x : v) x = d(Rng());
  return v;
}

template <typename T>
DeviceBuffer Up(const std::vector<T>& v) {
  absl::StatusOr<DeviceBuffer> b = Upload(std::span<const T>(v));
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

DeviceBuffer Poisoned(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(FillBytes(b->data(), 0xff, bytes).ok());
  return std::move(*b);
}

std::vector<float> DownBf16(const DeviceBuffer& b, size_t n) {
  absl::StatusOr<std::vector<uint16_t>> bits = Download<uint16_t>(b.data(), n);
  EXPECT_TRUE(bits.ok()) << bits.status();
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = Bf16ToFloat((*bits)[i]);
  return out;
}

std::vector<float> DownF32(const DeviceBuffer& b, size_t n) {
  absl::StatusOr<std::vector<float>> v = Download<float>(b.data(), n);
  EXPECT_TRUE(v.ok()) << v.status();
  return *v;
}

// ||got - want|| / ||want|| over the elements; +inf when any element of got is NaN (so NaN
// and unwritten, poisoned elements never pass).
double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// bf16 output: one rounding of relative size 2^-9 on top of fp32 arithmetic.
constexpr double kBf16Tolerance = 1e-2;

TEST(CudaGemm, MatchesReferenceOverShapesForBothOutputTypes) {
  TIERKV_REQUIRE_GPU();
  struct Shape {
    int64_t m, n, k;
  };
  for (const Shape s : {Shape{1, 1, 1}, Shape{1, 4096, 512}, Shape{7, 33, 65},
                        Shape{64, 128, 256}, Shape{300, 96, 1000}, Shape{513, 1024, 4096}}) {
    for (const bool f32_out : {false, true}) {
      for (const bool accumulate : {false, true}) {
        if (accumulate && !f32_out) continue;
        SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k
                                        << " f32_out=" << f32_out << " acc=" << accumulate);
        const int64_t ldx = s.k + 8, ldy = s.n + 3;
        std::vector<float> xf, wf;
        const std::vector<uint16_t> x = RandomBf16(s.m * ldx, 1.0f, &xf);
        const std::vector<uint16_t> w = RandomBf16(s.n * s.k, 1.0f, &wf);
        std::vector<float> y0 = RandomF32(s.m * ldy, 1.0f);
        std::vector<float> bf;
        const std::vector<uint16_t> bias = RandomBf16(s.n, 1.0f, &bf);
        const bool with_bias = s.m % 2 == 1;  // Half the shapes.
        DeviceBuffer dx = Up(x), dw = Up(w), db = Up(bias);
        DeviceBuffer dy = f32_out ? (accumulate ? Up(y0) : Poisoned(s.m * ldy * 4))
                                  : Poisoned(s.m * ldy * 2);
        GemmParams p;
        p.x = dx.as<Bf16>();
        p.ldx = ldx;
        p.w = dw.as<Bf16>();
        p.ldw = s.k;
        p.bias = with_bias ? db.as<Bf16>() : nullptr;
        if (f32_out) {
          p.y_f32 = dy.as<float>();
        } else {
          p.y_bf16 = dy.as<Bf16>();
        }
        p.ldy = ldy;
        p.m = s.m;
        p.n = s.n;
        p.k = s.k;
        p.accumulate = accumulate;
        ASSERT_TRUE(Gemm(p, nullptr).ok());
        ASSERT_TRUE(SynchronizeDevice().ok());
        MatmulParams r;
        std::vector<float> want = accumulate ? y0 : std::vector<float>(s.m * ldy, 0.0f);
        r.x = xf.data();
        r.ldx = ldx;
        r.w = wf.data();
        r.ldw = s.k;
        r.bias = with_bias ? bf.data() : nullptr;
        r.y = want.data();
        r.ldy = ldy;
        r.m = s.m;
        r.n = s.n;
        r.k = s.k;
        r.accumulate = accumulate;
        reference::Matmul(r);
        std::vector<float> got = f32_out ? DownF32(dy, s.m * ldy) : DownBf16(dy, s.m * ldy);
        // Compare the written part only; the padding of y must stay as it was.
        std::vector<float> g, wv;
        for (int64_t i = 0; i < s.m; ++i) {
          for (int64_t j = 0; j < ldy; ++j) {
            if (j < s.n) {
              g.push_back(got[i * ldy + j]);
              wv.push_back(want[i * ldy + j]);
            } else if (accumulate) {
              ASSERT_EQ(got[i * ldy + j], y0[i * ldy + j]) << "padding changed";
            }
          }
        }
        EXPECT_LT(RelativeError(g, wv), f32_out ? 1e-4 : kBf16Tolerance);
      }
    }
  }
}

TEST(CudaRmsNorm, MatchesReferenceOverShapes) {
  TIERKV_REQUIRE_GPU();
  for (const int64_t dim : {1, 64, 100, 4096, 5120}) {
    for (const int64_t rows : {1, 3, 129}) {
      SCOPED_TRACE(testing::Message() << "rows=" << rows << " dim=" << dim);
      const int64_t ldx = dim + 5;
      std::vector<float> x = RandomF32(rows * ldx, 3.0f);
      std::vector<float> wf;
      const std::vector<uint16_t> w = RandomBf16(dim, 2.0f, &wf);
      DeviceBuffer dx = Up(x), dw = Up(w), dy = Poisoned(rows * dim * 2);
      RmsNormParams p;
      p.x = dx.as<float>();
      p.ldx = ldx;
      p.weight = dw.as<Bf16>();
      p.y = dy.as<Bf16>();
      p.ldy = dim;
      p.rows = rows;
      p.dim = dim;
      p.eps = 1e-5f;
      ASSERT_TRUE(RmsNorm(p, nullptr).ok());
      std::vector<float> want(rows * dim);
      kernels::RmsNormParams r{x.data(), ldx, wf.data(), want.data(), dim, rows, dim, 1e-5f};
      reference::RmsNorm(r);
      EXPECT_LT(RelativeError(DownBf16(dy, rows * dim), want), kBf16Tolerance);
    }
  }
}

TEST(CudaRopeQkv, RotatesQAndKAndStoresKvAtTheCacheRows) {
  TIERKV_REQUIRE_GPU();
  for (const int head_dim : {64, 128}) {
    for (const auto& [nq, nkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{32, 8}}) {
      const int64_t rows = 37, position0 = 1000, cache_row0 = 5, capacity = 50;
      SCOPED_TRACE(testing::Message() << "head_dim=" << head_dim << " nq=" << nq
                                      << " nkv=" << nkv);
      const int half = head_dim / 2;
      std::vector<float> inv_freq(half);
      for (int i = 0; i < half; ++i) {
        inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / head_dim));
      }
      const int64_t table_rows = position0 + rows;
      std::vector<float> cos(table_rows * half), sin(table_rows * half);
      RopeCosSin(inv_freq, 0, table_rows, cos.data(), sin.data());
      const int64_t width = static_cast<int64_t>(nq + 2 * nkv) * head_dim;
      const int64_t ld_qkv = width + 16;
      std::vector<float> qkvf;
      const std::vector<uint16_t> qkv = RandomBf16(rows * ld_qkv, 2.0f, &qkvf);
      const int64_t kv_row = static_cast<int64_t>(nkv) * head_dim;
      DeviceBuffer dqkv = Up(qkv), dcos = Up(cos), dsin = Up(sin);
      DeviceBuffer dq = Poisoned(rows * nq * head_dim * 2);
      DeviceBuffer dk = Poisoned(capacity * kv_row * 2), dv = Poisoned(capacity * kv_row * 2);
      RopeQkvParams p;
      p.qkv = dqkv.as<Bf16>();
      p.ld_qkv = ld_qkv;
      p.q_out = dq.as<Bf16>();
      p.k_cache = dk.as<Bf16>();
      p.v_cache = dv.as<Bf16>();
      p.cache_row0 = cache_row0;
      p.rows = rows;
      p.position0 = position0;
      p.num_q_heads = nq;
      p.num_kv_heads = nkv;
      p.head_dim = head_dim;
      p.cos = dcos.as<float>();
      p.sin = dsin.as<float>();
      p.table_rows = table_rows;
      ASSERT_TRUE(RopeQkv(p, nullptr).ok());
      // Reference: rotate the q and k parts of the fp32 copy with the CPU kernel.
      std::vector<float> want = qkvf;
      kernels::RopeParams rq{want.data(), ld_qkv, rows, nq + nkv, head_dim,
                             cos.data() + position0 * half, sin.data() + position0 * half};
      reference::ApplyRope(rq);
      std::vector<float> gq = DownBf16(dq, rows * nq * head_dim);
      std::vector<float> gk = DownBf16(dk, capacity * kv_row);
      std::vector<float> gv = DownBf16(dv, capacity * kv_row);
      std::vector<float> got_q, want_q, got_k, want_k;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t e = 0; e < nq * head_dim; ++e) {
          got_q.push_back(gq[r * nq * head_dim + e]);
          want_q.push_back(want[r * ld_qkv + e]);
        }
        for (int64_t e = 0; e < kv_row; ++e) {
          got_k.push_back(gk[(cache_row0 + r) * kv_row + e]);
          want_k.push_back(want[r * ld_qkv + nq * head_dim + e]);
          // V is copied, not rotated: bit for bit.
          ASSERT_EQ(gv[(cache_row0 + r) * kv_row + e],
                    qkvf[r * ld_qkv + (nq + nkv) * head_dim + e]);
        }
      }
      EXPECT_LT(RelativeError(got_q, want_q), kBf16Tolerance);
      EXPECT_LT(RelativeError(got_k, want_k), kBf16Tolerance);
      // Rows outside [cache_row0, cache_row0 + rows) stay untouched (poison).
      EXPECT_TRUE(std::isnan(gk[0]) && std::isnan(gv[(cache_row0 + rows) * kv_row]));
    }
  }
}

TEST(CudaSwiGlu, MatchesReference) {
  TIERKV_REQUIRE_GPU();
  for (const int64_t inter : {1, 100, 14336}) {
    const int64_t rows = 9, ld = 2 * inter + 4;
    std::vector<float> gf;
    const std::vector<uint16_t> g = RandomBf16(rows * ld, 6.0f, &gf);
    DeviceBuffer dg = Up(g), dout = Poisoned(rows * inter * 2);
    SwiGluParams p{dg.as<Bf16>(), ld, dout.as<Bf16>(), inter, rows, inter};
    ASSERT_TRUE(SwiGlu(p, nullptr).ok());
    std::vector<float> want(rows * inter);
    kernels::SwiGluParams r{gf.data(), ld, want.data(), inter, rows, inter};
    reference::SwiGlu(r);
    EXPECT_LT(RelativeError(DownBf16(dout, rows * inter), want), kBf16Tolerance)
        << "inter=" << inter;
  }
}

TEST(CudaEmbedding, CopiesRowsAndMarksBadIdsWithNaN) {
  TIERKV_REQUIRE_GPU();
  const int64_t vocab = 1000, dim = 96, rows = 6;
  std::vector<float> tf;
  const std::vector<uint16_t> table = RandomBf16(vocab * dim, 1.0f, &tf);
  const std::vector<int32_t> ids = {0, 999, 17, -1, 1000, 17};
  DeviceBuffer dt = Up(table), di = Up(ids), dout = Poisoned(rows * dim * 4);
  EmbeddingParams p{di.as<int32_t>(), dt.as<Bf16>(), vocab, dout.as<float>(), dim, rows, dim};
  ASSERT_TRUE(Embedding(p, nullptr).ok());
  const std::vector<float> got = DownF32(dout, rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < dim; ++j) {
      if (ids[r] < 0 || ids[r] >= vocab) {
        ASSERT_TRUE(std::isnan(got[r * dim + j])) << "row " << r;
      } else {
        ASSERT_EQ(got[r * dim + j], tf[ids[r] * dim + j]) << "row " << r;
      }
    }
  }
}

TEST(CudaConvert, F32ToBf16RoundsLikeTheCpuBitForBit) {
  TIERKV_REQUIRE_GPU();
  std::vector<float> v = RandomF32(100000, 1e4f);
  // Ties, specials and the edges of the range.
  for (uint32_t bits : {0x3f808000u, 0x3f818000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                        0x7f7fffffu, 0x00000001u, 0x80000000u}) {
    float f;
    std::memcpy(&f, &bits, 4);
    v.push_back(f);
  }
  DeviceBuffer dv = Up(v), db = Poisoned(v.size() * 2), df = Poisoned(v.size() * 4);
  ASSERT_TRUE(F32ToBf16(dv.as<float>(), db.as<Bf16>(), v.size(), nullptr).ok());
  ASSERT_TRUE(Bf16ToF32(db.as<Bf16>(), df.as<float>(), v.size(), nullptr).ok());
  absl::StatusOr<std::vector<uint16_t>> got = Download<uint16_t>(db.data(), v.size());
  ASSERT_TRUE(got.ok());
  const std::vector<float> back = DownF32(df, v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(v[i])) {
      ASSERT_TRUE(std::isnan(Bf16ToFloat((*got)[i])));
      continue;
    }
    ASSERT_EQ((*got)[i], FloatToBf16(v[i])) << "element " << i << " = " << v[i];
    ASSERT_EQ(back[i], Bf16ToFloat((*got)[i])) << "element " << i;
  }
}

TEST(CudaFillSeeded, EqualsTheCpuFormulaRoundedToBf16) {
  TIERKV_REQUIRE_GPU();
  const uint64_t key = StreamKey(1234, Fnv1a64("model.layers.0.mlp.up_proj.weight"));
  const int64_t count = 300001, offset = 77;
  for (const auto& [scale, shift] : {std::pair{0.015625f, 0.0f}, std::pair{0.125f, 1.0f}}) {
    DeviceBuffer d = Poisoned(count * 2);
    ASSERT_TRUE(FillSeeded(d.as<Bf16>(), count, key, offset, scale, shift, nullptr).ok());
    absl::StatusOr<std::vector<uint16_t>> got = Download<uint16_t>(d.data(), count);
    ASSERT_TRUE(got.ok());
    for (int64_t i = 0; i < count; ++i) {
      const float u = UniformPm1(RandomBits(key, offset + i));
      const float want = shift == 0.0f ? u * scale : 1.0f + u * scale;
      ASSERT_EQ((*got)[i], FloatToBf16(want)) << "element " << i;
    }
  }
}

TEST(CudaArgMax, PicksTheLowestIndexOfTheLargestAndNeverNaN) {
  TIERKV_REQUIRE_GPU();
  const int64_t cols = 128256, rows = 4;
  std::vector<float> logits = RandomF32(rows * cols, 10.0f);
  logits[0 * cols + 5000] = 50.0f;  // Row 0: a clear winner.
  logits[1 * cols + 70000] = 60.0f;  // Row 1: a tie; the lower index wins.
  logits[1 * cols + 90000] = 60.0f;
  logits[1 * cols + 100] = std::numeric_limits<float>::quiet_NaN();
  for (int64_t j = 0; j < cols; ++j) logits[2 * cols + j] = std::nanf("");  // Row 2: all NaN.
  logits[3 * cols + cols - 1] = 70.0f;  // Row 3: the last column.
  DeviceBuffer dl = Up(logits), dout = Poisoned(rows * 4);
  ASSERT_TRUE(ArgMax({dl.as<float>(), cols, rows, cols, dout.as<int32_t>()}, nullptr).ok());
  absl::StatusOr<std::vector<int32_t>> got = Download<int32_t>(dout.data(), rows);
  ASSERT_TRUE(got.ok());
  EXPECT_THAT(*got, testing::ElementsAre(5000, 70000, 0, cols - 1));
}

TEST(CudaScatterKvBlocks, PutsEveryPartOfEveryBlockAtItsRows) {
  TIERKV_REQUIRE_GPU();
  const int layers = 3;
  const int64_t t = 16, row = 64, capacity = 100, row0 = 32, blocks = 4;
  const int64_t part = t * row;
  std::vector<uint16_t> objects(blocks * 2 * layers * part);
  std::mt19937 rng(5);
  for (uint16_t& x : objects) x = static_cast<uint16_t>(rng() & 0x7f7f);  // Never NaN.
  DeviceBuffer dobj = Up(objects), dkv = Poisoned(2 * layers * capacity * row * 2);
  ScatterKvBlocksParams p{dobj.as<Bf16>(), blocks, layers, t, row, dkv.as<Bf16>(), capacity, row0};
  // Rows row0 .. of every part hold scatter block i = object order[i]; the rest is untouched.
  auto check = [&](const DeviceBuffer& dkv_written, const std::vector<int64_t>& order) {
    absl::StatusOr<std::vector<uint16_t>> kv =
        Download<uint16_t>(dkv_written.data(), 2 * layers * capacity * row);
    ASSERT_TRUE(kv.ok());
    for (int64_t pt = 0; pt < 2 * layers; ++pt) {
      for (int64_t r = 0; r < capacity; ++r) {
        const bool written = r >= row0 && r < row0 + blocks * t;
        for (int64_t e = 0; e < row; ++e) {
          const uint16_t got = (*kv)[(pt * capacity + r) * row + e];
          if (!written) {
            ASSERT_EQ(got, kPoisonBf16) << "part " << pt << " row " << r;
            continue;
          }
          const int64_t b = order[(r - row0) / t], tok = (r - row0) % t;
          ASSERT_EQ(got, objects[(b * 2 * layers + pt) * part + tok * row + e])
              << "part " << pt << " row " << r;
        }
      }
    }
  };
  ASSERT_TRUE(ScatterKvBlocks(p, nullptr).ok());
  check(dkv, {0, 1, 2, 3});
  p.row0 = capacity - 10;  // Past the end.
  EXPECT_EQ(ScatterKvBlocks(p, nullptr).code(), absl::StatusCode::kInvalidArgument);

  // The same blocks read where they lie, in another order, through block_starts: block i of
  // the scatter is object order[i].
  const std::vector<int64_t> order = {2, 0, 3, 1};
  std::vector<const Bf16*> starts;
  for (int64_t b : order) starts.push_back(dobj.as<Bf16>() + b * 2 * layers * part);
  absl::StatusOr<DeviceBuffer> dstarts = DeviceBuffer::Allocate(starts.size() * sizeof(void*));
  ASSERT_TRUE(dstarts.ok());
  ASSERT_TRUE(CopyToDevice(dstarts->data(), starts.data(), starts.size() * sizeof(void*)).ok());
  DeviceBuffer dkv2 = Poisoned(2 * layers * capacity * row * 2);
  ScatterKvBlocksParams q{nullptr, blocks, layers, t, row, dkv2.as<Bf16>(), capacity, row0,
                          dstarts->as<const Bf16*>()};
  ASSERT_TRUE(ScatterKvBlocks(q, nullptr).ok());
  check(dkv2, order);
}

TEST(CudaOps, RejectBadParamsWithoutLaunching) {
  // Validation runs before any CUDA call, so this runs on CPU machines too.
  RmsNormParams rn;
  rn.rows = 1;
  rn.dim = 8;
  rn.ldx = 4;
  EXPECT_EQ(RmsNorm(rn, nullptr).code(), absl::StatusCode::kInvalidArgument);
  GemmParams g;
  g.m = g.n = g.k = 4;
  g.ldx = g.ldw = g.ldy = 4;
  EXPECT_EQ(Gemm(g, nullptr).code(), absl::StatusCode::kInvalidArgument);  // No output.
  float dummy = 0;
  g.y_f32 = &dummy;
  g.ldx = 3;
  EXPECT_THAT(Gemm(g, nullptr).message(), testing::HasSubstr("ldx"));
  RopeQkvParams rp;
  rp.rows = 2;
  rp.head_dim = 63;
  rp.num_q_heads = rp.num_kv_heads = 1;
  EXPECT_THAT(RopeQkv(rp, nullptr).message(), testing::HasSubstr("head_dim"));
  rp.head_dim = 64;
  rp.ld_qkv = 192;
  rp.table_rows = 1;
  EXPECT_THAT(RopeQkv(rp, nullptr).message(), testing::HasSubstr("rope tables"));
  EXPECT_EQ(SwiGlu({nullptr, 4, nullptr, 2, 1, 3}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ArgMax({nullptr, 5, 1, 10, nullptr}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(F32ToBf16(nullptr, nullptr, -1, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tierkv::kernels::cuda
