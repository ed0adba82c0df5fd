// The host memory tier's pool: one region of configured capacity, allocated once (pinned
// with CUDA when a GPU is present), handed out in pages.
//
// A block gets the pages it needs as a list of extents: a single contiguous run whenever one
// is free (best fit), otherwise the largest free runs until the size is covered. Allocation
// therefore succeeds whenever enough pages are free, whatever the churn has done to the free
// space: the pool cannot fragment into unusable holes. Internal waste is below one page per
// block.
//
// Thread-safe.
#ifndef TIERKV_STORAGE_HOST_POOL_H_
#define TIERKV_STORAGE_HOST_POOL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tierkv {

// A byte range inside the pool.
struct PoolExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const PoolExtent&) const = default;
};

// Space handed out for one block. `extents` cover exactly `size` bytes in order;
// `reserved_bytes` is what the pool accounts for it (whole pages).
struct PoolAllocation {
  std::vector<PoolExtent> extents;
  uint64_t size = 0;
  uint64_t reserved_bytes = 0;
};

class HostPool {
 public:
  struct Options {
    // Pool size; rounded down to whole pages, at least one page.
    uint64_t capacity_bytes = 1ull << 30;
    // Allocation unit: a power of two of at least 4 KiB (O_DIRECT-friendly alignment).
    uint64_t page_bytes = 64 * 1024;
    // Page-lock the pool with CUDA when the build and the machine have a GPU.
    bool pin_with_cuda = true;
    // Fault every page in at creation (with transparent huge pages where the kernel allows),
    // so that no write on the data path takes a page fault.
    bool prefault = true;
    // Memory to manage instead of mapping its own (for example a region the data plane
    // allocated so that peers can reach it): at least capacity_bytes long, page-aligned,
    // valid for the pool's lifetime, not freed by the pool. Null: the pool maps memory.
    void* external_memory = nullptr;
  };

  // INVALID_ARGUMENT for a bad page size or a capacity below one page; RESOURCE_EXHAUSTED
  // when the memory cannot be mapped.
  static absl::StatusOr<std::unique_ptr<HostPool>> Create(const Options& options);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  // Reserves pages for `size` bytes. INVALID_ARGUMENT for size 0; RESOURCE_EXHAUSTED when
  // fewer free pages remain than needed (nothing is reserved then).
  absl::StatusOr<PoolAllocation> Allocate(uint64_t size);
  // Returns an allocation's pages. The allocation must come from this pool and not have
  // been freed already.
  void Free(const PoolAllocation& allocation);

  // Copies between an allocation's payload (at `offset`) and caller memory. The range must
  // lie inside the allocation. Safe concurrently with other allocations' operations.
  void Write(const PoolAllocation& allocation, uint64_t offset, const void* data,
             uint64_t length);
  void Read(const PoolAllocation& allocation, uint64_t offset, void* out, uint64_t length) const;
  // XXH3-64 of the allocation's payload (BlockChecksum of its bytes in order).
  uint64_t Checksum(const PoolAllocation& allocation) const;

  // Start of the region; valid for the pool's lifetime (for data-plane registration).
  uint8_t* base() const { return base_; }
  uint64_t capacity_bytes() const { return capacity_; }
  uint64_t page_bytes() const { return page_bytes_; }
  bool pinned() const { return pinned_; }
  uint64_t PagesFor(uint64_t size) const { return (size + page_bytes_ - 1) / page_bytes_; }
  uint64_t used_bytes() const;
  uint64_t free_bytes() const { return capacity_ - used_bytes(); }
  // Free runs of pages, for tests and stats: (count, largest run in bytes).
  std::pair<uint64_t, uint64_t> FreeRuns() const;

 private:
  HostPool(uint8_t* base, uint64_t capacity, uint64_t page_bytes, bool pinned, bool owned);
  void InsertFreeRun(uint64_t first_page, uint64_t pages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseFreeRun(std::map<uint64_t, uint64_t>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  uint8_t* const base_;
  const uint64_t capacity_;
  const uint64_t page_bytes_;
  const bool pinned_;
  const bool owned_;  // Mapped by the pool (unmapped on destruction).

  mutable absl::Mutex mu_;
  // Free runs by first page -> page count, and the same runs ordered by (count, first page).
  std::map<uint64_t, uint64_t> runs_by_start_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<uint64_t, uint64_t>> runs_by_size_ ABSL_GUARDED_BY(mu_);
  uint64_t used_pages_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tierkv

#endif  // TIERKV_STORAGE_HOST_POOL_H_
