#include "cache_manager/lookup_response_encoder.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"

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

// Record buffers kept between Lookups. gRPC owns a response's buffer until it is sent, so
// each call needs its own; a fresh allocation of a quarter MiB a call would cost its page
// faults every time (the allocator hands such blocks back to the system when freed).
struct RecordBuffer {
  std::unique_ptr<char[]> data;
  size_t bytes = 0;
};

class RecordBuffers {
 public:
  // At most this many idle buffers of at most this size stay allocated.
  static constexpr size_t kKept = 8;
  static constexpr size_t kMaxKeptBytes = 2 << 20;

  static RecordBuffers& Get() {
    static RecordBuffers* const buffers = new RecordBuffers;
    return *buffers;
  }

  RecordBuffer* Take(size_t bytes) {
    {
      absl::MutexLock lock(&mu_);
      // The most recently returned first: its lines are the likeliest to be in cache.
      for (size_t i = idle_.size(); i-- > 0;) {
        if (idle_[i]->bytes >= bytes) {
          RecordBuffer* b = idle_[i];
          idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
          return b;
        }
      }
    }
    auto* b = new RecordBuffer;
    b->data.reset(new char[bytes]);
    b->bytes = bytes;
    return b;
  }

  // The destroy callback of a records slice.
  static void Return(void* buffer) { Get().Give(static_cast<RecordBuffer*>(buffer)); }

 private:
  void Give(RecordBuffer* b) {
    if (b->bytes <= kMaxKeptBytes) {
      absl::MutexLock lock(&mu_);
      if (idle_.size() < kKept) {
        idle_.push_back(b);
        return;
      }
    }
    delete b;
  }

  absl::Mutex mu_;
  std::vector<RecordBuffer*> idle_ ABSL_GUARDED_BY(mu_);
};

grpc::Slice RecordSlice(size_t records, char** data) {
  const size_t bytes = records * kLookupRecordBytes;
  RecordBuffer* b = RecordBuffers::Get().Take(bytes);
  *data = b->data.get();
  return grpc::Slice(b->data.get(), bytes, &RecordBuffers::Return, b);
}

}  // namespace

void LookupResponseEncoder::Reset(size_t max_blocks) {
  sink_.capacity = std::max<size_t>(max_blocks, 1);
  records_slice_ = RecordSlice(sink_.capacity, &sink_.records);
  sink_.count = 0;
  pieces_.clear();
}

void LookupResponseEncoder::Grow() {
  const size_t grown = std::max<size_t>(2 * sink_.capacity, 64);
  char* data = nullptr;
  grpc::Slice slice = RecordSlice(grown, &data);
  if (sink_.count > 0) std::memcpy(data, sink_.records, sink_.count * kLookupRecordBytes);
  records_slice_ = std::move(slice);
  sink_.records = data;
  sink_.capacity = grown;
}

void LookupResponseEncoder::AddSplitBlock(uint64_t size, uint64_t checksum, uint32_t codec,
                                          uint32_t tier, std::span<const PoolExtent> extents) {
  if (sink_.count == sink_.capacity) Grow();
  char* out = sink_.records + sink_.count * kLookupRecordBytes;
  ++sink_.count;
  EncodeLookupBlock({.checksum = checksum,
                     .offset = extents[0].offset,
                     .size = static_cast<uint32_t>(size),
                     .pieces = static_cast<uint32_t>(extents.size()),
                     .first_piece = static_cast<uint32_t>(pieces_.size() / kLookupPieceBytes),
                     .codec = static_cast<uint8_t>(codec),
                     .tier = static_cast<uint8_t>(tier)},
                    out);
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
  if (sink_.count > 0) LengthPrefix(out, kBlocks, sink_.count * kLookupRecordBytes);
  return out;
}

grpc::ByteBuffer LookupResponseEncoder::Finish(const Header& header) {
  const std::string head = HeaderBytes(header);
  grpc::Slice slices[3];
  size_t n = 0;
  slices[n++] = grpc::Slice(head.data(), head.size());
  if (sink_.count > 0) slices[n++] = records_slice_.sub(0, sink_.count * kLookupRecordBytes);
  if (!pieces_.empty()) {
    std::string tail;
    tail.reserve(pieces_.size() + 8);
    LengthPrefix(tail, kPieces, pieces_.size());
    tail.append(pieces_);
    slices[n++] = grpc::Slice(tail.data(), tail.size());
  }
  records_slice_ = grpc::Slice();
  sink_.records = nullptr;
  sink_.capacity = 0;
  sink_.count = 0;
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
