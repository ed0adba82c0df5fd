// Writes a tierkv.v1.LookupResponse's wire bytes straight from the index's blocks, without
// building the message: the columns are encoded while the index walks the chain (one
// pass, no per-field capacity checks), and the message is assembled with its exact size
// into the buffer gRPC sends. The bytes are what protobuf's own serializer writes for the
// same message (fields in number order, packed columns, zero scalars omitted), which
// lookup_response_encoder_test checks.
//
// Not thread-safe; an encoder is meant to be reused (per thread) so that its buffers stay
// allocated between calls.
#ifndef TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_
#define TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>

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

  // Starts a response; reserves room for `blocks` blocks of one extent each.
  void Reset(size_t blocks);

  // Appends block i's entry to every column.
  void AddBlock(uint64_t size, uint64_t checksum, uint32_t codec, uint32_t tier,
                std::span<const PoolExtent> extents) {
    if (block_room_ == 0) GrowBlocks();
    --block_room_;
    if (extents.size() > extent_room_) GrowExtents(extents.size());
    extent_room_ -= extents.size();
    sizes_.end = WriteVarint(sizes_.end, size);
    std::memcpy(checksums_.end, &checksum, sizeof(checksum));  // fixed64, little-endian.
    checksums_.end += sizeof(checksum);
    codecs_.end = WriteVarint(codecs_.end, EnumWire(codec));
    tiers_.end = WriteVarint(tiers_.end, EnumWire(tier));
    counts_.end = WriteVarint(counts_.end, extents.size());
    for (const PoolExtent& e : extents) {
      offsets_.end = WriteVarint(offsets_.end, e.offset);
      lengths_.end = WriteVarint(lengths_.end, e.length);
    }
  }

  // The serialized message's size, and the message itself (`out` holds ByteSize() bytes).
  size_t ByteSize(const Header& header) const;
  void WriteTo(const Header& header, char* out) const;
  std::string Serialize(const Header& header) const;

  // Frees the buffers if they grew beyond `max_bytes` (a rare huge Lookup should not pin
  // its memory for the thread's life).
  void ShrinkIfAbove(size_t max_bytes);

 private:
  // A column's encoded bytes: [data, end), room up to data + capacity.
  struct Column {
    std::unique_ptr<char[]> data;
    size_t capacity = 0;
    char* end = nullptr;
    size_t size() const { return static_cast<size_t>(end - data.get()); }
    // Room for `bytes` more bytes, keeping the content.
    void Reserve(size_t bytes);
  };

  static char* WriteVarint(char* p, uint64_t v) {
    while (v >= 0x80) {
      *p++ = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    *p++ = static_cast<char>(v);
    return p;
  }
  // Enums are int32 on the wire: negative values sign-extend to ten bytes.
  static uint64_t EnumWire(uint32_t value) {
    return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(value)));
  }
  void GrowBlocks();
  void GrowExtents(size_t at_least);
  size_t Bytes() const;

  static constexpr size_t kMaxVarint = 10;
  Column sizes_, checksums_, codecs_, tiers_, counts_, offsets_, lengths_;
  size_t block_room_ = 0;   // Blocks that fit in the per-block columns without growing.
  size_t extent_room_ = 0;  // Extents that fit in offsets_ / lengths_ without growing.
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_LOOKUP_RESPONSE_ENCODER_H_
