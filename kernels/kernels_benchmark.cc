// Micro benchmarks of the CPU kernels at builtin:tiny shapes (hidden 512, 8 query heads,
// 4 KV heads, head_dim 64), with the pool size as the last argument. Counters report
// GFLOP/s (2 flops per multiply-add), so figures from different shapes compare directly.
//
//   kernels_benchmark --benchmark_filter=Attention
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/ops.h"

namespace tierkv::kernels {
namespace {

std::vector<float> Random(size_t n) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

ThreadPool* PoolOf(int threads) {
  static std::vector<std::unique_ptr<ThreadPool>> pools(65);
  if (!pools[threads]) pools[threads] = std::make_unique<ThreadPool>(threads);
  return pools[threads].get();
}

// Args: m, n, k, threads.
void BM_Matmul(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  std::vector<float> x = Random(m * k), w = Random(n * k), y(m * n);
  MatmulParams p{x.data(), k, w.data(), k, nullptr, y.data(), n, m, n, k, false};
  ThreadPool* pool = PoolOf(static_cast<int>(state.range(3)));
  for (auto _ : state) {
    if (!Matmul(p, pool).ok()) state.SkipWithError("Matmul failed");
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * k * state.iterations(),
                                                 benchmark::Counter::kIsRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Matmul)
    ->Args({2048, 1024, 512, 2})   // Fused QKV of a 2K-token chunk.
    ->Args({2048, 2816, 512, 2})   // Fused gate/up.
    ->Args({2048, 512, 1408, 2})   // Down.
    ->Args({1, 32768, 512, 2})     // Logits of one position.
    ->Args({1, 2816, 512, 2})      // Gate/up of a decode step.
    ->Args({2048, 1024, 512, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: queries, query_position, threads. Causal attention of `queries` rows that end the
// sequence (keys = query_position + queries).
void BM_Attention(benchmark::State& state) {
  const int64_t nq = state.range(0), pos = state.range(1);
  const int hq = 8, hkv = 4, d = 64;
  const int64_t keys = pos + nq;
  std::vector<float> q = Random(nq * hq * d), k = Random(keys * hkv * d),
                     v = Random(keys * hkv * d), out(nq * hq * d);
  AttentionParams p;
  p.q = q.data();
  p.ldq = hq * d;
  p.k = k.data();
  p.v = v.data();
  p.ldkv = hkv * d;
  p.out = out.data();
  p.ldo = hq * d;
  p.num_queries = nq;
  p.query_position = pos;
  p.num_keys = keys;
  p.num_q_heads = hq;
  p.num_kv_heads = hkv;
  p.head_dim = d;
  p.scale = 0.125f;
  ThreadPool* pool = PoolOf(static_cast<int>(state.range(2)));
  for (auto _ : state) {
    if (!Attention(p, pool).ok()) state.SkipWithError("Attention failed");
    benchmark::DoNotOptimize(out.data());
  }
  // Visible (query, key) pairs times heads times 2 * 2 * head_dim flops (QK and PV).
  const double pairs = static_cast<double>(nq) * pos + nq * (nq + 1) / 2.0;
  state.counters["GFLOP/s"] = benchmark::Counter(pairs * hq * 4.0 * d * state.iterations(),
                                                 benchmark::Counter::kIsRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Attention)
    ->Args({2048, 0, 2})       // First chunk of a prefill.
    ->Args({2048, 14336, 2})   // Last chunk of a 16K prefill.
    ->Args({1, 16383, 2})      // Decode step at 16K context.
    ->Args({2048, 14336, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace tierkv::kernels

BENCHMARK_MAIN();
