#include "core/block_key.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

std::vector<uint32_t> Iota(size_t n, uint32_t first = 0) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// The vectors written by scripts/gen_block_key_vectors.py, an independent implementation.
// A missing environment or file is a failure, never a skip: CI must not pass by accident.
nlohmann::json LoadPublishedVectors() {
  const char* source_dir = std::getenv("TIERKV_SOURCE_DIR");
  if (source_dir == nullptr || *source_dir == '\0') {
    ADD_FAILURE() << "TIERKV_SOURCE_DIR is not set; run this test through ctest";
    return nullptr;
  }
  const std::filesystem::path path =
      std::filesystem::path(source_dir) / "docs" / "block_key_vectors.json";
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot open " << path;
    return nullptr;
  }
  nlohmann::json vectors = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (vectors.is_discarded() || !vectors.is_array()) {
    ADD_FAILURE() << path << " is not a JSON array";
    return nullptr;
  }
  return vectors;
}

ModelSpec SpecFromJson(const nlohmann::json& j) {
  ModelSpec spec;
  spec.model_id = j.at("model_id").get<std::string>();
  spec.weights_digest = j.at("weights_digest").get<std::string>();
  spec.num_layers = j.at("num_layers").get<uint32_t>();
  spec.num_kv_heads = j.at("num_kv_heads").get<uint32_t>();
  spec.head_dim = j.at("head_dim").get<uint32_t>();
  spec.kv_dtype = j.at("kv_dtype").get<std::string>();
  spec.block_tokens = j.at("block_tokens").get<uint32_t>();
  spec.tp_rank = j.at("tp_rank").get<uint32_t>();
  spec.tp_size = j.at("tp_size").get<uint32_t>();
  return spec;
}

TEST(BlockKey, MatchesPublishedVectors) {
  const nlohmann::json vectors = LoadPublishedVectors();
  ASSERT_TRUE(vectors.is_array());
  ASSERT_GE(vectors.size(), 6u);
  for (const nlohmann::json& v : vectors) {
    const std::string name = v.at("name").get<std::string>();
    SCOPED_TRACE(name);
    const ModelSpec spec = SpecFromJson(v.at("model_spec"));
    ASSERT_TRUE(spec.Validate().ok()) << spec.Validate();
    const absl::StatusOr<std::string> salt = FromHex(v.at("salt_hex").get<std::string>());
    ASSERT_TRUE(salt.ok()) << salt.status();
    // Token ids are full u32 values (the file goes up to 2^32-1).
    const std::vector<uint32_t> tokens = v.at("tokens").get<std::vector<uint32_t>>();

    const Digest fingerprint = ModelFingerprint(spec);
    EXPECT_EQ(ToHex(fingerprint), v.at("fingerprint_hex").get<std::string>());
    const Digest root = RootKey(fingerprint, *salt);
    EXPECT_EQ(ToHex(root), v.at("root_hex").get<std::string>());

    const std::vector<BlockKey> chain = BlockKeyChain(root, tokens, spec.block_tokens);
    std::vector<std::string> chain_hex;
    for (const BlockKey& key : chain) chain_hex.push_back(ToHex(key));
    EXPECT_EQ(chain_hex, v.at("keys_hex").get<std::vector<std::string>>());
    EXPECT_EQ(chain.size(), tokens.size() / spec.block_tokens);

    const absl::StatusOr<std::vector<BlockKey>> computed = ComputeBlockKeys(spec, *salt, tokens);
    ASSERT_TRUE(computed.ok()) << computed.status();
    EXPECT_EQ(*computed, chain);
  }
}

TEST(BlockKey, PublishedVectorsIncludeTheBuiltinTinySpec) {
  const nlohmann::json vectors = LoadPublishedVectors();
  ASSERT_TRUE(vectors.is_array());
  bool found = false;
  for (const nlohmann::json& v : vectors) {
    found = found || SpecFromJson(v.at("model_spec")) == BuiltinTinyModelSpec();
  }
  EXPECT_TRUE(found);
}

TEST(BlockKey, BuiltinTinySpecIsValidAndHasExpectedShape) {
  const ModelSpec spec = BuiltinTinyModelSpec();
  EXPECT_TRUE(spec.Validate().ok()) << spec.Validate();
  EXPECT_EQ(spec.model_id, "builtin:tiny");
  EXPECT_EQ(spec.weights_digest, "seed:1234");
  EXPECT_EQ(spec.DtypeBytes(), 4u);
  // 4 layers * (K, V) * 16 tokens * 4 heads * 64 dims * 4 bytes.
  EXPECT_EQ(spec.RawBlockBytes(), 131072u);
}

TEST(BlockKey, RawBlockBytesFollowsLayoutFormula) {
  ModelSpec spec = BuiltinTinyModelSpec();
  spec.num_layers = 32;
  spec.num_kv_heads = 8;
  spec.head_dim = 128;
  spec.kv_dtype = "bf16";
  EXPECT_EQ(spec.DtypeBytes(), 2u);
  EXPECT_EQ(spec.RawBlockBytes(), uint64_t{32} * 2 * 16 * 8 * 128 * 2);
  spec.kv_dtype = "fp16";
  EXPECT_EQ(spec.DtypeBytes(), 2u);
  // Does not overflow 32 bits for large blocks.
  spec.block_tokens = 65536;
  spec.num_kv_heads = 64;
  EXPECT_EQ(spec.RawBlockBytes(), uint64_t{32} * 2 * 65536 * 64 * 128 * 2);
  spec.kv_dtype = "int8";
  EXPECT_EQ(spec.DtypeBytes(), 0u);
}

// Each case breaks exactly one field of an otherwise valid spec.
TEST(ModelSpec, ValidateRejectsEachBadFieldWithInvalidArgument) {
  struct Case {
    const char* field;
    void (*mutate)(ModelSpec&);
  };
  const Case cases[] = {
      {"model_id", [](ModelSpec& s) { s.model_id.clear(); }},
      {"num_layers", [](ModelSpec& s) { s.num_layers = 0; }},
      {"num_kv_heads", [](ModelSpec& s) { s.num_kv_heads = 0; }},
      {"head_dim", [](ModelSpec& s) { s.head_dim = 0; }},
      {"kv_dtype", [](ModelSpec& s) { s.kv_dtype = "int8"; }},
      {"kv_dtype", [](ModelSpec& s) { s.kv_dtype = "BF16"; }},  // Case matters.
      {"kv_dtype", [](ModelSpec& s) { s.kv_dtype.clear(); }},
      {"block_tokens", [](ModelSpec& s) { s.block_tokens = 0; }},
      {"block_tokens", [](ModelSpec& s) { s.block_tokens = 24; }},
      {"block_tokens", [](ModelSpec& s) { s.block_tokens = 131072; }},
      {"tp_size", [](ModelSpec& s) { s.tp_size = 0; }},
      {"tp_rank", [](ModelSpec& s) { s.tp_rank = 1; }},  // tp_size is 1.
      {"tp_rank",
       [](ModelSpec& s) {
         s.tp_size = 4;
         s.tp_rank = 7;
       }},
  };
  for (const Case& c : cases) {
    ModelSpec spec = BuiltinTinyModelSpec();
    c.mutate(spec);
    const absl::Status status = spec.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.field));
    EXPECT_EQ(ComputeBlockKeys(spec, "", Iota(32)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << c.field;
  }
}

TEST(ModelSpec, ValidateAcceptsBoundaryValues) {
  ModelSpec spec = BuiltinTinyModelSpec();
  for (uint32_t block_tokens : {1u, 2u, 16u, 64u, 65536u}) {
    spec.block_tokens = block_tokens;
    EXPECT_TRUE(spec.Validate().ok()) << block_tokens << ": " << spec.Validate();
  }
  spec.block_tokens = 16;
  spec.tp_size = 8;
  spec.tp_rank = 7;
  EXPECT_TRUE(spec.Validate().ok()) << spec.Validate();
  for (const char* dtype : {"bf16", "fp16", "fp32"}) {
    spec.kv_dtype = dtype;
    EXPECT_TRUE(spec.Validate().ok()) << dtype;
  }
}

TEST(BlockKey, EveryFingerprintFieldChangesTheFingerprint) {
  const ModelSpec base = BuiltinTinyModelSpec();
  const Digest base_fp = ModelFingerprint(base);
  void (*const mutations[])(ModelSpec&) = {
      [](ModelSpec& s) { s.model_id += "x"; },
      [](ModelSpec& s) { s.weights_digest = "seed:1235"; },
      [](ModelSpec& s) { s.num_layers = 5; },
      [](ModelSpec& s) { s.num_kv_heads = 8; },
      [](ModelSpec& s) { s.head_dim = 128; },
      [](ModelSpec& s) { s.kv_dtype = "bf16"; },
      [](ModelSpec& s) { s.block_tokens = 32; },
      [](ModelSpec& s) {
        s.tp_size = 2;
        s.tp_rank = 1;
      },
      [](ModelSpec& s) { s.tp_size = 2; },
  };
  for (size_t i = 0; i < std::size(mutations); ++i) {
    ModelSpec spec = base;
    mutations[i](spec);
    EXPECT_NE(ModelFingerprint(spec), base_fp) << "mutation " << i;
  }
}

TEST(BlockKey, LengthPrefixesKeepAdjacentFieldsApart) {
  // Without length prefixes these two specs would hash the same concatenated bytes.
  ModelSpec a = BuiltinTinyModelSpec();
  a.model_id = "ab";
  a.weights_digest = "c";
  ModelSpec b = a;
  b.model_id = "a";
  b.weights_digest = "bc";
  EXPECT_NE(ModelFingerprint(a), ModelFingerprint(b));
}

TEST(BlockKey, DifferentSaltsGiveDisjointKeys) {
  const ModelSpec spec = BuiltinTinyModelSpec();
  const std::vector<uint32_t> tokens = Iota(64, 1);
  auto a = ComputeBlockKeys(spec, "", tokens);
  auto b = ComputeBlockKeys(spec, "tenant-a", tokens);
  auto c = ComputeBlockKeys(spec, "tenant-b", tokens);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_EQ(a->size(), 4u);
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_NE((*a)[i], (*b)[i]) << i;
    EXPECT_NE((*b)[i], (*c)[i]) << i;
    EXPECT_NE((*a)[i], (*c)[i]) << i;
  }
  // The same salt reproduces the same keys.
  auto b_again = ComputeBlockKeys(spec, "tenant-a", tokens);
  ASSERT_TRUE(b_again.ok());
  EXPECT_EQ(*b_again, *b);
}

TEST(BlockKey, DifferentFingerprintsGiveDifferentKeys) {
  const std::vector<uint32_t> tokens = Iota(32, 1);
  ModelSpec rank0 = BuiltinTinyModelSpec();
  rank0.tp_size = 2;
  ModelSpec rank1 = rank0;
  rank1.tp_rank = 1;
  auto a = ComputeBlockKeys(rank0, "", tokens);
  auto b = ComputeBlockKeys(rank1, "", tokens);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 2u);
  EXPECT_NE((*a)[0], (*b)[0]);
  EXPECT_NE((*a)[1], (*b)[1]);
}

TEST(BlockKey, KeyDependsOnEveryEarlierTokenButNotLaterOnes) {
  const Digest root = RootKey(ModelFingerprint(BuiltinTinyModelSpec()), "");
  const std::vector<uint32_t> base = Iota(4 * 16 + 5, 100);  // 4 full blocks + 5 tokens.
  const std::vector<BlockKey> base_keys = BlockKeyChain(root, base, 16);
  ASSERT_EQ(base_keys.size(), 4u);
  for (size_t pos = 0; pos < base.size(); ++pos) {
    std::vector<uint32_t> tokens = base;
    tokens[pos] ^= 0x80000000u;
    const std::vector<BlockKey> keys = BlockKeyChain(root, tokens, 16);
    ASSERT_EQ(keys.size(), base_keys.size());
    for (size_t block = 0; block < keys.size(); ++block) {
      if (block < pos / 16) {
        EXPECT_EQ(keys[block], base_keys[block]) << "token " << pos << " block " << block;
      } else {
        EXPECT_NE(keys[block], base_keys[block]) << "token " << pos << " block " << block;
      }
    }
  }
}

TEST(BlockKey, OnlyFullBlocksHaveKeysAndPrefixesShareKeys) {
  const Digest root = RootKey(ModelFingerprint(BuiltinTinyModelSpec()), "");
  const std::vector<uint32_t> tokens = Iota(50, 7);
  EXPECT_TRUE(BlockKeyChain(root, std::span(tokens).first(0), 16).empty());
  EXPECT_TRUE(BlockKeyChain(root, std::span(tokens).first(15), 16).empty());
  const std::vector<BlockKey> all = BlockKeyChain(root, tokens, 16);
  ASSERT_EQ(all.size(), 3u);
  const std::vector<BlockKey> two = BlockKeyChain(root, std::span(tokens).first(32), 16);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0], all[0]);
  EXPECT_EQ(two[1], all[1]);
  EXPECT_EQ(BlockKeyChain(root, std::span(tokens).first(47), 16), two);
  // The chain is NextBlockKey applied block by block from the root.
  EXPECT_EQ(all[0], NextBlockKey(root, std::span(tokens).subspan(0, 16)));
  EXPECT_EQ(all[1], NextBlockKey(all[0], std::span(tokens).subspan(16, 16)));
  EXPECT_EQ(all[2], NextBlockKey(all[1], std::span(tokens).subspan(32, 16)));
}

TEST(BlockKey, ZeroBlockTokensGivesNoKeys) {
  const Digest root = RootKey(ModelFingerprint(BuiltinTinyModelSpec()), "");
  EXPECT_TRUE(BlockKeyChain(root, Iota(32), 0).empty());
}

TEST(Hex, ToHexIsLowercaseAndRoundTrips) {
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  const std::string hex = ToHex(all_bytes);
  ASSERT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(504), "fcfdfeff");
  EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos);
  auto back = FromHex(hex);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, all_bytes);
  EXPECT_EQ(ToHex(std::string_view()), "");
  auto empty = FromHex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST(Hex, FromHexAcceptsEitherCase) {
  auto lower = FromHex("deadbeef");
  auto upper = FromHex("DEADBEEF");
  auto mixed = FromHex("DeAdBeEf");
  ASSERT_TRUE(lower.ok() && upper.ok() && mixed.ok());
  EXPECT_EQ(*lower, "\xde\xad\xbe\xef");
  EXPECT_EQ(*upper, *lower);
  EXPECT_EQ(*mixed, *lower);
}

TEST(Hex, FromHexRejectsOddLengthAndNonHexDigits) {
  EXPECT_EQ(FromHex("abc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromHex("0g").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromHex("g0").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromHex("0x12").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromHex("12 4").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(FromHex("00zz").status().message()), HasSubstr("position 2"));
}

TEST(Hex, BlockKeyRoundTripsThroughHexAndBytes) {
  const Digest root = RootKey(ModelFingerprint(BuiltinTinyModelSpec()), "salt");
  const BlockKey key = NextBlockKey(root, Iota(16));
  const std::string hex = ToHex(key);
  ASSERT_EQ(hex.size(), 64u);
  auto from_hex = BlockKeyFromHex(hex);
  ASSERT_TRUE(from_hex.ok()) << from_hex.status();
  EXPECT_EQ(*from_hex, key);
  auto from_bytes = BlockKeyFromBytes(KeyBytes(key));
  ASSERT_TRUE(from_bytes.ok()) << from_bytes.status();
  EXPECT_EQ(*from_bytes, key);
  EXPECT_EQ(KeyBytes(key).size(), kDigestBytes);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto from_upper = BlockKeyFromHex(upper);
  ASSERT_TRUE(from_upper.ok());
  EXPECT_EQ(*from_upper, key);
}

TEST(Hex, BlockKeyFromHexRejectsWrongLengthAndNonHex) {
  const std::string good(64, 'a');
  EXPECT_TRUE(BlockKeyFromHex(good).ok());
  EXPECT_EQ(BlockKeyFromHex("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKeyFromHex(good.substr(1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKeyFromHex(good.substr(2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKeyFromHex(good + "aa").status().code(), absl::StatusCode::kInvalidArgument);
  std::string bad = good;
  bad[63] = 'z';
  EXPECT_EQ(BlockKeyFromHex(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Hex, BlockKeyFromBytesRejectsWrongLength) {
  EXPECT_TRUE(BlockKeyFromBytes(std::string(32, '\x01')).ok());
  EXPECT_EQ(BlockKeyFromBytes("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKeyFromBytes(std::string(31, '\x01')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKeyFromBytes(std::string(33, '\x01')).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 64 hex digits are not 32 raw bytes.
  EXPECT_EQ(BlockKeyFromBytes(std::string(64, 'a')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Checksum, IsXxh3SixtyFourWithSeedZero) {
  // Known-answer values of XXH3_64bits (seed 0); also quoted in docs/block-keys.md.
  EXPECT_EQ(BlockChecksum("", 0), 0x2d06800538d394c2u);
  EXPECT_EQ(BlockChecksum("abc", 3), 0x78af5f94892f3950u);
  const std::vector<uint8_t> zeros(BuiltinTinyModelSpec().RawBlockBytes(), 0);
  EXPECT_EQ(BlockChecksum(zeros.data(), zeros.size()), 0xe7488e240cc78ea7u);
}

TEST(Checksum, BuilderOverPiecesEqualsOneShotChecksum) {
  std::vector<uint8_t> payload(BuiltinTinyModelSpec().RawBlockBytes());
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 31 + 7);
  const uint64_t whole = BlockChecksum(payload.data(), payload.size());
  EXPECT_EQ(whole, 0xc88c4139bb021d72u);
  // Split points include empty pieces, tiny pieces and pieces across XXH3's internal
  // stripe and block boundaries.
  for (size_t piece : {size_t{1}, size_t{3}, size_t{64}, size_t{240}, size_t{1000}, size_t{4096},
                       size_t{65536}, payload.size()}) {
    ChecksumBuilder builder;
    builder.Update(payload.data(), 0);
    for (size_t off = 0; off < payload.size(); off += piece) {
      builder.Update(payload.data() + off, std::min(piece, payload.size() - off));
    }
    EXPECT_EQ(builder.Finish(), whole) << "piece " << piece;
  }
  ChecksumBuilder empty;
  EXPECT_EQ(empty.Finish(), BlockChecksum("", 0));
}

TEST(Checksum, DetectsASingleFlippedBit) {
  std::vector<uint8_t> payload(4096, 0x5a);
  const uint64_t before = BlockChecksum(payload.data(), payload.size());
  payload[1234] ^= 0x10;
  EXPECT_NE(BlockChecksum(payload.data(), payload.size()), before);
}

TEST(BlockKeyHash, UsesTheFirstEightBytesOfTheKey) {
  BlockKey a{};
  BlockKey b{};
  b[31] = 1;  // Differs only past the first eight bytes.
  EXPECT_EQ(BlockKeyHash()(a), BlockKeyHash()(b));
  b[0] = 1;
  EXPECT_NE(BlockKeyHash()(a), BlockKeyHash()(b));
}

}  // namespace
}  // namespace tierkv
