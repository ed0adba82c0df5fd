// The fixed-width per-block records of a tierkv.v1.LookupResponse (its `blocks` and `pieces`
// fields; proto/tierkv/v1/cache_service.proto gives the layout): the cache manager writes
// them with plain stores, a client reads them in place after one check of their shape.
#ifndef TIERKV_PROTO_LOOKUP_BLOCKS_H_
#define TIERKV_PROTO_LOOKUP_BLOCKS_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace tierkv {

static_assert(std::endian::native == std::endian::little,
              "LookupResponse records are little-endian and copied as they are");

inline constexpr size_t kLookupRecordBytes = 32;
inline constexpr size_t kLookupPieceBytes = 16;

// One record of LookupResponse.blocks.
struct LookupBlock {
  uint64_t checksum = 0;
  uint64_t offset = 0;
  uint32_t size = 0;
  uint32_t pieces = 1;
  uint32_t first_piece = 0;
  uint8_t codec = 0;
  uint8_t tier = 0;
};

// One entry of LookupResponse.pieces.
struct LookupPiece {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Writes `block` as the 32 bytes at `out` (reserved bytes zero).
inline void EncodeLookupBlock(const LookupBlock& block, char* out) {
  std::memcpy(out, &block.checksum, 8);
  std::memcpy(out + 8, &block.offset, 8);
  std::memcpy(out + 16, &block.size, 4);
  std::memcpy(out + 20, &block.pieces, 4);
  std::memcpy(out + 24, &block.first_piece, 4);
  out[28] = static_cast<char>(block.codec);
  out[29] = static_cast<char>(block.tier);
  out[30] = 0;
  out[31] = 0;
}

inline LookupBlock DecodeLookupBlock(const char* in) {
  LookupBlock block;
  std::memcpy(&block.checksum, in, 8);
  std::memcpy(&block.offset, in + 8, 8);
  std::memcpy(&block.size, in + 16, 4);
  std::memcpy(&block.pieces, in + 20, 4);
  std::memcpy(&block.first_piece, in + 24, 4);
  block.codec = static_cast<uint8_t>(in[28]);
  block.tier = static_cast<uint8_t>(in[29]);
  return block;
}

inline void EncodeLookupPiece(const LookupPiece& piece, char* out) {
  std::memcpy(out, &piece.offset, 8);
  std::memcpy(out + 8, &piece.length, 8);
}

// A LookupResponse's records, read in place. The viewed bytes must outlive the view.
class LookupBlocksView {
 public:
  LookupBlocksView() = default;

  // Checks that `blocks` holds `found` records and `pieces` whole entries, that every
  // block's pieces lie inside `pieces` and add up to its size, and that codec and tier are
  // values of their enums: INTERNAL ("malformed Lookup response: ...") otherwise, so that
  // nothing read later goes out of bounds.
  static absl::StatusOr<LookupBlocksView> Make(std::string_view blocks, std::string_view pieces,
                                               size_t found);

  size_t size() const { return blocks_.size() / kLookupRecordBytes; }
  LookupBlock block(size_t i) const {
    return DecodeLookupBlock(blocks_.data() + i * kLookupRecordBytes);
  }
  // Piece `j` of block `i` (j < block(i).pieces).
  LookupPiece piece(const LookupBlock& block, uint32_t j) const {
    if (block.pieces == 1) return {block.offset, block.size};
    LookupPiece piece;
    const char* p = pieces_.data() + (size_t{block.first_piece} + j) * kLookupPieceBytes;
    std::memcpy(&piece.offset, p, 8);
    std::memcpy(&piece.length, p + 8, 8);
    return piece;
  }

 private:
  LookupBlocksView(std::string_view blocks, std::string_view pieces)
      : blocks_(blocks), pieces_(pieces) {}
  std::string_view blocks_;
  std::string_view pieces_;
};

}  // namespace tierkv

#endif  // TIERKV_PROTO_LOOKUP_BLOCKS_H_
