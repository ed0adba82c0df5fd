#include "proto/lookup_blocks.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tierkv {
namespace {

// Codec and Tier values of proto/tierkv/v1/common.proto that a record may carry.
constexpr uint8_t kMaxCodecValue = 5;
constexpr uint8_t kTierGpu = 1;
constexpr uint8_t kTierHost = 2;
constexpr uint64_t kMaxSize = 256ull << 20;

absl::Status Malformed(const std::string& what) {
  return absl::InternalError(absl::StrCat("malformed Lookup response: ", what));
}

}  // namespace

absl::StatusOr<LookupBlocksView> LookupBlocksView::Make(std::string_view blocks,
                                                        std::string_view pieces, size_t found) {
  if (blocks.size() != found * kLookupRecordBytes) {
    return Malformed(absl::StrCat(found, " blocks found but ", blocks.size(),
                                  " bytes of records (", kLookupRecordBytes, " a block)"));
  }
  if (pieces.size() % kLookupPieceBytes != 0) {
    return Malformed(absl::StrCat("pieces is ", pieces.size(), " bytes, not a multiple of ",
                                  kLookupPieceBytes));
  }
  const LookupBlocksView view(blocks, pieces);
  const uint64_t piece_count = pieces.size() / kLookupPieceBytes;
  for (size_t i = 0; i < found; ++i) {
    const LookupBlock b = view.block(i);
    if (b.codec == 0 || b.codec > kMaxCodecValue || (b.tier != kTierHost && b.tier != kTierGpu)) {
      return Malformed(absl::StrCat("block ", i, " has codec ", b.codec, " and tier ", b.tier));
    }
    if (b.size == 0 || b.size > kMaxSize) {
      return Malformed(absl::StrCat("block ", i, " has size ", b.size));
    }
    if (b.pieces == 0) return Malformed(absl::StrCat("block ", i, " has no pieces"));
    if (b.pieces == 1) continue;
    if (uint64_t{b.first_piece} + b.pieces > piece_count) {
      return Malformed(absl::StrCat("block ", i, "'s pieces ", b.first_piece, "+", b.pieces,
                                    " go past the ", piece_count, " listed"));
    }
    uint64_t sum = 0;
    for (uint32_t j = 0; j < b.pieces; ++j) {
      const uint64_t length = view.piece(b, j).length;
      if (length > b.size - sum) {  // Checked before adding: no wrap-around.
        return Malformed(absl::StrCat("block ", i, "'s pieces add up to more than its size ",
                                      b.size));
      }
      sum += length;
    }
    if (sum != b.size) {
      return Malformed(absl::StrCat("block ", i, "'s pieces add up to ", sum,
                                    " bytes; its size is ", b.size));
    }
    if (view.piece(b, 0).offset != b.offset) {
      return Malformed(absl::StrCat("block ", i, "'s offset is not its first piece's"));
    }
  }
  return view;
}

}  // namespace tierkv
