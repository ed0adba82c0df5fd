#include "proto/lookup_blocks.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tierkv/v1/common.pb.h"

namespace tierkv {
namespace {

std::string Records(const std::vector<LookupBlock>& blocks) {
  std::string out(blocks.size() * kLookupRecordBytes, '\xff');
  for (size_t i = 0; i < blocks.size(); ++i) {
    EncodeLookupBlock(blocks[i], out.data() + i * kLookupRecordBytes);
  }
  return out;
}

std::string Pieces(const std::vector<LookupPiece>& pieces) {
  std::string out(pieces.size() * kLookupPieceBytes, '\0');
  for (size_t i = 0; i < pieces.size(); ++i) {
    EncodeLookupPiece(pieces[i], out.data() + i * kLookupPieceBytes);
  }
  return out;
}

LookupBlock Host(uint64_t checksum, uint64_t offset, uint32_t size) {
  return {.checksum = checksum, .offset = offset, .size = size, .pieces = 1,
          .first_piece = 0, .codec = tierkv::v1::CODEC_RAW, .tier = tierkv::v1::TIER_HOST};
}

TEST(LookupBlocks, RecordLayoutIsTheDocumentedOne) {
  LookupBlock b{.checksum = 0x0807060504030201ull, .offset = 0x1817161514131211ull,
                .size = 0x24232221u, .pieces = 0x28272625u, .first_piece = 0x2c2b2a29u,
                .codec = 0x2d, .tier = 0x2e};
  std::string out(kLookupRecordBytes, '\xff');
  EncodeLookupBlock(b, out.data());
  const unsigned char expect[32] = {
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x11, 0x12, 0x13,
      0x14, 0x15, 0x16, 0x17, 0x18, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26,
      0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x00, 0x00};
  EXPECT_EQ(out, std::string(reinterpret_cast<const char*>(expect), 32));
  const LookupBlock back = DecodeLookupBlock(out.data());
  EXPECT_EQ(back.checksum, b.checksum);
  EXPECT_EQ(back.offset, b.offset);
  EXPECT_EQ(back.size, b.size);
  EXPECT_EQ(back.pieces, b.pieces);
  EXPECT_EQ(back.first_piece, b.first_piece);
  EXPECT_EQ(back.codec, b.codec);
  EXPECT_EQ(back.tier, b.tier);
}

TEST(LookupBlocks, ReadsOneAndManyPieceBlocks) {
  LookupBlock split = Host(7, 4096, 300);
  split.pieces = 2;
  split.first_piece = 0;
  const std::string blocks = Records({Host(5, 0, 100), split});
  const std::string pieces = Pieces({{4096, 200}, {65536, 100}});
  auto view = LookupBlocksView::Make(blocks, pieces, 2);
  ASSERT_TRUE(view.ok()) << view.status();
  ASSERT_EQ(view->size(), 2u);
  const LookupBlock a = view->block(0);
  EXPECT_EQ(a.checksum, 5u);
  EXPECT_EQ(view->piece(a, 0).offset, 0u);
  EXPECT_EQ(view->piece(a, 0).length, 100u);
  const LookupBlock b = view->block(1);
  EXPECT_EQ(b.pieces, 2u);
  EXPECT_EQ(view->piece(b, 0).offset, 4096u);
  EXPECT_EQ(view->piece(b, 1).offset, 65536u);
  EXPECT_EQ(view->piece(b, 1).length, 100u);
}

void ExpectMalformed(const std::string& blocks, const std::string& pieces, size_t found,
                     const std::string& needle) {
  auto view = LookupBlocksView::Make(blocks, pieces, found);
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(view.status().message().find(needle), std::string::npos) << view.status();
}

TEST(LookupBlocks, RefusesMalformedResponses) {
  const std::string one = Records({Host(1, 0, 10)});
  ExpectMalformed(one, "", 2, "2 blocks found but 32 bytes");
  ExpectMalformed(one + "x", "", 1, "33 bytes");
  ExpectMalformed(one, "abc", 1, "not a multiple of 16");
  LookupBlock bad = Host(1, 0, 10);
  bad.codec = 9;
  ExpectMalformed(Records({bad}), "", 1, "codec 9");
  bad = Host(1, 0, 10);
  bad.tier = tierkv::v1::TIER_SSD;
  ExpectMalformed(Records({bad}), "", 1, "tier 3");
  bad = Host(1, 0, 0);
  ExpectMalformed(Records({bad}), "", 1, "size 0");
  bad = Host(1, 0, 10);
  bad.pieces = 0;
  ExpectMalformed(Records({bad}), "", 1, "no pieces");
  bad = Host(1, 0, 10);
  bad.pieces = 2;
  bad.first_piece = 1;
  ExpectMalformed(Records({bad}), Pieces({{0, 5}, {5, 5}}), 1, "go past the 2 listed");
  bad.first_piece = 0;
  ExpectMalformed(Records({bad}), Pieces({{0, 5}, {5, 4}}), 1, "add up to 9 bytes");
  bad.offset = 5;
  ExpectMalformed(Records({bad}), Pieces({{0, 5}, {5, 5}}), 1, "not its first piece's");
  // Piece lengths whose sum wraps around to the size.
  bad = Host(1, 12288, 4096);
  bad.pieces = 2;
  bad.first_piece = 0;
  ExpectMalformed(Records({bad}), Pieces({{12288, 12288}, {0, ~uint64_t{0} - 8191}}), 1,
                  "more than its size");
  // Nothing found: no records, nothing to check.
  EXPECT_TRUE(LookupBlocksView::Make("", "", 0).ok());
}

}  // namespace
}  // namespace tierkv
