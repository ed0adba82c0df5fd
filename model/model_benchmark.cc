// Prefill and decode times of builtin:tiny on the CPU, the figures behind the issue's
// time-to-first-token targets. The pool size is the last argument of each benchmark.
//
//   model_benchmark --benchmark_filter='Prefill/4096'
//
// Prefill runs once per figure (a 16K prompt takes seconds); Decode measures one step at a
// 16K context, truncating the step's token away after each so the context stays the same;
// WarmPrefill appends a 16K prompt's blocks and computes its last 5 tokens.
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "model/model.h"

namespace tierkv {
namespace {

const Model& ModelWith(int threads) {
  static std::unique_ptr<Model> models[65];
  if (!models[threads]) {
    models[threads] = *Model::BuiltinTiny({.num_threads = threads});
  }
  return *models[threads];
}

std::vector<uint32_t> Prompt(int64_t n) {
  std::mt19937 rng(1);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = rng() % 32768;
  return t;
}

// Args: prompt tokens, threads.
void BM_Prefill(benchmark::State& state) {
  const Model& model = ModelWith(static_cast<int>(state.range(1)));
  const std::vector<uint32_t> prompt = Prompt(state.range(0));
  for (auto _ : state) {
    KvCache kv = model.NewKvCache();
    absl::StatusOr<std::vector<float>> logits = model.Prefill(prompt, &kv);
    if (!logits.ok()) state.SkipWithError(std::string(logits.status().message()).c_str());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.range(0)) *
                                                      state.iterations(),
                                                  benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prefill)
    ->Args({4096, 2})
    ->Args({16384, 2})
    ->Args({4096, 1})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

// Args: context tokens, threads.
void BM_Decode(benchmark::State& state) {
  const Model& model = ModelWith(static_cast<int>(state.range(1)));
  const int64_t context = state.range(0);
  KvCache kv = model.NewKvCache();
  const std::vector<uint32_t> prompt = Prompt(context);
  if (!model.Prefill(prompt, &kv).ok()) state.SkipWithError("prefill failed");
  uint32_t token = 7;
  for (auto _ : state) {
    absl::StatusOr<std::vector<float>> logits = model.Decode(token, &kv);
    if (!logits.ok()) state.SkipWithError("decode failed");
    kv.Truncate(context);
    token = (token * 31 + 1) % 32768;
  }
}
BENCHMARK(BM_Decode)->Args({16384, 2})->Args({4096, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

// The model side of a warm time to first token: the prompt's full blocks arrive as block
// objects (fetched from the cache), are appended to a fresh KvCache, and only the tail of
// the prompt is computed. Args: prompt tokens, threads.
void BM_WarmPrefill(benchmark::State& state) {
  const Model& model = ModelWith(static_cast<int>(state.range(1)));
  const std::vector<uint32_t> prompt = Prompt(state.range(0) + 5);  // 5 tokens past a block.
  const ModelSpec& spec = model.spec();
  std::vector<std::string> blocks;
  {
    KvCache kv = model.NewKvCache();
    if (!model.Prefill(prompt, &kv).ok()) state.SkipWithError("prefill failed");
    for (int64_t b = 0; b < state.range(0) / spec.block_tokens; ++b) {
      blocks.push_back(*ExtractBlock(kv, b, spec));
    }
  }
  const std::span<const uint32_t> tail =
      std::span<const uint32_t>(prompt).subspan(blocks.size() * spec.block_tokens);
  for (auto _ : state) {
    KvCache kv = model.NewKvCache();
    kv.Reserve(prompt.size());
    for (const std::string& b : blocks) {
      if (!AppendBlock(&kv, b, spec).ok()) state.SkipWithError("append failed");
    }
    if (!model.Prefill(tail, &kv).ok()) state.SkipWithError("tail prefill failed");
  }
}
BENCHMARK(BM_WarmPrefill)->Args({16384, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace tierkv

BENCHMARK_MAIN();
