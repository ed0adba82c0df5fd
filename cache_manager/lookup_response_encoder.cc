#include "cache_manager/lookup_response_encoder.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace tierkv {
namespace {

// Field numbers of tierkv.v1.LookupResponse (proto/tierkv/v1/cache_service.proto); the
// test checks the bytes against the generated code.
enum Field : uint32_t {
  kFound = 1,
  kNode = 9,
  kRemoteBase = 10,
  kLeaseId = 12,
  kLeaseExpiresUnixMs = 13,
  kBlocks = 14,
  kPieces = 15,
};
constexpr uint32_t kWireVarint = 0;
constexpr uint32_t kWireLengthDelimited = 2;

void Varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Every field number here is below 16: a tag is one byte.
void Tag(std::string& out, Field field, uint32_t wire) {
  out.push_back(static_cast<char>((field << 3) | wire));
}

void VarintField(std::string& out, Field field, uint64_t v) {
  if (v == 0) return;
  Tag(out, field, kWireVarint);
  Varint(out, v);
}

void LengthPrefix(std::string& out, Field field, size_t len) {
  Tag(out, field, kWireLengthDelimited);
  Varint(out, len);
}

}  // namespace

void LookupResponseEncoder::Reset(size_t max_blocks) {
  // A fresh buffer every call: gRPC owns the last one until it is sent.
  capacity_ = std::max<size_t>(max_blocks, 1);
  records_slice_ = grpc::Slice(capacity_ * kLookupRecordBytes);
  records_ = reinterpret_cast<char*>(const_cast<uint8_t*>(records_slice_.begin()));
  count_ = 0;
  pieces_.clear();
}

void LookupResponseEncoder::Grow() {
  const size_t grown = std::max<size_t>(2 * capacity_, 64);
  grpc::Slice slice(grown * kLookupRecordBytes);
  char* data = reinterpret_cast<char*>(const_cast<uint8_t*>(slice.begin()));
  if (count_ > 0) std::memcpy(data, records_, count_ * kLookupRecordBytes);
  records_slice_ = std::move(slice);
  records_ = data;
  capacity_ = grown;
}

void LookupResponseEncoder::AddPieces(char* out, uint32_t codec, uint32_t tier,
                                      std::span<const PoolExtent> extents) {
  const uint32_t pieces = static_cast<uint32_t>(extents.size());
  const uint32_t first = static_cast<uint32_t>(pieces_.size() / kLookupPieceBytes);
  std::memcpy(out + 20, &pieces, 4);
  std::memcpy(out + 24, &first, 4);
  const uint32_t tail = (codec & 0xffu) | (tier & 0xffu) << 8;
  std::memcpy(out + 28, &tail, 4);
  const size_t at = pieces_.size();
  pieces_.resize(at + extents.size() * kLookupPieceBytes);
  for (size_t j = 0; j < extents.size(); ++j) {
    EncodeLookupPiece({extents[j].offset, extents[j].length},
                      pieces_.data() + at + j * kLookupPieceBytes);
  }
}

std::string LookupResponseEncoder::HeaderBytes(const Header& header) const {
  std::string out;
  out.reserve(64 + header.node.size());
  VarintField(out, kFound, header.found);
  if (!header.node.empty()) {
    LengthPrefix(out, kNode, header.node.size());
    out.append(header.node);
  }
  VarintField(out, kRemoteBase, header.remote_base);
  VarintField(out, kLeaseId, header.lease_id);
  VarintField(out, kLeaseExpiresUnixMs, static_cast<uint64_t>(header.lease_expires_unix_ms));
  if (count_ > 0) LengthPrefix(out, kBlocks, count_ * kLookupRecordBytes);
  return out;
}

grpc::ByteBuffer LookupResponseEncoder::Finish(const Header& header) {
  const std::string head = HeaderBytes(header);
  grpc::Slice slices[3];
  size_t n = 0;
  slices[n++] = grpc::Slice(head.data(), head.size());
  if (count_ > 0) slices[n++] = records_slice_.sub(0, count_ * kLookupRecordBytes);
  if (!pieces_.empty()) {
    std::string tail;
    tail.reserve(pieces_.size() + 8);
    LengthPrefix(tail, kPieces, pieces_.size());
    tail.append(pieces_);
    slices[n++] = grpc::Slice(tail.data(), tail.size());
  }
  records_slice_ = grpc::Slice();
  records_ = nullptr;
  capacity_ = 0;
  count_ = 0;
  return grpc::ByteBuffer(slices, n);
}

std::string LookupResponseEncoder::Serialize(const Header& header) {
  grpc::ByteBuffer buffer = Finish(header);
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

}  // namespace tierkv
