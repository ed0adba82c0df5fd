// sparse_prefill_bench: dynamic sparse prefill attention (vertical-slash) on the GPU beside
// PyTorch SDPA's dense causal attention, measured in the same run.
//
// One attention layer of Llama-3-8B's head layout (32 q heads, 8 KV heads, head_dim 128,
// bf16) at --seq lengths (default 32K, 128K, 256K, 512K), on two kinds of input:
//   structured: attention concentrates as in long-context heads: on 4 sink keys, on 16
//     planted columns per KV head, and on a recency band (scores fall 0.044 nats a token
//     behind each query, exactly, through integer digits of the positions kept in bf16);
//   unstructured: plain random queries and keys.
// Steps, each timed (host clock around synchronized calls, median of --runs after --warmup):
// estimation (the last 64 queries' attention summed per key and per distance, and the top
// --vertical / --slash lines of every head), conversion (lines to per-row-block lists), and
// the sparse kernel (the one SparseAttention picks; each kernel variant is also timed and
// printed for the record). An index covering more than --max-coverage of the causal tiles, or too
// large for the list memory, runs the dense kernel instead ("never slower than dense"), and
// prompts shorter than --min-tokens run it without estimating at all; the dense kernel is
// timed on every input for these decisions' record.
//
// --sweep=N (instead of the above) measures where the dense fallback should start: at N
// tokens, indices of growing coverage of two kinds, A-shape windows (adjacent row blocks list
// nearly the same blocks) and blocks drawn at random per row block (they list different
// ones: the worst case for the kernel's pairs of row blocks), the same index for every
// head; per index the covered fraction of the causal tiles (listed), the tiles the kernel
// computes for its pairs (computed), and its time against the dense kernel's. The index is
// built before the decision, so the fallback pays off above the coverage where the sparse
// kernel takes as long as the dense one: the break-even printed per kind.
//
// FLOPs as attention_bench: causal = 4 * S * S * head_dim * q_heads / 2; a sparse kernel's
// rate is the covered fraction of that over its time. SDPA comes from bench/sdpa_baseline.py
// (bench/sdpa_runner.h); run from the repository root.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/sdpa_runner.h"
#include "kernels/cuda/internal/sparse_attention_launch.h"
#include "kernels/cuda/internal/sparse_attention_variant.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"

namespace tierkv::kernels::cuda {
namespace {

constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128;

struct Flags {
  std::vector<int64_t> seq = {32768, 131072, 262144, 524288};
  std::vector<std::string> kinds = {"structured", "unstructured"};
  int runs = 3;
  int warmup = 1;
  int64_t vertical = 1000;
  int64_t slash = 6096;
  double max_coverage = 0.85;  // SparsePlan's default (measured: --sweep).
  // Below this many tokens the dense kernel runs without estimating an index (at 32K the
  // estimate and conversion alone cost a quarter of the dense attention).
  int64_t min_tokens = 65536;
  int64_t list_bytes = int64_t{2} << 30;  // Memory for the index lists.
  std::string sdpa_script = "bench/sdpa_baseline.py";
  int sdpa_timeout_s = 1200;
  bool sdpa = true;
  int64_t sweep = 0;  // Tokens of the coverage sweep; 0: none.
};

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "sparse_prefill_bench: %s\n", why.c_str());
  std::exit(1);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = std::string(name) + "=";
      return a.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    auto to_i64 = [&](const char* v) {
      int64_t x = 0;
      if (!absl::SimpleAtoi(v, &x)) Die(absl::StrCat("bad number in ", a));
      return x;
    };
    if (const char* v = value("--seq")) {
      f.seq.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) f.seq.push_back(to_i64(std::string(s).c_str()));
    } else if (const char* v = value("--kinds")) {
      f.kinds = absl::StrSplit(v, ',');
    } else if (const char* v = value("--runs")) {
      f.runs = static_cast<int>(to_i64(v));
    } else if (const char* v = value("--warmup")) {
      f.warmup = static_cast<int>(to_i64(v));
    } else if (const char* v = value("--vertical")) {
      f.vertical = to_i64(v);
    } else if (const char* v = value("--slash")) {
      f.slash = to_i64(v);
    } else if (const char* v = value("--max-coverage")) {
      if (!absl::SimpleAtod(v, &f.max_coverage)) Die("bad --max-coverage");
    } else if (const char* v = value("--min-tokens")) {
      f.min_tokens = to_i64(v);
    } else if (const char* v = value("--sdpa-script")) {
      f.sdpa_script = v;
    } else if (const char* v = value("--sdpa-timeout")) {
      f.sdpa_timeout_s = static_cast<int>(to_i64(v));
    } else if (const char* v = value("--sweep")) {
      f.sweep = to_i64(v);
      if (f.sweep < 128 || f.sweep % 64 != 0) Die("--sweep: a multiple of 64, >= 128");
    } else if (a == "--no-sdpa") {
      f.sdpa = false;
    } else {
      Die(absl::StrCat("unknown flag ", a,
                       "; flags: --seq=32768,... --kinds=structured,unstructured --runs=3 "
                       "--warmup=1 --vertical=1000 --slash=6096 --max-coverage=0.85 --min-tokens=65536 "
                       "--sdpa-script=bench/sdpa_baseline.py --sdpa-timeout=1200 --no-sdpa --sweep=65536"));
    }
  }
  for (int64_t s : f.seq) {
    if (s < 128 || s % 64 != 0) Die(absl::StrCat("--seq ", s, ": a multiple of 64, >= 128"));
  }
  return f;
}

// Fills `rows` rows in parallel: fill(row, rng state) for each.
void ParallelRows(int64_t rows, const std::function<void(int64_t, uint64_t&)>& fill) {
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      uint64_t x = 0x9e3779b97f4a7c15ull * (t + 1) | 1;
      for (int64_t r = t; r < rows; r += threads) fill(r, x);
    });
  }
  for (auto& th : pool) th.join();
}

float Uniform(uint64_t& x) {  // [-1, 1)
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return static_cast<float>(x >> 40) / static_cast<float>(1 << 23) - 1.0f;
}

struct Inputs {
  std::vector<uint16_t> q, k, v;
};

// Digits of `n` in base 256 (three of them cover 2^24 positions), exact in bf16.
void Digits(int64_t n, float out[3]) {
  out[0] = static_cast<float>(n % 256);
  out[1] = static_cast<float>((n / 256) % 256);
  out[2] = static_cast<float>(n / 65536);
}

Inputs Make(int64_t n, bool structured) {
  Inputs in;
  in.q.resize(n * kHeads * kHeadDim);
  in.k.resize(n * kKvHeads * kHeadDim);
  in.v.resize(n * kKvHeads * kHeadDim);
  // Planted columns per KV head (besides the 4 sinks), spread over the sequence.
  std::vector<std::vector<int64_t>> planted(kKvHeads);
  for (int g = 0; g < kKvHeads; ++g) {
    for (int c = 0; c < 16; ++c) planted[g].push_back((n / 17) * (c + 1) + 97 * g + 13);
  }
  const float noise = structured ? 0.3f : 1.0f;
  // Recency: q . k gets w * key for ordinary keys (digits of the key against w, 256 w,
  // 65536 w) and w * pos + 64 for sinks and planted keys (digits of the query position
  // against the same weights), so after the 1/sqrt(128) scale a special key scores 5.7 nats
  // above the newest key and an ordinary key d tokens back 0.044 d nats below it.
  constexpr float w = 0.5f;
  ParallelRows(n, [&](int64_t i, uint64_t& x) {
    float dq[3];
    Digits(i, dq);
    for (int h = 0; h < kHeads; ++h) {
      uint16_t* q = &in.q[(i * kHeads + h) * kHeadDim];
      for (int e = 0; e < kHeadDim; ++e) q[e] = FloatToBf16(noise * Uniform(x));
      if (!structured) continue;
      q[0] = FloatToBf16(8.0f);
      q[1] = FloatToBf16(w);
      q[2] = FloatToBf16(256 * w);
      q[3] = FloatToBf16(65536 * w);
      for (int d = 0; d < 3; ++d) q[4 + d] = FloatToBf16(dq[d]);
    }
    float dk[3];
    Digits(i, dk);
    for (int g = 0; g < kKvHeads; ++g) {
      uint16_t* k = &in.k[(i * kKvHeads + g) * kHeadDim];
      uint16_t* v = &in.v[(i * kKvHeads + g) * kHeadDim];
      for (int e = 0; e < kHeadDim; ++e) {
        k[e] = FloatToBf16(noise * Uniform(x));
        v[e] = FloatToBf16(Uniform(x));
      }
      if (!structured) continue;
      const bool special =
          i < 4 || std::find(planted[g].begin(), planted[g].end(), i) != planted[g].end();
      k[0] = FloatToBf16(special ? 8.0f : 0.0f);
      // Ordinary keys score w * key (recency); special ones w * pos instead (below), as if
      // they were always the newest.
      for (int d = 0; d < 3; ++d) k[1 + d] = FloatToBf16(special ? 0.0f : dk[d]);
      k[4] = FloatToBf16(special ? w : 0.0f);
      k[5] = FloatToBf16(special ? 256 * w : 0.0f);
      k[6] = FloatToBf16(special ? 65536 * w : 0.0f);
    }
  });
  return in;
}

template <typename T>
DeviceBuffer Up(const std::vector<T>& v) {
  absl::StatusOr<DeviceBuffer> b = Upload<T>(std::span<const T>(v));
  if (!b.ok()) Die(b.status().ToString());
  return *std::move(b);
}

DeviceBuffer Alloc(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(bytes, 256));
  if (!b.ok()) Die(absl::StrCat("allocating ", bytes, " bytes: ", b.status().ToString()));
  return *std::move(b);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Milliseconds of `step` (synchronized), median of runs after warm-up; dies on an error.
double Time(const Flags& f, const std::function<absl::Status()>& step, const char* what) {
  std::vector<double> ms;
  for (int r = 0; r < f.warmup + f.runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = step();
    if (s.ok()) s = SynchronizeDevice();
    if (!s.ok()) Die(absl::StrCat(what, ": ", s.ToString()));
    if (r >= f.warmup) {
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return Median(ms);
}

struct Row {
  int64_t seq = 0;
  std::string kind;
  double estimate_ms = 0, convert_ms = 0, kernel_ms = 0, dense_ms = 0;
  double fraction = 0;  // Causal tiles computed by the sparse kernel.
  bool index_fits = true, sparse_chosen = false, short_prompt = false;
  int64_t blocks = 0, columns = 0;
  std::string variants;  // Every kernel variant's time, for the record.
  double mass_ms = 0;    // The attention-mass part of estimate_ms.
  double total_ms() const {
    if (short_prompt) return dense_ms;
    return sparse_chosen ? estimate_ms + convert_ms + kernel_ms : estimate_ms + convert_ms + dense_ms;
  }
  const char* path() const {
    return short_prompt ? "dense, short" : (sparse_chosen ? "sparse" : "dense");
  }
};

// One layer's inputs on the device (Make's) and the attention params over them.
struct Layer {
  DeviceBuffer dq, dk, dv, out;
  AttentionParams params;
  Layer(int64_t n, bool structured) {
    const Inputs in = Make(n, structured);
    dq = Up(in.q);
    dk = Up(in.k);
    dv = Up(in.v);
    out = Alloc(in.q.size() * 2);
    params.q = dq.as<Bf16>();
    params.ldq = kHeads * kHeadDim;
    params.k = dk.as<Bf16>();
    params.v = dv.as<Bf16>();
    params.ldkv = kKvHeads * kHeadDim;
    params.out = out.as<Bf16>();
    params.ldo = params.ldq;
    params.num_queries = n;
    params.num_keys = n;
    params.num_q_heads = kHeads;
    params.num_kv_heads = kKvHeads;
    params.head_dim = kHeadDim;
    params.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  }
};

Row Measure(const Flags& f, int64_t n, const std::string& kind) {
  Row row;
  row.seq = n;
  row.kind = kind;
  const Layer layer(n, kind == "structured");
  const AttentionParams& ap = layer.params;

  // Estimation: sums, then the top lines of every head.
  DeviceBuffer per_key = Alloc(kHeads * n * 4), per_distance = Alloc(kHeads * n * 4);
  DeviceBuffer verticals = Alloc(kHeads * f.vertical * 4), slashes = Alloc(kHeads * f.slash * 4);
  AttentionMassParams mp;
  mp.q = ap.q;
  mp.ldq = ap.ldq;
  mp.k = ap.k;
  mp.ldkv = ap.ldkv;
  mp.num_queries = n;
  mp.num_q_heads = kHeads;
  mp.num_kv_heads = kKvHeads;
  mp.head_dim = kHeadDim;
  mp.scale = ap.scale;
  mp.per_key = per_key.as<float>();
  mp.per_distance = per_distance.as<float>();
  const size_t mass_ws = std::min<size_t>(AttentionMassMinWorkspaceBytes(mp) * kHeads,
                                          std::max<size_t>(AttentionMassMinWorkspaceBytes(mp),
                                                           size_t{2} << 30));
  TopIndicesParams tv{per_key.as<float>(), n, kHeads, f.vertical, 30, verticals.as<int32_t>()};
  TopIndicesParams ts{per_distance.as<float>(), n, kHeads, f.slash, 100, slashes.as<int32_t>()};
  // Conversion.
  const int64_t rows = n / 64;
  DeviceBuffer bo = Alloc((rows * kHeads + 1) * 8), co = Alloc((rows * kHeads + 1) * 8);
  const int64_t full = rows * (rows + 1) / 2 * kHeads;
  const int64_t cap_b = std::min<int64_t>(full, f.list_bytes / 4);
  const int64_t cap_c = rows * kHeads * f.vertical;
  DeviceBuffer blocks = Alloc(cap_b * 4), columns = Alloc(std::min<int64_t>(cap_c, f.list_bytes / 4) * 4);
  VerticalSlashIndexParams ip;
  ip.verticals = verticals.as<int32_t>();
  ip.num_verticals = f.vertical;
  ip.slashes = slashes.as<int32_t>();
  ip.num_slashes = f.slash;
  ip.heads = kHeads;
  ip.num_queries = n;
  ip.block_offsets = bo.as<int64_t>();
  ip.column_offsets = co.as<int64_t>();
  ip.blocks = blocks.as<int32_t>();
  ip.blocks_capacity = cap_b;
  ip.columns = columns.as<int32_t>();
  ip.columns_capacity = std::min<int64_t>(cap_c, f.list_bytes / 4);
  const size_t ws_bytes = std::max({mass_ws, TopIndicesWorkspaceBytes(tv),
                                    TopIndicesWorkspaceBytes(ts),
                                    VerticalSlashIndexWorkspaceBytes(ip)});
  DeviceBuffer ws = Alloc(ws_bytes);
  mp.workspace = tv.workspace = ts.workspace = ip.workspace = ws.data();
  mp.workspace_bytes = tv.workspace_bytes = ts.workspace_bytes = ip.workspace_bytes = ws.size();

  row.estimate_ms = Time(f, [&] {
    absl::Status s = EstimateAttentionMass(mp, nullptr);
    if (s.ok()) s = TopIndices(tv, nullptr);
    if (s.ok()) s = TopIndices(ts, nullptr);
    return s;
  }, "estimation");
  // Its parts, for the record: the attention mass, then the two top-k selections.
  row.mass_ms = Time(f, [&] { return EstimateAttentionMass(mp, nullptr); }, "attention mass");
  // The conversion reports RESOURCE_EXHAUSTED (with the totals) when the lists do not fit.
  absl::Status converted;
  row.convert_ms = Time(f, [&] {
    converted = BuildVerticalSlashIndex(ip, nullptr);
    return converted.code() == absl::StatusCode::kResourceExhausted ? absl::OkStatus() : converted;
  }, "conversion");
  row.index_fits = converted.ok();
  row.blocks = ip.total_blocks;
  row.columns = ip.total_columns;
  row.fraction = (static_cast<double>(ip.total_blocks) + ip.total_columns / 64.0) /
                 static_cast<double>(full);
  row.dense_ms = Time(f, [&] { return Attention(ap, nullptr); }, "dense attention");
  if (row.index_fits) {
    SparseIndexView view{bo.as<int64_t>(), blocks.as<int32_t>(), co.as<int64_t>(),
                         columns.as<int32_t>()};
    view.total_blocks = ip.total_blocks;
    view.total_columns = ip.total_columns;
    DeviceBuffer kernel_ws = Alloc(std::max<size_t>(SparseAttentionWorkspaceBytes(ap, view), 1));
    AttentionParams sp = ap;
    sp.workspace = kernel_ws.data();
    sp.workspace_bytes = kernel_ws.size();
    // The variants first: they also bring the clocks up for the measured one, which the
    // product runs (a cold card made it read 15% slow).
    for (int v : {internal::kSparseMmaSync, internal::kSparseWgmmaS2, internal::kSparseWgmmaS3}) {
      const double ms = Time(f, [&] {
        return internal::SparseAttentionVariant(sp, view, v, nullptr);
      }, internal::SparseVariantName(v));
      absl::StrAppendFormat(&row.variants, "%s%s %.2f ms", row.variants.empty() ? "" : ", ",
                            internal::SparseVariantName(v), ms);
    }
    row.kernel_ms = Time(f, [&] { return SparseAttention(sp, view, nullptr); }, "sparse attention");
  }
  row.short_prompt = n < f.min_tokens;
  row.sparse_chosen = !row.short_prompt && row.index_fits && row.fraction <= f.max_coverage;
  return row;
}

// One head's index as a CSR (row block r: blocks[bo[r] .. bo[r + 1])), no columns.
struct HostIndex {
  std::vector<int64_t> bo = {0};
  std::vector<int32_t> blocks;
};

// The coverage sweep (--sweep): see the top of the file.
int Sweep(const Flags& f) {
  const int64_t n = f.sweep, rows = n / 64;
  const Layer layer(n, false);
  const AttentionParams& ap = layer.params;
  const double causal_tiles = static_cast<double>(rows) * (rows + 1) / 2;
  const double dense_ms = Time(f, [&] { return Attention(ap, nullptr); }, "dense attention");
  std::printf("coverage sweep: %lld tokens, 32/8 heads, d 128, one index for every head; "
              "dense kernel %.2f ms\n\n| kind | parameter | listed coverage | computed "
              "coverage | sparse kernel ms | sparse / dense |\n|---|---:|---:|---:|---:|---:|\n",
              static_cast<long long>(n), dense_ms);
  struct Point {
    double listed, ratio;
  };
  auto run = [&](const char* kind, double param, const HostIndex& h) -> Point {
    // Every head the same index; the tiles the kernel computes: per pair of row blocks the
    // union of their blocks, twice (both row blocks' rows).
    std::vector<int64_t> bo = {0};
    std::vector<int32_t> blocks;
    for (int head = 0; head < kHeads; ++head) {
      for (int64_t r = 0; r < rows; ++r) {
        blocks.insert(blocks.end(), h.blocks.begin() + h.bo[r], h.blocks.begin() + h.bo[r + 1]);
        bo.push_back(static_cast<int64_t>(blocks.size()));
      }
    }
    double computed = 0;
    for (int64_t r = 0; r < rows; r += 2) {
      std::vector<int32_t> u(h.blocks.begin() + h.bo[r],
                             h.blocks.begin() + h.bo[std::min(r + 2, rows)]);
      std::sort(u.begin(), u.end());
      computed += 2.0 * static_cast<double>(std::unique(u.begin(), u.end()) - u.begin());
    }
    const std::vector<int64_t> co(bo.size(), 0);
    const std::vector<int32_t> no_columns(1, 0);
    DeviceBuffer d_bo = Up(bo), d_blocks = Up(blocks), d_co = Up(co), d_cols = Up(no_columns);
    SparseIndexView view{d_bo.as<int64_t>(), d_blocks.as<int32_t>(), d_co.as<int64_t>(),
                         d_cols.as<int32_t>()};
    view.total_blocks = static_cast<int64_t>(blocks.size());
    view.total_columns = 0;
    DeviceBuffer ws = Alloc(std::max<size_t>(SparseAttentionWorkspaceBytes(ap, view), 1));
    AttentionParams sp = ap;
    sp.workspace = ws.data();
    sp.workspace_bytes = ws.size();
    const double ms = Time(f, [&] { return SparseAttention(sp, view, nullptr); }, kind);
    const double listed = static_cast<double>(h.blocks.size()) / causal_tiles;
    std::printf("| %s | %g | %.3f | %.3f | %.2f | %.3f |\n", kind, param, listed,
                computed / causal_tiles, ms, ms / dense_ms);
    std::fflush(stdout);
    return {listed, ms / dense_ms};
  };
  auto break_even = [](const std::vector<Point>& pts) {
    // The listed coverage where sparse / dense crosses 1, interpolated between the points
    // around it; 1 when the kernel never gets slower than dense.
    for (size_t i = 1; i < pts.size(); ++i) {
      if (pts[i].ratio >= 1.0 && pts[i - 1].ratio < 1.0) {
        const double t = (1.0 - pts[i - 1].ratio) / (pts[i].ratio - pts[i - 1].ratio);
        return pts[i - 1].listed + t * (pts[i].listed - pts[i - 1].listed);
      }
    }
    return pts.empty() || pts.back().ratio < 1.0 ? 1.0 : 0.0;
  };
  std::vector<Point> a_shape, random_blocks;
  for (double c : {0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0}) {
    // A window of w blocks behind the diagonal covers about c of the triangle when
    // w = rows (1 - sqrt(1 - c)).
    const int64_t w = std::max<int64_t>(1, static_cast<int64_t>(
                                               std::lround(rows * (1 - std::sqrt(1 - c)))));
    HostIndex h;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t b = std::max<int64_t>(0, r - w + 1); b <= r; ++b) {
        h.blocks.push_back(static_cast<int32_t>(b));
      }
      h.bo.push_back(static_cast<int64_t>(h.blocks.size()));
    }
    a_shape.push_back(run("window", static_cast<double>(w), h));
  }
  uint64_t x = 0x2545f4914f6cdd1dull;
  for (double p : {0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0}) {
    HostIndex h;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t b = 0; b <= r; ++b) {
        if (b == r || (Uniform(x) + 1.0f) / 2.0f < p) h.blocks.push_back(static_cast<int32_t>(b));
      }
      h.bo.push_back(static_cast<int64_t>(h.blocks.size()));
    }
    random_blocks.push_back(run("random blocks", p, h));
  }
  std::printf("\nbreak-even listed coverage (sparse kernel as slow as dense): window %.2f, "
              "random blocks %.2f\n",
              break_even(a_shape), break_even(random_blocks));
  return 0;
}

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  absl::StatusOr<DeviceInfo> dev = CurrentDevice();
  if (!dev.ok() || !Available()) Die("no usable sm_90 CUDA device");
  if (f.sweep > 0) return Sweep(f);
  std::printf("device: %s; layout %d q heads, %d KV heads, head_dim %d, bf16, causal; "
              "vertical-slash budgets %lld / %lld; dense above %.2f of the tiles and below "
              "%lld tokens\n",
              dev->name, kHeads, kKvHeads, kHeadDim, static_cast<long long>(f.vertical),
              static_cast<long long>(f.slash), f.max_coverage,
              static_cast<long long>(f.min_tokens));
  std::vector<Row> rows;
  for (int64_t n : f.seq) {
    for (const std::string& kind : f.kinds) {
      rows.push_back(Measure(f, n, kind));
      const Row& r = rows.back();
      std::printf("measured %s %lld: estimate %.2f ms (attention mass %.2f ms, top-k the rest), "
                  "conversion %.2f ms, kernel %.2f ms (%s), dense %.2f ms, %.4f of the tiles%s\n",
                  kind.c_str(), static_cast<long long>(n), r.estimate_ms, r.mass_ms, r.convert_ms,
                  r.kernel_ms, r.variants.c_str(), r.dense_ms, r.fraction,
                  r.index_fits ? "" : " (lists too large)");
      std::fflush(stdout);
    }
  }
  bench::Sdpa sdpa;
  if (f.sdpa) {
    bench::SdpaRequest req;
    req.script = f.sdpa_script;
    req.timeout_s = f.sdpa_timeout_s;
    req.seq = f.seq;
    req.runs = f.runs;
    req.long_runs = f.runs;
    req.warmup = f.warmup;
    sdpa = bench::RunSdpaScript(req);
    if (sdpa.ms.empty()) {
      std::printf("\n*** NO SDPA BASELINE: %s ***\n",
                  sdpa.error.empty() ? "no results" : sdpa.error.c_str());
    } else {
      std::printf("sdpa: %s\n", sdpa.header.c_str());
    }
  }
  std::printf(
      "\n| tokens | input | estimate ms | convert ms | sparse kernel ms | tiles computed | "
      "kernel TFLOP/s on them | ours total ms (path) | dense kernel ms | SDPA ms (TFLOP/s) | "
      "SDPA / ours | kernel rate / SDPA rate | estimate + convert share | targets |\n"
      "|---:|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---|\n");
  for (const Row& r : rows) {
    const double flops = 4.0 * static_cast<double>(r.seq) * r.seq * kHeadDim * kHeads / 2;
    const double kernel_tflops =
        r.kernel_ms > 0 ? r.fraction * flops / (r.kernel_ms * 1e9) : 0.0;
    auto it = sdpa.ms.find(std::make_tuple(r.seq, kHeadDim, std::string("default")));
    const double sdpa_ms = it == sdpa.ms.end() ? 0 : it->second;
    const double sdpa_tflops = sdpa_ms > 0 ? flops / (sdpa_ms * 1e9) : 0;
    const double total = r.total_ms();
    const double speedup = sdpa_ms > 0 ? sdpa_ms / total : 0;
    const double share = r.short_prompt ? 0.0 : (r.estimate_ms + r.convert_ms) / total;
    std::string targets = "-";
    if (sdpa_ms > 0 && r.kind == "structured") {
      const double want = r.seq >= 524288 ? 12.0 : (r.seq >= 131072 ? 4.0 : 0.0);
      targets = absl::StrFormat(
          "%s; rate %s; share %s", want > 0 ? absl::StrFormat("%.0fx: %s", want,
                                                          speedup >= want ? "met" : "MISSED")
                                          : std::string("no speed target"),
          kernel_tflops >= 0.85 * sdpa_tflops ? "met" : "MISSED", share < 0.15 ? "met" : "MISSED");
    } else if (sdpa_ms > 0) {
      targets = absl::StrFormat("not slower than SDPA: %s", total <= sdpa_ms ? "met" : "MISSED");
    }
    std::printf("| %lld | %s | %.2f | %.2f | %s | %.4f | %s | %.1f (%s) | %.1f | %s | %s | %s | "
                "%.2f | %s |\n",
                static_cast<long long>(r.seq), r.kind.c_str(), r.estimate_ms, r.convert_ms,
                r.index_fits ? absl::StrFormat("%.1f", r.kernel_ms).c_str() : "lists too large",
                r.fraction, r.kernel_ms > 0 ? absl::StrFormat("%.0f", kernel_tflops).c_str() : "-",
                total, r.path(), r.dense_ms,
                sdpa_ms > 0 ? absl::StrFormat("%.1f (%.0f)", sdpa_ms, sdpa_tflops).c_str() : "-",
                sdpa_ms > 0 ? absl::StrFormat("%.2fx", speedup).c_str() : "-",
                sdpa_ms > 0 && kernel_tflops > 0
                    ? absl::StrFormat("%.2f", kernel_tflops / sdpa_tflops).c_str()
                    : "-",
                share, targets.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace tierkv::kernels::cuda

int main(int argc, char** argv) { return tierkv::kernels::cuda::Main(argc, argv); }
