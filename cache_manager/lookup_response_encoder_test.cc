#include "cache_manager/lookup_response_encoder.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "cache_manager/block_index.h"
#include "core/clock.h"
#include "core/status.h"
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
  std::string records, pieces;
  for (const Block& b : blocks) {
    LookupBlock rec{.checksum = b.checksum,
                    .offset = b.extents[0].offset,
                    .size = static_cast<uint32_t>(b.size),
                    .pieces = static_cast<uint32_t>(b.extents.size()),
                    .first_piece = 0,
                    .codec = static_cast<uint8_t>(b.codec),
                    .tier = static_cast<uint8_t>(b.tier)};
    if (b.extents.size() > 1) {
      rec.first_piece = static_cast<uint32_t>(pieces.size() / kLookupPieceBytes);
      for (const PoolExtent& e : b.extents) {
        std::string piece(kLookupPieceBytes, '\0');
        EncodeLookupPiece({e.offset, e.length}, piece.data());
        pieces += piece;
      }
    }
    std::string record(kLookupRecordBytes, '\0');
    EncodeLookupBlock(rec, record.data());
    records += record;
  }
  r.set_blocks(records);
  r.set_pieces(pieces);
  r.set_node(std::string(h.node));
  r.set_remote_base(h.remote_base);
  r.set_lease_id(h.lease_id);
  r.set_lease_expires_unix_ms(h.lease_expires_unix_ms);
  return r.SerializeAsString();
}

std::string Encode(LookupResponseEncoder& encoder, size_t reserve, const std::vector<Block>& blocks,
                   const LookupResponseEncoder::Header& h) {
  encoder.Reset(reserve);
  for (const Block& b : blocks) {
    if (b.extents.size() == 1 && b.checksum % 2 == 0) {
      encoder.AddBlock(b.size, b.checksum, b.codec, b.tier, b.extents[0].offset);  // One piece.
    } else {
      encoder.AddBlock(b.size, b.checksum, b.codec, b.tier, b.extents);
    }
  }
  EXPECT_EQ(encoder.count(), blocks.size());
  return encoder.Serialize(h);
}

TEST(LookupResponseEncoder, FieldNumbersMatchTheProto) {
  EXPECT_EQ(v1::LookupResponse::kFoundFieldNumber, 1);
  EXPECT_EQ(v1::LookupResponse::kNodeFieldNumber, 9);
  EXPECT_EQ(v1::LookupResponse::kRemoteBaseFieldNumber, 10);
  EXPECT_EQ(v1::LookupResponse::kLeaseIdFieldNumber, 12);
  EXPECT_EQ(v1::LookupResponse::kLeaseExpiresUnixMsFieldNumber, 13);
  EXPECT_EQ(v1::LookupResponse::kBlocksFieldNumber, 14);
  EXPECT_EQ(v1::LookupResponse::kPiecesFieldNumber, 15);
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
      b.size = 1 + rng() % (256u << 20);
      b.checksum = rng();
      b.codec = 1 + rng() % 5;
      b.tier = 1 + rng() % 2;
      b.extents.resize(rng() % 4 == 0 ? 1 + rng() % 6 : 1);  // Sometimes several pieces.
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
    // Reserving fewer records than are added still encodes correctly.
    const size_t reserve = round % 7 == 0 ? n / 3 : n;
    const std::string got = Encode(encoder, reserve, blocks, h);
    ASSERT_EQ(got, Expected(blocks, h)) << "round " << round << ", " << n << " blocks";
    v1::LookupResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(got));
    EXPECT_EQ(parsed.blocks().size(), n * kLookupRecordBytes);
  }
}

TEST(LookupResponseEncoder, RecordsReadBackThroughTheView) {
  LookupResponseEncoder encoder;
  std::vector<Block> blocks = {{4096, 42, 1, 2, {{65536, 4096}}},
                               {5000, 43, 2, 1, {{0, 1000}, {131072, 4000}}},
                               {10, 44, 1, 2, {{4096, 10}}}};
  const std::string wire = Encode(encoder, 3, blocks, {.found = 3, .node = "n"});
  v1::LookupResponse r;
  ASSERT_TRUE(r.ParseFromString(wire));
  auto view = LookupBlocksView::Make(r.blocks(), r.pieces(), r.found());
  ASSERT_TRUE(view.ok()) << view.status();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const LookupBlock b = view->block(i);
    EXPECT_EQ(b.size, blocks[i].size);
    EXPECT_EQ(b.checksum, blocks[i].checksum);
    EXPECT_EQ(b.codec, blocks[i].codec);
    EXPECT_EQ(b.tier, blocks[i].tier);
    ASSERT_EQ(b.pieces, blocks[i].extents.size());
    for (uint32_t j = 0; j < b.pieces; ++j) {
      EXPECT_EQ(view->piece(b, j).offset, blocks[i].extents[j].offset);
      EXPECT_EQ(view->piece(b, j).length, blocks[i].extents[j].length);
    }
  }
}

TEST(LookupResponseEncoder, LargeResponseGrows) {
  LookupResponseEncoder encoder;
  std::vector<Block> blocks(70000, Block{4096, 42, 1, 2, {{65536, 4096}}});
  LookupResponseEncoder::Header h{.found = 70000, .node = "n"};
  EXPECT_EQ(Encode(encoder, 100, blocks, h), Expected(blocks, h));
  EXPECT_EQ(Encode(encoder, 10, {blocks[0]}, {.found = 1}), Expected({blocks[0]}, {.found = 1}));
}

// A Lookup with the encoder's sink writes the records of blocks in one host piece itself
// (BlockIndex::AnswerRun) and hands the rest to the encoder: the response must be the one
// the encoder writes for every block, in the same order, with blocks in several pieces
// among the others and a response that outgrows what was reserved.
TEST(LookupResponseEncoder, IndexRecordsThroughTheSinkAreTheEncodersOwn) {
  constexpr uint64_t kPage = 4096;
  auto pool = *HostPool::Create({.capacity_bytes = 2048 * kPage, .page_bytes = kPage});
  FakeClock clock;
  EventLog events(1024);
  BlockIndex index(BlockIndexOptions{}, pool.get(), &clock, &events);
  const ModelSpec spec = BuiltinTinyModelSpec();
  auto chain = [&](size_t n, uint32_t seed) {
    std::vector<uint32_t> tokens(n * spec.block_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = seed * 1000003 + i;
    return *ComputeBlockKeys(spec, "", tokens);
  };
  auto store = [&](const std::vector<BlockKey>& keys, uint64_t size) {
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = 0; i < keys.size(); ++i) {
      specs.push_back({std::string(KeyBytes(keys[i])),
                       i == 0 ? "" : std::string(KeyBytes(keys[i - 1])), size, 0});
    }
    auto a = index.Allocate(spec, specs, absl::ZeroDuration());
    ASSERT_TRUE(a.ok()) << a.status();
    std::vector<std::pair<std::string, uint64_t>> commits;
    for (auto& b : a->blocks) {
      const std::string data(size, static_cast<char>(b.key[0]));
      ASSERT_TRUE(index.Write(a->allocation_id, std::string(KeyBytes(b.key)), 0, data).ok());
      commits.emplace_back(std::string(KeyBytes(b.key)), BlockChecksum(data.data(), size));
    }
    ASSERT_TRUE(index.Commit(a->allocation_id, commits).ok());
  };
  // One-page roots over the whole pool, every other one evicted: holes of one page, where
  // a block of more than one page only fits in pieces.
  std::vector<BlockKey> roots;
  for (uint32_t r = 0; r < 2048; ++r) roots.push_back(chain(1, 100 + r)[0]);
  for (const BlockKey& root : roots) store({root}, kPage);
  for (size_t r = 0; r < roots.size(); r += 2) {
    ASSERT_TRUE(index.Evict({std::string(KeyBytes(roots[r]))}).ok());
  }
  // 150 blocks of three pages, then 250 of one page, then 50 of two.
  const auto keys = chain(450, 1);
  store(std::vector<BlockKey>(keys.begin(), keys.begin() + 150), 3 * kPage - 100);
  store(std::vector<BlockKey>(keys.begin() + 150, keys.begin() + 400), kPage);
  store(std::vector<BlockKey>(keys.begin() + 400, keys.end()), 2 * kPage);
  std::string packed;
  for (const BlockKey& k : keys) packed.append(KeyBytes(k));

  auto lookup = [&](bool sink, size_t reserve) {
    LookupResponseEncoder encoder;
    encoder.Reset(reserve);
    size_t handed = 0;
    auto r = index.LookupPackedBatches(
        packed, std::nullopt, {}, false, absl::ZeroDuration(),
        [&](BlockIndex::BlockBatch blocks) {
          for (const CommittedBlock* b : blocks) {
            ++handed;
            if (b->host_offset != CommittedBlock::kSplitHostCopy) {
              encoder.AddBlock(b->size, b->checksum, b->codec, v1::TIER_HOST, b->host_offset);
            } else {
              encoder.AddBlock(b->size, b->checksum, b->codec, v1::TIER_HOST, b->space.extents);
            }
          }
        },
        false, sink ? encoder.sink() : nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->found, keys.size());
    EXPECT_EQ(encoder.count(), keys.size());
    if (sink) {
      EXPECT_LT(handed, keys.size() / 2);  // Most records came through the sink.
    }
    return encoder.Serialize({.found = static_cast<uint32_t>(r->found), .node = "n"});
  };
  const std::string plain = lookup(false, keys.size());
  v1::LookupResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(plain));
  EXPECT_GT(parsed.pieces().size(), 0u);  // Some blocks are in pieces.
  EXPECT_EQ(lookup(true, keys.size()), plain);
  EXPECT_EQ(lookup(true, 40), plain);  // The sink fills up; the encoder grows.
}

}  // namespace
}  // namespace tierkv
