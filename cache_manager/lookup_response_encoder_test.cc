#include "cache_manager/lookup_response_encoder.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tierkv/v1/cache_service.pb.h"

namespace tierkv {
namespace {

namespace v1 = ::tierkv::v1;

struct Block {
  uint64_t size;
  uint64_t checksum;
  uint32_t codec;
  uint32_t tier;
  std::vector<PoolExtent> extents;
};

// What protobuf writes for the same content.
std::string Expected(const std::vector<Block>& blocks, const LookupResponseEncoder::Header& h) {
  v1::LookupResponse r;
  r.set_found(h.found);
  for (const Block& b : blocks) {
    r.add_sizes(b.size);
    r.add_checksums(b.checksum);
    r.add_codecs(static_cast<v1::Codec>(b.codec));
    r.add_tiers(static_cast<v1::Tier>(b.tier));
    r.add_extent_counts(b.extents.size());
    for (const PoolExtent& e : b.extents) {
      r.add_extent_offsets(e.offset);
      r.add_extent_lengths(e.length);
    }
  }
  r.set_node(std::string(h.node));
  r.set_remote_base(h.remote_base);
  r.set_lease_id(h.lease_id);
  r.set_lease_expires_unix_ms(h.lease_expires_unix_ms);
  return r.SerializeAsString();
}

std::string Encode(LookupResponseEncoder& encoder, size_t reserve, const std::vector<Block>& blocks,
                   const LookupResponseEncoder::Header& h) {
  encoder.Reset(reserve);
  for (const Block& b : blocks) encoder.AddBlock(b.size, b.checksum, b.codec, b.tier, b.extents);
  std::string out = encoder.Serialize(h);
  EXPECT_EQ(out.size(), encoder.ByteSize(h));
  return out;
}

TEST(LookupResponseEncoder, FieldNumbersMatchTheProto) {
  EXPECT_EQ(v1::LookupResponse::kFoundFieldNumber, 1);
  EXPECT_EQ(v1::LookupResponse::kSizesFieldNumber, 2);
  EXPECT_EQ(v1::LookupResponse::kChecksumsFieldNumber, 3);
  EXPECT_EQ(v1::LookupResponse::kCodecsFieldNumber, 4);
  EXPECT_EQ(v1::LookupResponse::kTiersFieldNumber, 5);
  EXPECT_EQ(v1::LookupResponse::kExtentCountsFieldNumber, 6);
  EXPECT_EQ(v1::LookupResponse::kExtentOffsetsFieldNumber, 7);
  EXPECT_EQ(v1::LookupResponse::kExtentLengthsFieldNumber, 8);
  EXPECT_EQ(v1::LookupResponse::kNodeFieldNumber, 9);
  EXPECT_EQ(v1::LookupResponse::kRemoteBaseFieldNumber, 10);
  EXPECT_EQ(v1::LookupResponse::kLeaseIdFieldNumber, 12);
  EXPECT_EQ(v1::LookupResponse::kLeaseExpiresUnixMsFieldNumber, 13);
}

TEST(LookupResponseEncoder, EmptyResponseIsEmptyMessage) {
  LookupResponseEncoder encoder;
  EXPECT_EQ(Encode(encoder, 0, {}, {}), "");
  EXPECT_EQ(Encode(encoder, 16, {}, {}), "");
}

TEST(LookupResponseEncoder, BytesEqualProtobufSerialization) {
  std::mt19937_64 rng(7);
  LookupResponseEncoder encoder;  // Reused across cases, as the service does.
  for (int round = 0; round < 200; ++round) {
    const size_t n = rng() % 300;
    std::vector<Block> blocks(n);
    for (Block& b : blocks) {
      const int bits = static_cast<int>(rng() % 64);
      b.size = rng() >> bits;
      b.checksum = rng();
      b.codec = 1 + rng() % 5;
      b.tier = 1 + rng() % 3;
      b.extents.resize(rng() % 4 == 0 ? rng() % 6 : 1);  // Sometimes none or several.
      for (PoolExtent& e : b.extents) {
        e.offset = rng() >> (rng() % 64);
        e.length = rng() >> (rng() % 64);
      }
    }
    LookupResponseEncoder::Header h;
    h.found = static_cast<uint32_t>(n);
    const std::string node = round % 3 == 0 ? "" : "127.0.0.1:5000";
    h.node = node;
    h.remote_base = round % 2 == 0 ? 0 : rng();
    h.lease_id = round % 4 == 0 ? 0 : rng() % 1000;
    h.lease_expires_unix_ms = round % 5 == 0 ? -5 : static_cast<int64_t>(rng() >> 20);
    // Reserving fewer blocks than are added, or no extents room, still encodes correctly.
    const size_t reserve = round % 7 == 0 ? n / 3 : n;
    const std::string got = Encode(encoder, reserve, blocks, h);
    ASSERT_EQ(got, Expected(blocks, h)) << "round " << round << ", " << n << " blocks";
    v1::LookupResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(got));
    EXPECT_EQ(parsed.sizes_size(), static_cast<int>(n));
  }
}

TEST(LookupResponseEncoder, LargeResponseGrowsAndShrinks) {
  LookupResponseEncoder encoder;
  std::vector<Block> blocks(70000, Block{4096, 42, 1, 1, {{65536, 4096}}});
  LookupResponseEncoder::Header h{.found = 70000, .node = "n"};
  EXPECT_EQ(Encode(encoder, 100, blocks, h), Expected(blocks, h));
  encoder.ShrinkIfAbove(1 << 20);
  EXPECT_EQ(Encode(encoder, 10, {blocks[0]}, {.found = 1}), Expected({blocks[0]}, {.found = 1}));
}

}  // namespace
}  // namespace tierkv
