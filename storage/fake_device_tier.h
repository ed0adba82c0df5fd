// A DeviceTier for tests: its "device" region is host memory that the test may read and
// corrupt through device_bytes(), and its copies and checksums can be made to fail.
//
// Thread-safe.
#ifndef TIERKV_STORAGE_FAKE_DEVICE_TIER_H_
#define TIERKV_STORAGE_FAKE_DEVICE_TIER_H_

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/block_key.h"
#include "storage/device_tier.h"

namespace tierkv {

class FakeDeviceTier : public DeviceTier {
 public:
  static absl::StatusOr<std::unique_ptr<FakeDeviceTier>> Create(uint64_t bytes,
                                                                uint64_t page_bytes) {
    auto tier = std::unique_ptr<FakeDeviceTier>(new FakeDeviceTier());
    void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return absl::ResourceExhaustedError("fake device tier: mmap failed");
    tier->mem_ = static_cast<uint8_t*>(mem);
    tier->bytes_ = bytes;
    absl::Status s = tier->InitPool(tier->mem_, bytes, page_bytes);
    if (!s.ok()) return s;
    return tier;
  }
  ~FakeDeviceTier() override {
    if (mem_ != nullptr) munmap(mem_, bytes_);
  }

  std::string Describe() const override { return "fake device"; }

  absl::Status CopyToHost(const PoolAllocation& src,
                          std::span<const std::span<uint8_t>> dst) override {
    ++copies_;
    if (fail_copies_) return absl::InternalError("fake device: copy failed");
    uint64_t from = 0;
    size_t piece = 0, at = 0;
    for (const PoolExtent& e : src.extents) {
      for (uint64_t done = 0; done < e.length;) {
        if (piece >= dst.size()) return absl::InternalError("fake device: pieces too short");
        const uint64_t n = std::min<uint64_t>(e.length - done, dst[piece].size() - at);
        std::memcpy(dst[piece].data() + at, mem_ + e.offset + done, n);
        done += n;
        at += n;
        from += n;
        if (at == dst[piece].size()) {
          ++piece;
          at = 0;
        }
      }
    }
    return from == src.size ? absl::OkStatus()
                            : absl::InternalError("fake device: extents do not cover the block");
  }

  absl::Status Checksums(std::span<const PoolAllocation> blocks,
                         std::span<uint64_t> out) override {
    if (fail_checksums_) return absl::InternalError("fake device: checksum kernel failed");
    for (size_t i = 0; i < blocks.size(); ++i) {
      std::vector<PayloadPiece> pieces;
      for (const PoolExtent& e : blocks[i].extents) pieces.push_back({mem_ + e.offset, e.length});
      out[i] = BlockChecksum(pieces);
    }
    return absl::OkStatus();
  }

  // The region as host memory: what a same-process writer on the "device" writes to.
  uint8_t* device_bytes() { return mem_; }
  void set_fail_copies(bool fail) { fail_copies_ = fail; }
  void set_fail_checksums(bool fail) { fail_checksums_ = fail; }
  uint64_t copies() const { return copies_; }

 private:
  FakeDeviceTier() = default;
  uint8_t* mem_ = nullptr;
  uint64_t bytes_ = 0;
  std::atomic<bool> fail_copies_{false};
  std::atomic<bool> fail_checksums_{false};
  std::atomic<uint64_t> copies_{0};
};

}  // namespace tierkv

#endif  // TIERKV_STORAGE_FAKE_DEVICE_TIER_H_
