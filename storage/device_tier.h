// The GPU tier's memory as the cache manager sees it: one region of device memory handed out
// in pages by a HostPool-style allocator, plus the two operations the index needs on it.
//
// The interface has no CUDA in it: the process that owns the GPU (tierkv up, whose workers
// share the cache manager's process) makes the implementation from its runtime, and tests use
// FakeDeviceTier (storage/fake_device_tier.h), whose "device" is host memory. The CPU never
// reads or writes the region itself: pool().Read/Write/Checksum must not be called on it.
//
// Thread-safe: calls may come from several threads at once.
#ifndef TIERKV_STORAGE_DEVICE_TIER_H_
#define TIERKV_STORAGE_DEVICE_TIER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/host_pool.h"

namespace tierkv {

class DeviceTier {
 public:
  virtual ~DeviceTier() = default;

  // Pages of the device region (offsets from region_base()); capacity and accounting as the
  // host tier's pool.
  HostPool& pool() { return *pool_; }
  const HostPool& pool() const { return *pool_; }
  // The region's first byte in this process's address space (a device pointer).
  uint8_t* region_base() const { return pool_->base(); }

  // What the tier is, for Stats and logs ("cuda:0 NVIDIA H200").
  virtual std::string Describe() const = 0;

  // Copies the payload at `src` (in the region) into host memory `dst` (pieces whose sizes
  // add up to src.size). Returns once the bytes are there, or the device's error (then `dst`
  // holds any bytes).
  virtual absl::Status CopyToHost(const PoolAllocation& src,
                                  std::span<const std::span<uint8_t>> dst) = 0;

  // Sets out[i] to the XXH3-64 (BlockChecksum) of blocks[i]'s payload, computed on the
  // device. The device's error when it cannot.
  virtual absl::Status Checksums(std::span<const PoolAllocation> blocks,
                                 std::span<uint64_t> out) = 0;

 protected:
  // Implementations call this once, from their factory, with the region they own (aligned
  // to 4 KiB, at least one page long).
  absl::Status InitPool(uint8_t* region, uint64_t bytes, uint64_t page_bytes) {
    HostPool::Options options;
    options.capacity_bytes = bytes;
    options.page_bytes = page_bytes;
    options.pin_with_cuda = false;  // Device memory: nothing to pin, nothing to fault in.
    options.prefault = false;
    options.external_memory = region;
    auto pool = HostPool::Create(options);
    if (!pool.ok()) return pool.status();
    pool_ = std::move(pool).value();
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<HostPool> pool_;
};

}  // namespace tierkv

#endif  // TIERKV_STORAGE_DEVICE_TIER_H_
