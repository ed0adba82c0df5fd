// The GPU runtime against the CPU model on the same (bf16-rounded) weights: logits and KV
// within bf16 tolerance, block objects that move between the two, and the error cases.
// Needs an sm_90 GPU; every test skips, saying why, where there is none.
#include "model/cuda_model.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/dtype.h"
#include "model/model.h"

namespace tierkv {
namespace {

namespace cu = kernels::cuda;


std::vector<uint32_t> RandomTokens(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> d(0, static_cast<uint32_t>(vocab - 1));
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = d(rng);
  return t;
}

double RelativeError(std::span<const float> got, std::span<const float> want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// The weights rounded to bf16 in place: what the GPU model holds.
void RoundToBf16(const ModelConfig& config, ModelWeights* w) {
  for (const WeightSlot& s : WeightSlots(config, w)) {
    for (float& f : s.tensor->data) f = kernels::RoundToDType(f, kernels::DType::kBF16);
  }
}

// A CPU model with bf16 KV on `weights` (already rounded).
std::unique_ptr<Model> CpuModel(const ModelConfig& config, ModelWeights weights) {
  ModelOptions o;
  o.kv_dtype = "bf16";
  absl::StatusOr<std::unique_ptr<Model>> m =
      Model::Create(config, std::move(weights), "cpu-reference", "test", o);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

// All block objects of a CPU KV cache, as floats.
std::vector<float> CpuBlocksAsFloats(const KvCache& kv, const ModelSpec& spec, int64_t blocks) {
  std::vector<float> out;
  for (int64_t b = 0; b < blocks; ++b) {
    absl::StatusOr<std::string> bytes = ExtractBlock(kv, b, spec);
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    for (size_t i = 0; i + 1 < bytes->size(); i += 2) {
      uint16_t bits;
      std::memcpy(&bits, bytes->data() + i, 2);
      out.push_back(kernels::Bf16ToFloat(bits));
    }
  }
  return out;
}

std::vector<float> GpuBlocksAsFloats(const CudaKvCache& kv, const ModelSpec& spec,
                                     int64_t blocks, cu::Stream stream) {
  std::vector<uint16_t> bits(blocks * spec.RawBlockBytes() / 2);
  EXPECT_TRUE(kv.ExtractBlocks(0, blocks, spec, bits.data(), stream).ok());
  EXPECT_TRUE(cu::SynchronizeDevice().ok());
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = kernels::Bf16ToFloat(bits[i]);
  return out;
}

ModelConfig GqaConfig() {
  ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = 3000;
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  c.qkv_bias = true;
  c.o_bias = true;
  c.sliding_window = 96;
  return c;
}

// Logits within this relative error of the CPU model on the same bf16 weights: activations
// are rounded to bf16 between kernels on the GPU and stay fp32 on the CPU.
constexpr double kLogitsTolerance = 3e-2;
constexpr double kKvTolerance = 2e-2;

TEST(CudaModel, BuiltinTinyMatchesTheCpuModelOnItsBf16Weights) {
  TIERKV_REQUIRE_GPU();
  absl::StatusOr<std::unique_ptr<CudaModel>> gpu = CudaModel::Load("builtin:tiny");
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const ModelConfig config = BuiltinTinyConfig();
  ModelWeights w = SeededWeights(config, kBuiltinTinySeed, kernels::ThreadPool::Default());
  RoundToBf16(config, &w);
  std::unique_ptr<Model> cpu = CpuModel(config, std::move(w));
  const std::vector<uint32_t> prompt = RandomTokens(300, config.vocab_size, 1);

  KvCache ckv = cpu->NewKvCache();
  absl::StatusOr<std::vector<float>> want = cpu->Prefill(prompt, &ckv);
  ASSERT_TRUE(want.ok());
  absl::StatusOr<CudaKvCache> gkv = (*gpu)->NewKvCache(1024);
  ASSERT_TRUE(gkv.ok());
  absl::StatusOr<std::vector<float>> got = (*gpu)->Prefill(prompt, &*gkv);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(gkv->tokens(), 300);
  EXPECT_LT(RelativeError(*got, *want), kLogitsTolerance);

  const ModelSpec spec = (*gpu)->spec();
  ASSERT_EQ(spec.kv_dtype, "bf16");
  const int64_t blocks = 300 / spec.block_tokens;
  EXPECT_LT(RelativeError(GpuBlocksAsFloats(*gkv, spec, blocks, (*gpu)->stream()),
                          CpuBlocksAsFloats(ckv, spec, blocks)),
            kKvTolerance);

  // Decode steps continue the same sequence.
  for (int step = 0; step < 5; ++step) {
    const uint32_t token = static_cast<uint32_t>(step * 1000 + 7);
    absl::StatusOr<std::vector<float>> c = cpu->Decode(token, &ckv);
    absl::StatusOr<std::vector<float>> g = (*gpu)->Decode(token, &*gkv);
    ASSERT_TRUE(c.ok() && g.ok());
    EXPECT_LT(RelativeError(*g, *c), kLogitsTolerance) << "step " << step;
  }
}

TEST(CudaModel, SeededOnTheDeviceMatchesTheCpuModelWithBiasesGqaAndWindow) {
  TIERKV_REQUIRE_GPU();
  const ModelConfig config = GqaConfig();
  CudaModelOptions o;
  o.prefill_chunk_tokens = 128;  // Several chunks, each reading the ones before from the KV.
  absl::StatusOr<std::unique_ptr<CudaModel>> gpu = CudaModel::Seeded(config, 77, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ModelWeights w = SeededWeights(config, 77, kernels::ThreadPool::Default());
  RoundToBf16(config, &w);
  std::unique_ptr<Model> cpu = CpuModel(config, std::move(w));
  const std::vector<uint32_t> prompt = RandomTokens(700, config.vocab_size, 2);
  KvCache ckv = cpu->NewKvCache();
  absl::StatusOr<std::vector<float>> want = cpu->Prefill(prompt, &ckv);
  absl::StatusOr<CudaKvCache> gkv = (*gpu)->NewKvCache(800);
  ASSERT_TRUE(want.ok() && gkv.ok());
  absl::StatusOr<std::vector<float>> got = (*gpu)->Prefill(prompt, &*gkv);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(RelativeError(*got, *want), kLogitsTolerance);
  const ModelSpec spec = (*gpu)->spec();
  const int64_t blocks = 700 / spec.block_tokens;
  EXPECT_LT(RelativeError(GpuBlocksAsFloats(*gkv, spec, blocks, (*gpu)->stream()),
                          CpuBlocksAsFloats(ckv, spec, blocks)),
            kKvTolerance);
}

TEST(CudaModel, BlocksMovedOutAndBackContinueBitForBit) {
  TIERKV_REQUIRE_GPU();
  absl::StatusOr<std::unique_ptr<CudaModel>> gpu = CudaModel::Load("builtin:tiny");
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const ModelSpec spec = (*gpu)->spec();
  const int64_t prefix_blocks = 10;
  const int64_t prefix = prefix_blocks * spec.block_tokens;
  const std::vector<uint32_t> prompt = RandomTokens(prefix + 37, 32768, 3);
  const std::span<const uint32_t> head(prompt.data(), prefix), tail(prompt.data() + prefix, 37);

  absl::StatusOr<CudaKvCache> a = (*gpu)->NewKvCache(512);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*gpu)->Prefill(head, &*a).ok());
  absl::StatusOr<std::vector<float>> cold = (*gpu)->Prefill(tail, &*a);
  ASSERT_TRUE(cold.ok());

  std::vector<uint8_t> objects(prefix_blocks * spec.RawBlockBytes());
  ASSERT_TRUE(a->ExtractBlocks(0, prefix_blocks, spec, objects.data(), (*gpu)->stream()).ok());
  ASSERT_TRUE(cu::SynchronizeDevice().ok());
  absl::StatusOr<CudaKvCache> b = (*gpu)->NewKvCache(512);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(b->AppendBlocks(objects.data(), prefix_blocks, spec, (*gpu)->stream()).ok());
  EXPECT_EQ(b->tokens(), prefix);
  absl::StatusOr<std::vector<float>> warm = (*gpu)->Prefill(tail, &*b);
  ASSERT_TRUE(warm.ok());
  EXPECT_EQ(*warm, *cold);  // Same KV, same work: the same bits.

  // The same blocks from registered host memory in pieces, through the device staging.
  {
    absl::StatusOr<cu::HostRegistration> reg =
        cu::HostRegistration::Register(objects.data(), objects.size());
    ASSERT_TRUE(reg.ok()) << reg.status();
    const size_t bytes = spec.RawBlockBytes();
    std::vector<PayloadPiece> pieces;
    for (int64_t i = 0; i < prefix_blocks; ++i) {
      pieces.push_back({objects.data() + i * bytes, 4096});
      pieces.push_back({objects.data() + i * bytes + 4096, bytes - 4096});
    }
    std::vector<std::span<const PayloadPiece>> blocks;
    for (int64_t i = 0; i < prefix_blocks; ++i) blocks.emplace_back(&pieces[2 * i], 2);
    // Staging of three blocks: several batches.
    absl::StatusOr<cu::DeviceBuffer> staging = cu::DeviceBuffer::Allocate(3 * bytes);
    absl::StatusOr<CudaKvCache> d = (*gpu)->NewKvCache(512);
    ASSERT_TRUE(staging.ok() && d.ok());
    ASSERT_TRUE(d->AppendBlocksFromHost(blocks, spec, staging->data(), staging->size(),
                                        (*gpu)->stream())
                    .ok());
    ASSERT_TRUE(cu::StreamSynchronize((*gpu)->stream()).ok());
    EXPECT_EQ(d->tokens(), prefix);
    absl::StatusOr<std::vector<float>> staged = (*gpu)->Prefill(tail, &*d);
    ASSERT_TRUE(staged.ok());
    EXPECT_EQ(*staged, *cold);
  }

  // Blocks computed by the CPU runtime (bf16 KV) continue on the GPU too.
  const ModelConfig config = BuiltinTinyConfig();
  ModelWeights w = SeededWeights(config, kBuiltinTinySeed, kernels::ThreadPool::Default());
  RoundToBf16(config, &w);
  std::unique_ptr<Model> cpu = CpuModel(config, std::move(w));
  KvCache ckv = cpu->NewKvCache();
  ASSERT_TRUE(cpu->Prefill(head, &ckv).ok());
  absl::StatusOr<std::vector<float>> cpu_tail = cpu->Prefill(tail, &ckv);
  ASSERT_TRUE(cpu_tail.ok());
  ModelSpec cpu_spec = spec;  // Same shape and dtype; the model id differs only.
  std::string cpu_objects;
  for (int64_t i = 0; i < prefix_blocks; ++i) {
    absl::StatusOr<std::string> blk = ExtractBlock(ckv, i, cpu_spec);
    ASSERT_TRUE(blk.ok());
    cpu_objects += *blk;
  }
  absl::StatusOr<CudaKvCache> c = (*gpu)->NewKvCache(512);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->AppendBlocks(cpu_objects.data(), prefix_blocks, spec, (*gpu)->stream()).ok());
  absl::StatusOr<std::vector<float>> mixed = (*gpu)->Prefill(tail, &*c);
  ASSERT_TRUE(mixed.ok());
  EXPECT_LT(RelativeError(*mixed, *cpu_tail), kLogitsTolerance);
}

TEST(CudaModel, BadInputGetsItsOwnStatusAndChangesNothing) {
  TIERKV_REQUIRE_GPU();
  absl::StatusOr<std::unique_ptr<CudaModel>> gpu = CudaModel::Load("builtin:tiny");
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<CudaKvCache> kv = (*gpu)->NewKvCache(64);
  ASSERT_TRUE(kv.ok());
  const std::vector<uint32_t> ok_tokens = RandomTokens(20, 32768, 4);
  ASSERT_TRUE((*gpu)->Prefill(ok_tokens, &*kv).ok());

  std::vector<uint32_t> bad = ok_tokens;
  bad[5] = 40000;
  EXPECT_EQ((*gpu)->Prefill(bad, &*kv).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gpu)->Prefill({}, &*kv).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gpu)->Prefill(RandomTokens(50, 32768, 5), &*kv).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv->tokens(), 20);
  EXPECT_EQ((*gpu)->NewKvCache(0).status().code(), absl::StatusCode::kInvalidArgument);

  ModelSpec spec = (*gpu)->spec();
  std::vector<uint8_t> block(spec.RawBlockBytes());
  // 20 tokens is not a block boundary (16-token blocks).
  EXPECT_EQ(kv->AppendBlocks(block.data(), 1, spec, (*gpu)->stream()).code(),
            absl::StatusCode::kFailedPrecondition);
  ModelSpec fp32 = spec;
  fp32.kv_dtype = "fp32";
  EXPECT_EQ(kv->AppendBlocks(block.data(), 1, fp32, (*gpu)->stream()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv->ExtractBlocks(0, 2, spec, block.data(), (*gpu)->stream()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(kv->tokens(), 20);

  ModelConfig odd = BuiltinTinyConfig();
  odd.head_dim = 32;
  odd.hidden_size = 256;
  EXPECT_EQ(CudaModel::Seeded(odd, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tierkv
