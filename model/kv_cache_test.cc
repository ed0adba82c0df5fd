// KvCache and the block object conversion: the byte layout of docs/block-object.md, round
// trips in every kv_dtype, and the error cases.
#include "model/kv_cache.h"

#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace tierkv {
namespace {

ModelSpec SpecFor(const KvCache& kv, const std::string& dtype, uint32_t block_tokens = 16) {
  ModelSpec spec;
  spec.model_id = "test";
  spec.weights_digest = "none";
  spec.num_layers = kv.num_layers();
  spec.num_kv_heads = kv.num_kv_heads();
  spec.head_dim = kv.head_dim();
  spec.kv_dtype = dtype;
  spec.block_tokens = block_tokens;
  return spec;
}

// A value that encodes its coordinates (exactly in fp32; bf16 and fp16 round it).
float Code(int layer, int kv, int64_t token, int head, int dim) {
  return static_cast<float>(((layer * 2 + kv) * 64 + token % 64) * 4 + head % 4) +
         (dim % 2 == 0 ? 0.0f : 0.5f) + (dim % 4 >= 2 ? 0.25f : 0.0f);
}

KvCache CodedCache(int layers, int heads, int dim, int64_t tokens) {
  KvCache kv(layers, heads, dim);
  kv.Resize(tokens);
  std::vector<float> k(tokens * heads * dim), v(k.size());
  for (int l = 0; l < layers; ++l) {
    for (int64_t t = 0; t < tokens; ++t) {
      for (int h = 0; h < heads; ++h) {
        for (int d = 0; d < dim; ++d) {
          k[(t * heads + h) * dim + d] = Code(l, 0, t, h, d);
          v[(t * heads + h) * dim + d] = Code(l, 1, t, h, d);
        }
      }
    }
    kv.WriteRows(l, 0, tokens, k.data(), heads * dim, v.data(), heads * dim);
  }
  return kv;
}

TEST(ExtractBlock, ElementsSitAtTheDocumentedOffsets) {
  const int L = 3, H = 2, D = 8;
  KvCache kv = CodedCache(L, H, D, 50);
  for (const std::string dtype : {"fp32", "bf16", "fp16"}) {
    const ModelSpec spec = SpecFor(kv, dtype);
    const kernels::DType dt = *kernels::ParseDTypeName(dtype);
    const size_t E = kernels::DTypeBytes(dt);
    const uint64_t T = spec.block_tokens;
    absl::StatusOr<std::string> block = ExtractBlock(kv, 2, spec);
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_EQ(block->size(), spec.RawBlockBytes());
    ASSERT_EQ(block->size(), L * 2 * T * H * D * E);
    const size_t tensor_bytes = T * H * D * E;
    for (int l = 0; l < L; ++l) {
      for (int which = 0; which < 2; ++which) {
        for (uint64_t t = 0; t < T; ++t) {
          for (int h = 0; h < H; ++h) {
            for (int d = 0; d < D; ++d) {
              // docs/block-object.md: tensor (2l + which), element ((t*H + h)*D + d).
              const size_t offset = (2 * l + which) * tensor_bytes + ((t * H + h) * D + d) * E;
              float got;
              kernels::ConvertToFloat(block->data() + offset, dt, 1, &got);
              ASSERT_EQ(got, kernels::RoundToDType(Code(l, which, 2 * T + t, h, d), dt))
                  << dtype << " l=" << l << " kv=" << which << " t=" << t << " h=" << h;
            }
          }
        }
      }
    }
  }
  // fp32 little-endian bytes of element 0 of block 0 (layer 0 K, token 0, head 0, dim 0).
  absl::StatusOr<std::string> b0 = ExtractBlock(kv, 0, SpecFor(kv, "fp32"));
  const float first = Code(0, 0, 0, 0, 0);
  uint32_t bits;
  std::memcpy(&bits, &first, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(static_cast<uint8_t>((*b0)[i]), (bits >> (8 * i)) & 0xff);
}

TEST(AppendBlock, RoundTripsEveryDtype) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0, 3);
  for (const std::string dtype : {"fp32", "bf16", "fp16"}) {
    KvCache kv(2, 4, 64);
    kv.Resize(48);
    std::vector<float> rows(48 * 256);
    for (int l = 0; l < 2; ++l) {
      for (float& x : rows) x = dist(rng);
      std::vector<float> vrows = rows;
      for (float& x : vrows) x = dist(rng);
      kv.WriteRows(l, 0, 48, rows.data(), 256, vrows.data(), 256);
    }
    const ModelSpec spec = SpecFor(kv, dtype);
    const kernels::DType dt = *kernels::ParseDTypeName(dtype);
    KvCache copy(2, 4, 64);
    for (uint64_t b = 0; b < 3; ++b) {
      absl::StatusOr<std::string> bytes = ExtractBlock(kv, b, spec);
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      ASSERT_TRUE(AppendBlock(&copy, *bytes, spec).ok());
    }
    ASSERT_EQ(copy.tokens(), 48);
    for (int l = 0; l < 2; ++l) {
      for (int64_t i = 0; i < 48 * 256; ++i) {
        ASSERT_EQ(copy.k(l)[i], kernels::RoundToDType(kv.k(l)[i], dt));
        ASSERT_EQ(copy.v(l)[i], kernels::RoundToDType(kv.v(l)[i], dt));
      }
    }
    // Extracting again from the copy gives the same bytes.
    EXPECT_EQ(*ExtractBlock(copy, 1, spec), *ExtractBlock(kv, 1, spec));
  }
}

TEST(AppendBlock, RejectsWrongSizeShapeAndAlignment) {
  KvCache kv = CodedCache(2, 2, 16, 32);
  const ModelSpec spec = SpecFor(kv, "fp32");
  std::string block = *ExtractBlock(kv, 0, spec);

  KvCache dst(2, 2, 16);
  absl::Status s = AppendBlock(&dst, block.substr(1), spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find(std::to_string(spec.RawBlockBytes())),
            std::string::npos) << s;
  EXPECT_EQ(dst.tokens(), 0);

  KvCache other(2, 4, 16);
  EXPECT_EQ(AppendBlock(&other, block, spec).code(), absl::StatusCode::kInvalidArgument);

  dst.Resize(3);
  EXPECT_EQ(AppendBlock(&dst, block, spec).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dst.tokens(), 3);

  ModelSpec bad = spec;
  bad.kv_dtype = "int8";
  EXPECT_EQ(AppendBlock(&dst, block, bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExtractBlock, RejectsBlocksNotFullyComputed) {
  KvCache kv = CodedCache(2, 2, 16, 40);
  const ModelSpec spec = SpecFor(kv, "fp32");
  EXPECT_TRUE(ExtractBlock(kv, 1, spec).ok());
  EXPECT_EQ(ExtractBlock(kv, 2, spec).status().code(), absl::StatusCode::kOutOfRange);
  std::vector<uint8_t> small(10);
  EXPECT_EQ(ExtractBlockInto(kv, 0, spec, small).code(), absl::StatusCode::kInvalidArgument);
  ModelSpec wrong = spec;
  wrong.num_layers = 3;
  EXPECT_EQ(ExtractBlock(kv, 0, wrong).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCache, KeyBlocksFollowWritesAndTruncation) {
  const int H = 2, D = 16;
  KvCache kv = CodedCache(1, H, D, 150);
  ASSERT_TRUE(kv.UpdateKeyBlocks(0, nullptr).ok());
  EXPECT_EQ(kv.num_key_blocks(0), 2);
  auto check = [&] {
    std::vector<float> want(kv.num_key_blocks(0) * H * D * 64);
    kernels::TransposeKeysParams p{kv.k(0), H * D, kv.tokens(), H, D, 0, kv.num_key_blocks(0),
                                   want.data()};
    ASSERT_TRUE(kernels::TransposeKeys(p, nullptr).ok());
    ASSERT_EQ(std::memcmp(want.data(), kv.key_blocks(0), want.size() * 4), 0);
  };
  check();
  // Rewriting a row inside block 1 drops that block until the next update.
  std::vector<float> row(H * D, 9.0f);
  kv.WriteRows(0, 100, 1, row.data(), H * D, row.data(), H * D);
  EXPECT_EQ(kv.num_key_blocks(0), 1);
  ASSERT_TRUE(kv.UpdateKeyBlocks(0, nullptr).ok());
  EXPECT_EQ(kv.num_key_blocks(0), 2);
  check();
  kv.Truncate(70);
  EXPECT_EQ(kv.num_key_blocks(0), 1);
  kv.Resize(200);
  ASSERT_TRUE(kv.UpdateKeyBlocks(0, nullptr).ok());
  EXPECT_EQ(kv.num_key_blocks(0), 3);
  check();
  EXPECT_EQ(kv.k(0)[150 * H * D], 0.0f);  // Grown rows are zero.
}

}  // namespace
}  // namespace tierkv
