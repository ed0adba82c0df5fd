// Writes a tierkv.v1.LookupResponse straight from the index's blocks, without building the
// message: each block's fixed-width record (proto/lookup_blocks.h) is stored while the index
// walks the chain, into the buffer gRPC then sends as it is. The message goes out as up to
// three slices (the scalar fields and the records' tag, the records, the pieces field), in
// protobuf's own field order: their concatenation is what protobuf's serializer writes for
// the same message, which lookup_response_encoder_test checks.
//
// Not thread-safe; an encoder is meant to be reused (per thread).
#ifndef TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_
#define TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "cache_manager/block_index.h"
#include "proto/lookup_blocks.h"
#include "storage/host_pool.h"

namespace tierkv {

class LookupResponseEncoder {
 public:
  // Scalar fields of the response (zero or empty ones are omitted on the wire).
  struct Header {
    uint32_t found = 0;
    std::string_view node;
    uint64_t remote_base = 0;
    uint64_t lease_id = 0;
    int64_t lease_expires_unix_ms = 0;
  };

  // Starts a response with room for `max_blocks` records (the most the Lookup can find).
  void Reset(size_t max_blocks);

  // Appends the next block's record; a block stored in several pieces also lists them.
  // `size` is at most 256 MiB (the index's limit).
  void AddBlock(uint64_t size, uint64_t checksum, uint32_t codec, uint32_t tier,
                std::span<const PoolExtent> extents) {
    if (extents.size() <= 1) {
      AddBlock(size, checksum, codec, tier, extents.empty() ? 0 : extents[0].offset);
    } else {
      AddSplitBlock(size, checksum, codec, tier, extents);
    }
  }

  // The same for a block stored in one piece at `offset`.
  void AddBlock(uint64_t size, uint64_t checksum, uint32_t codec, uint32_t tier,
                uint64_t offset) {
    if (sink_.count == sink_.capacity) Grow();
    char* out = sink_.records + sink_.count * kLookupRecordBytes;
    ++sink_.count;
    LookupRecordSink::WriteOnePiece(out, checksum, offset, size, static_cast<uint8_t>(codec),
                                    static_cast<uint8_t>(tier));
  }

  // Blocks added since Reset.
  size_t count() const { return sink_.count; }

  // Where a Lookup writes the records of blocks in one host piece itself
  // (BlockIndex::LookupPackedBatches), between AddBlock calls; valid until Finish.
  LookupRecordSink* sink() { return &sink_; }
  // tierkv.v1.TIER_HOST, which sink records carry (service.cc checks).
  static constexpr uint8_t kHostTier = 2;

  // The message, as the slices gRPC sends (the records are not copied). Call once per Reset.
  grpc::ByteBuffer Finish(const Header& header);
  // The same bytes as one string (tests).
  std::string Serialize(const Header& header);

 private:
  void Grow();
  void AddSplitBlock(uint64_t size, uint64_t checksum, uint32_t codec, uint32_t tier,
                     std::span<const PoolExtent> extents);
  // The scalar fields and the records field's tag and length.
  std::string HeaderBytes(const Header& header) const;

  grpc::Slice records_slice_;
  // The records so far: in records_slice_'s bytes, `capacity` of them fit. A Lookup writes
  // records there too (sink()).
  LookupRecordSink sink_{.host_tier = kHostTier};
  std::string pieces_;       // LookupResponse.pieces so far.
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_
