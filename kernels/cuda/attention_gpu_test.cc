// GPU attention (kernels/cuda/ops.h Attention) against a naive double-precision reference on
// the same bf16-rounded inputs: a sweep of head sizes, GQA ratios, query counts, cached
// context lengths, windows and padded strides for every path (the wgmma prefill kernel, the
// mma.sync prefill fallback, decode split-K; the internal launcher forces a path where the
// public call would pick another), plus every INVALID_ARGUMENT case. Each case draws fresh
// inputs (seed printed), poisons the output with bf16 NaN (0xFFFF) first and checks every
// element written and every padding element left alone.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/internal/attention_launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"

namespace tierkv::kernels::cuda {
namespace {

using ::testing::HasSubstr;

std::string DeviceReason() {
  absl::StatusOr<DeviceInfo> info = CurrentDevice();
  if (!info.ok()) return std::string(info.status().ToString());
  return absl::StrCat(info->name, " is compute capability ", info->sm_major, ".",
                      info->sm_minor);
}

// Device memory for one test, freed on destruction.
class DeviceMem {
 public:
  explicit DeviceMem(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) {
      EXPECT_EQ(cudaMalloc(&ptr_, bytes), cudaSuccess) << bytes << " bytes";
    }
  }
  ~DeviceMem() { cudaFree(ptr_); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
void Upload(const DeviceMem& dst, const std::vector<T>& src) {
  ASSERT_EQ(cudaMemcpy(dst.as<void>(), src.data(), src.size() * sizeof(T),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
}

template <typename T>
std::vector<T> Download(const DeviceMem& src, size_t count) {
  std::vector<T> out(count);
  EXPECT_EQ(cudaMemcpy(out.data(), src.as<void>(), count * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return out;
}

struct Case {
  int head_dim = 128;
  int num_kv_heads = 2;
  int group = 1;
  int64_t num_queries = 1;
  int64_t query_position = 0;
  int64_t sliding_window = 0;
  bool padded = false;
  uint32_t seed = 1;

  std::string Name() const {
    return absl::StrCat("hd=", head_dim, " kv_heads=", num_kv_heads, " group=", group,
                        " queries=", num_queries, " position=", query_position,
                        " window=", sliding_window, " padded=", padded, " seed=", seed);
  }
};

// out[r][hq][:] in double, from the bf16 values as floats. Rows are split over threads.
void ReferenceAttention(const Case& c, const std::vector<float>& q, int64_t ldq,
                        const std::vector<float>& k, const std::vector<float>& v,
                        int64_t ldkv, float scale, std::vector<double>& out, int64_t ldo) {
  const int nqh = c.num_kv_heads * c.group, hd = c.head_dim;
  auto rows = [&](int64_t r0, int64_t r1) {
    std::vector<double> w, acc(hd);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t pos = c.query_position + r;
      const int64_t first =
          c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      for (int hq = 0; hq < nqh; ++hq) {
        const int hk = hq / c.group;
        const float* qr = &q[r * ldq + hq * hd];
        w.assign(pos + 1 - first, 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = first; j <= pos; ++j) {
          const float* kr = &k[j * ldkv + hk * hd];
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += static_cast<double>(qr[d]) * kr[d];
          w[j - first] = dot * scale;
          mx = std::max(mx, w[j - first]);
        }
        double total = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= pos; ++j) {
          const double e = std::exp(w[j - first] - mx);
          total += e;
          const float* vr = &v[j * ldkv + hk * hd];
          for (int d = 0; d < hd; ++d) acc[d] += e * vr[d];
        }
        for (int d = 0; d < hd; ++d) out[r * ldo + hq * hd + d] = acc[d] / total;
      }
    }
  };
  const int64_t n = c.num_queries;
  const int threads = static_cast<int>(
      std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(1, n)));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    // Interleaved chunks: later rows have more keys, so a contiguous split would be uneven.
    pool.emplace_back([&, t] {
      for (int64_t r0 = t * 4; r0 < n; r0 += threads * 4) rows(r0, std::min(n, r0 + 4));
    });
  }
  for (std::thread& th : pool) th.join();
}

std::vector<uint16_t> RandomBf16(std::mt19937& rng, size_t count, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<uint16_t> out(count);
  for (uint16_t& x : out) x = FloatToBf16(dist(rng));
  return out;
}

std::vector<float> ToFloat(const std::vector<uint16_t>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = Bf16ToFloat(x[i]);
  return out;
}

// Runs one case on the device and checks it; `stream` may be null. `variant` kPrefillAuto goes
// through the public Attention(); a prefill variant forces that kernel (a wgmma one through
// LaunchPrefillWgmma, so that a silent fallback cannot pass for it).
void RunCase(const Case& c, Stream stream = nullptr, int variant = internal::kPrefillAuto) {
  SCOPED_TRACE(c.Name());
  SCOPED_TRACE(absl::StrCat("variant ", internal::PrefillVariantName(variant)));
  const int nqh = c.num_kv_heads * c.group, hd = c.head_dim;
  const int64_t nq = c.num_queries, nk = c.query_position + c.num_queries;
  // Padding in multiples of 8 elements (16 bytes), the kernels' alignment unit.
  const int64_t ldq = int64_t{nqh} * hd + (c.padded ? 24 : 0);
  const int64_t ldkv = int64_t{c.num_kv_heads} * hd + (c.padded ? 16 : 0);
  const int64_t ldo = int64_t{nqh} * hd + (c.padded ? 8 : 0);
  std::mt19937 rng(c.seed);
  // q spans [-2, 2) so some rows have peaked softmaxes, k and v [-1, 1).
  const std::vector<uint16_t> q = RandomBf16(rng, nq * ldq, 2.0f);
  const std::vector<uint16_t> k = RandomBf16(rng, nk * ldkv, 1.0f);
  const std::vector<uint16_t> v = RandomBf16(rng, nk * ldkv, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  DeviceMem dq(q.size() * 2), dk(k.size() * 2), dv(v.size() * 2),
      dout(std::max<int64_t>(1, nq * ldo) * 2);
  Upload(dq, q);
  Upload(dk, k);
  Upload(dv, v);
  ASSERT_EQ(cudaMemset(dout.as<void>(), 0xFF, dout.bytes()), cudaSuccess);

  AttentionParams p;
  p.q = dq.as<Bf16>();
  p.ldq = ldq;
  p.k = dk.as<Bf16>();
  p.v = dv.as<Bf16>();
  p.ldkv = ldkv;
  p.out = dout.as<Bf16>();
  p.ldo = ldo;
  p.num_queries = nq;
  p.query_position = c.query_position;
  p.num_keys = nk;
  p.num_q_heads = nqh;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = hd;
  p.scale = scale;
  p.sliding_window = c.sliding_window;
  p.workspace_bytes = AttentionWorkspaceBytes(p);
  // The workspace is poisoned too: every partial the combine reads must have been written.
  DeviceMem ws(p.workspace_bytes);
  if (p.workspace_bytes > 0) {
    ASSERT_EQ(cudaMemset(ws.as<void>(), 0xFF, ws.bytes()), cudaSuccess);
    p.workspace = ws.as<void>();
  }

  if (variant == internal::kPrefillAuto) {
    const absl::Status st = Attention(p, stream);
    ASSERT_TRUE(st.ok()) << st;
  } else {
    internal::AttentionProblem x;
    x.q = p.q, x.ldq = p.ldq, x.k = p.k, x.v = p.v, x.ldkv = p.ldkv, x.out = p.out;
    x.ldo = p.ldo, x.num_queries = p.num_queries, x.query_position = p.query_position;
    x.num_keys = p.num_keys, x.num_q_heads = p.num_q_heads, x.num_kv_heads = p.num_kv_heads;
    x.head_dim = p.head_dim, x.scale = p.scale, x.sliding_window = p.sliding_window;
    const internal::AttentionPlan plan = internal::PlanAttention(x);
    ASSERT_FALSE(plan.decode) << "variants are prefill kernels";
    const auto cu_stream = reinterpret_cast<cudaStream_t>(stream);
    if (internal::IsWgmmaVariant(variant)) {
      ASSERT_TRUE(internal::WgmmaPrefillSupports(x));
      ASSERT_EQ(internal::LaunchPrefillWgmma(x, variant, cu_stream), cudaSuccess);
    } else {
      ASSERT_EQ(internal::LaunchAttention(x, plan, variant, cu_stream), cudaSuccess);
    }
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<uint16_t> got = Download<uint16_t>(dout, nq * ldo);

  std::vector<double> ref(nq * ldo, 0.0);
  ReferenceAttention(c, ToFloat(q), ldq, ToFloat(k), ToFloat(v), ldkv, scale, ref, ldo);

  double err2 = 0, ref2 = 0, max_abs = 0;
  int64_t bad = 0, pad_touched = 0;
  std::string first_bad;
  for (int64_t r = 0; r < nq; ++r) {
    for (int64_t j = 0; j < ldo; ++j) {
      const uint16_t bits = got[r * ldo + j];
      if (j >= int64_t{nqh} * hd) {
        pad_touched += bits != 0xFFFF;
        continue;
      }
      const double x = Bf16ToFloat(bits), y = ref[r * ldo + j];
      if (!std::isfinite(x)) {
        if (bad++ == 0) first_bad = absl::StrCat("row ", r, " col ", j, " bits ", bits);
        continue;
      }
      err2 += (x - y) * (x - y);
      ref2 += y * y;
      max_abs = std::max(max_abs, std::abs(x - y));
    }
  }
  EXPECT_EQ(bad, 0) << "non-finite or unwritten outputs, first at " << first_bad;
  EXPECT_EQ(pad_touched, 0) << "padding between rows was written";
  const double rel = std::sqrt(err2 / std::max(ref2, 1e-300));
  EXPECT_LT(rel, 1e-2) << "relative error";
  // Outputs are convex combinations of v in [-1, 1]: bf16 output rounding alone is up to
  // 2^-9, and P in bf16 adds about as much again.
  EXPECT_LT(max_abs, 2e-2) << "max abs error";
}

AttentionParams ValidDecodeParams(Bf16* q, Bf16* k, Bf16* v, Bf16* out) {
  AttentionParams p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.num_q_heads = 8;
  p.num_kv_heads = 2;
  p.head_dim = 128;
  p.ldq = p.ldo = 8 * 128;
  p.ldkv = 2 * 128;
  p.num_queries = 1;
  p.query_position = 4095;
  p.num_keys = 4096;
  p.scale = 0.088f;
  return p;
}

TEST(CudaAttention, SweepMatchesReference) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  uint32_t seed = 20261128;
  int index = 0;
  for (int hd : {64, 128}) {
    for (int group : {1, 4, 8}) {
      for (int64_t nq : {1, 2, 7, 16, 64, 127, 300, 1024}) {
        for (int64_t position : {0, 17, 500}) {
          for (int64_t window : {0, 100}) {
            Case c;
            c.head_dim = hd;
            c.num_kv_heads = 2;
            c.group = group;
            c.num_queries = nq;
            c.query_position = position;
            c.sliding_window = window;
            c.padded = (index++ % 2) == 1;
            c.seed = seed++;
            RunCase(c);
            if (HasFatalFailure() || HasFailure()) return;  // One failing case says enough.
          }
        }
      }
    }
  }
}

// The mma.sync prefill kernel, which now runs only where the wgmma one does not apply, forced
// on the prefill shapes of the sweep above.
TEST(CudaAttention, MmaSyncPrefillFallbackMatchesReference) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  uint32_t seed = 31000;
  int index = 0;
  for (int hd : {64, 128}) {
    for (int group : {1, 4}) {
      for (int64_t nq : {17, 127, 300, 1024}) {
        for (int64_t position : {0, 500}) {
          for (int64_t window : {0, 100}) {
            Case c;
            c.head_dim = hd;
            c.num_kv_heads = 2;
            c.group = group;
            c.num_queries = nq;
            c.query_position = position;
            c.sliding_window = window;
            c.padded = (index++ % 2) == 1;
            c.seed = seed++;
            RunCase(c, nullptr, internal::kPrefillM128N64W4);
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

// Every wgmma configuration on longer prefills: many key tiles (the K/V rings wrap several
// times), cached context not a multiple of the tile, windows cutting tiles at both ends, the
// smallest query count the kernel takes, query tails in both consumer warpgroups.
TEST(CudaAttention, WgmmaPrefillMatchesReference) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  uint32_t seed = 52000;
  int index = 0;
  for (int variant : {internal::kPrefillWgmmaS2, internal::kPrefillWgmmaS3,
                      internal::kPrefillWgmmaM192}) {
    for (int hd : {64, 128}) {
      if (variant == internal::kPrefillWgmmaM192 && hd == 128) continue;  // Same as S2 there.
      for (int group : {1, 4}) {
        for (int64_t nq : {17, 200, 700}) {
          for (int64_t position : {0, 1300}) {
            for (int64_t window : {0, 700}) {
              Case c;
              c.head_dim = hd;
              c.num_kv_heads = 2;
              c.group = group;
              c.num_queries = nq;
              c.query_position = position;
              c.sliding_window = window;
              c.padded = (index++ % 2) == 1;
              c.seed = seed++;
              RunCase(c, nullptr, variant);
              if (HasFailure()) return;
            }
          }
        }
      }
    }
  }
}

// A few queries against a long cache: the decode path with several key splits, a window
// that cuts splits away, and packed rows of one and several row tiles.
TEST(CudaAttention, DecodeSplitsMatchReference) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  uint32_t seed = 77000;
  int index = 0;
  for (int hd : {64, 128}) {
    for (int group : {1, 4, 8}) {
      for (int64_t nq : {1, 3, 16}) {
        for (int64_t position : {1000, 20000}) {
          for (int64_t window : {0, 1500}) {
            Case c;
            c.head_dim = hd;
            c.num_kv_heads = 2;
            c.group = group;
            c.num_queries = nq;
            c.query_position = position;
            c.sliding_window = window;
            c.padded = (index++ % 2) == 1;
            c.seed = seed++;
            RunCase(c);
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

TEST(CudaAttention, DecodeUsesWorkspaceForLongContext) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  int x;
  Bf16* dummy = reinterpret_cast<Bf16*>(reinterpret_cast<uintptr_t>(&x) & ~uintptr_t{15});
  AttentionParams p = ValidDecodeParams(dummy, dummy, dummy, dummy);
  EXPECT_GT(AttentionWorkspaceBytes(p), 0u) << "4096 keys should be split";
  p.num_queries = 256;
  p.query_position = 0;
  p.num_keys = 256;
  EXPECT_EQ(AttentionWorkspaceBytes(p), 0u) << "prefill needs no workspace";
}

TEST(CudaAttention, RunsOnAStream) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  Case c;
  c.num_queries = 200;
  c.query_position = 33;
  c.group = 4;
  c.seed = 5;
  RunCase(c, reinterpret_cast<Stream>(stream));
  c.num_queries = 2;
  c.query_position = 3000;
  c.seed = 6;
  RunCase(c, reinterpret_cast<Stream>(stream));
  cudaStreamDestroy(stream);
}

TEST(CudaAttention, ZeroQueriesWritesNothing) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  DeviceMem buf(1 << 20);
  ASSERT_EQ(cudaMemset(buf.as<void>(), 0xFF, buf.bytes()), cudaSuccess);
  Bf16* b = buf.as<Bf16>();
  AttentionParams p = ValidDecodeParams(b, b, b, b);
  p.num_queries = 0;
  p.query_position = 10;
  p.num_keys = 10;
  EXPECT_EQ(AttentionWorkspaceBytes(p), 0u);
  ASSERT_TRUE(Attention(p, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> after = Download<uint16_t>(buf, buf.bytes() / 2);
  EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](uint16_t x) { return x == 0xFFFF; }));
}

TEST(CudaAttention, RejectsBadParamsWithoutLaunching) {
  if (!Available()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << DeviceReason();
  const int64_t elems = 4096 * 8 * 128;
  DeviceMem q(elems * 2), k(elems * 2), v(elems * 2), out(elems * 2), ws(8 << 20);
  ASSERT_EQ(cudaMemset(q.as<void>(), 0, q.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(k.as<void>(), 0, k.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(v.as<void>(), 0, v.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(out.as<void>(), 0xFF, out.bytes()), cudaSuccess);
  const AttentionParams valid =
      ValidDecodeParams(q.as<Bf16>(), k.as<Bf16>(), v.as<Bf16>(), out.as<Bf16>());
  const size_t need = AttentionWorkspaceBytes(valid);
  ASSERT_GT(need, 0u);
  ASSERT_LE(need, ws.bytes());

  struct Bad {
    std::string field;
    std::function<void(AttentionParams&)> change;
  };
  const std::vector<Bad> cases = {
      {"q", [](AttentionParams& p) { p.q = nullptr; }},
      {"k", [](AttentionParams& p) { p.k = nullptr; }},
      {"v", [](AttentionParams& p) { p.v = nullptr; }},
      {"out", [](AttentionParams& p) { p.out = nullptr; }},
      {"num_queries", [](AttentionParams& p) { p.num_queries = -1; }},
      {"query_position", [](AttentionParams& p) { p.query_position = -1; }},
      {"num_keys", [](AttentionParams& p) { p.num_keys = -5; }},
      {"num_kv_heads", [](AttentionParams& p) { p.num_kv_heads = 0; }},
      {"num_q_heads", [](AttentionParams& p) { p.num_q_heads = -8; }},
      {"num_q_heads", [](AttentionParams& p) { p.num_q_heads = 7; }},
      {"head_dim", [](AttentionParams& p) { p.head_dim = 96; }},
      {"head_dim", [](AttentionParams& p) { p.head_dim = 256; }},
      {"num_keys", [](AttentionParams& p) { p.num_keys = 4095; }},
      {"num_keys", [](AttentionParams& p) { p.query_position = 1; p.num_queries = 4096; }},
      {"ldq", [](AttentionParams& p) { p.ldq = 8 * 128 - 8; }},
      {"ldkv", [](AttentionParams& p) { p.ldkv = 2 * 128 - 8; }},
      {"ldo", [](AttentionParams& p) { p.ldo = 0; }},
      {"ldq", [](AttentionParams& p) { p.ldq = 8 * 128 + 4; }},
      {"q", [](AttentionParams& p) { p.q += 1; }},
      {"scale", [](AttentionParams& p) { p.scale = std::nanf(""); }},
      {"scale", [](AttentionParams& p) { p.scale = -1.0f; }},
      {"sliding_window", [](AttentionParams& p) { p.sliding_window = -1; }},
      {"workspace_bytes", [&](AttentionParams& p) { p.workspace_bytes = need - 1; }},
      {"workspace", [&](AttentionParams& p) {
         p.workspace = nullptr;
         p.workspace_bytes = need;
       }},
  };
  for (const Bad& bad : cases) {
    AttentionParams p = valid;
    p.workspace = ws.as<void>();
    p.workspace_bytes = need;
    bad.change(p);
    const absl::Status st = Attention(p, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad.field << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(absl::StrCat(bad.field, ":")))
        << "expected the first bad field to be named";
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> after = Download<uint16_t>(out, elems);
  EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](uint16_t x) { return x == 0xFFFF; }))
      << "a rejected call wrote the output";

  // The valid params themselves run (so the cases above failed for their one change).
  AttentionParams p = valid;
  p.workspace = ws.as<void>();
  p.workspace_bytes = need;
  EXPECT_TRUE(Attention(p, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace tierkv::kernels::cuda
