#include "cache_manager/lookup_response_encoder.h"

#include <algorithm>

namespace tierkv {
namespace {

// Field numbers of tierkv.v1.LookupResponse (proto/tierkv/v1/cache_service.proto); the
// test checks them against the generated code.
enum Field : uint32_t {
  kFound = 1,
  kSizes = 2,
  kChecksums = 3,
  kCodecs = 4,
  kTiers = 5,
  kExtentCounts = 6,
  kExtentOffsets = 7,
  kExtentLengths = 8,
  kNode = 9,
  kRemoteBase = 10,
  kLeaseId = 12,
  kLeaseExpiresUnixMs = 13,
};
constexpr uint32_t kWireVarint = 0;
constexpr uint32_t kWireLengthDelimited = 2;

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

char* Varint(char* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

// Every field number here is below 16: a tag is one byte.
char* Tag(char* p, Field field, uint32_t wire) {
  *p++ = static_cast<char>((field << 3) | wire);
  return p;
}

size_t VarintFieldSize(uint64_t v) { return v == 0 ? 0 : 1 + VarintSize(v); }
size_t BytesFieldSize(size_t len) { return len == 0 ? 0 : 1 + VarintSize(len) + len; }

char* VarintField(char* p, Field field, uint64_t v) {
  if (v == 0) return p;
  return Varint(Tag(p, field, kWireVarint), v);
}

char* BytesField(char* p, Field field, const char* data, size_t len) {
  if (len == 0) return p;
  p = Varint(Tag(p, field, kWireLengthDelimited), len);
  std::memcpy(p, data, len);
  return p + len;
}

}  // namespace

void LookupResponseEncoder::Column::Reserve(size_t bytes) {
  const size_t used = data == nullptr ? 0 : size();
  if (used + bytes <= capacity) return;
  const size_t want = std::max(used + bytes, 2 * capacity);
  std::unique_ptr<char[]> grown(new char[want]);
  if (used > 0) std::memcpy(grown.get(), data.get(), used);
  data = std::move(grown);
  capacity = want;
  end = data.get() + used;
}

void LookupResponseEncoder::Reset(size_t blocks) {
  for (Column* c : {&sizes_, &checksums_, &codecs_, &tiers_, &counts_, &offsets_, &lengths_}) {
    c->end = c->data.get();
  }
  sizes_.Reserve(blocks * kMaxVarint);
  checksums_.Reserve(blocks * sizeof(uint64_t));
  codecs_.Reserve(blocks * kMaxVarint);
  tiers_.Reserve(blocks * kMaxVarint);
  counts_.Reserve(blocks * kMaxVarint);
  offsets_.Reserve(blocks * kMaxVarint);
  lengths_.Reserve(blocks * kMaxVarint);
  block_room_ = blocks;
  extent_room_ = std::min(offsets_.capacity, lengths_.capacity) / kMaxVarint;
}

void LookupResponseEncoder::GrowBlocks() {
  const size_t more = std::max<size_t>(1024, sizes_.size() / 2);
  sizes_.Reserve(more * kMaxVarint);
  checksums_.Reserve(more * sizeof(uint64_t));
  codecs_.Reserve(more * kMaxVarint);
  tiers_.Reserve(more * kMaxVarint);
  counts_.Reserve(more * kMaxVarint);
  block_room_ = more;
}

void LookupResponseEncoder::GrowExtents(size_t at_least) {
  const size_t more = std::max(at_least, extent_room_ + 1024);
  offsets_.Reserve(more * kMaxVarint);
  lengths_.Reserve(more * kMaxVarint);
  extent_room_ =
      std::min(offsets_.capacity - offsets_.size(), lengths_.capacity - lengths_.size()) /
      kMaxVarint;
}

size_t LookupResponseEncoder::Bytes() const {
  size_t n = 0;
  for (const Column* c :
       {&sizes_, &checksums_, &codecs_, &tiers_, &counts_, &offsets_, &lengths_}) {
    n += c->capacity;
  }
  return n;
}

void LookupResponseEncoder::ShrinkIfAbove(size_t max_bytes) {
  if (Bytes() <= max_bytes) return;
  for (Column* c : {&sizes_, &checksums_, &codecs_, &tiers_, &counts_, &offsets_, &lengths_}) {
    *c = Column();
  }
  block_room_ = 0;
  extent_room_ = 0;
}

size_t LookupResponseEncoder::ByteSize(const Header& header) const {
  return VarintFieldSize(header.found) + BytesFieldSize(sizes_.size()) +
         BytesFieldSize(checksums_.size()) + BytesFieldSize(codecs_.size()) +
         BytesFieldSize(tiers_.size()) + BytesFieldSize(counts_.size()) +
         BytesFieldSize(offsets_.size()) + BytesFieldSize(lengths_.size()) +
         BytesFieldSize(header.node.size()) + VarintFieldSize(header.remote_base) +
         VarintFieldSize(header.lease_id) +
         VarintFieldSize(static_cast<uint64_t>(header.lease_expires_unix_ms));
}

void LookupResponseEncoder::WriteTo(const Header& header, char* out) const {
  char* p = out;
  p = VarintField(p, kFound, header.found);
  p = BytesField(p, kSizes, sizes_.data.get(), sizes_.size());
  p = BytesField(p, kChecksums, checksums_.data.get(), checksums_.size());
  p = BytesField(p, kCodecs, codecs_.data.get(), codecs_.size());
  p = BytesField(p, kTiers, tiers_.data.get(), tiers_.size());
  p = BytesField(p, kExtentCounts, counts_.data.get(), counts_.size());
  p = BytesField(p, kExtentOffsets, offsets_.data.get(), offsets_.size());
  p = BytesField(p, kExtentLengths, lengths_.data.get(), lengths_.size());
  p = BytesField(p, kNode, header.node.data(), header.node.size());
  p = VarintField(p, kRemoteBase, header.remote_base);
  p = VarintField(p, kLeaseId, header.lease_id);
  VarintField(p, kLeaseExpiresUnixMs, static_cast<uint64_t>(header.lease_expires_unix_ms));
}

std::string LookupResponseEncoder::Serialize(const Header& header) const {
  std::string out(ByteSize(header), '\0');
  WriteTo(header, out.data());
  return out;
}

}  // namespace tierkv
