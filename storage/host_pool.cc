#include "storage/host_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/block_key.h"
#include "core/status.h"

#ifdef TIERKV_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tierkv {

absl::StatusOr<std::unique_ptr<HostPool>> HostPool::Create(const Options& options) {
  const uint64_t page = options.page_bytes;
  if (page < 4096 || (page & (page - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host pool: page size ", page, " is not a power of two of at least 4096 bytes"));
  }
  const uint64_t capacity = options.capacity_bytes / page * page;
  if (capacity == 0) {
    return absl::InvalidArgumentError(absl::StrCat("host pool: capacity ",
                                                   options.capacity_bytes,
                                                   " bytes is below one page of ", page));
  }
  const bool owned = options.external_memory == nullptr;
  void* mem = options.external_memory;
  if (owned) {
    mem = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      return ErrnoToStatus(errno, absl::StrCat("host pool: mmap of ", capacity, " bytes"));
    }
  } else if (reinterpret_cast<uintptr_t>(mem) % 4096 != 0) {
    return absl::InvalidArgumentError("host pool: external memory is not page-aligned");
  }
  if (options.prefault) {
    // Huge pages cut the page-table work of a large pool; populate then takes one fault per
    // 2 MiB instead of per 4 KiB. Both calls are advice: failure only costs speed.
    if (owned) madvise(mem, capacity, MADV_HUGEPAGE);
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
    if (madvise(mem, capacity, MADV_POPULATE_WRITE) != 0) {
      // Kernels before 5.14: touch every page.
      volatile uint8_t* p = static_cast<uint8_t*>(mem);
      for (uint64_t off = 0; off < capacity; off += 4096) p[off] = 0;
    }
  }
  bool pinned = false;
#ifdef TIERKV_HAVE_CUDA
  if (options.pin_with_cuda) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0 &&
        cudaHostRegister(mem, capacity, cudaHostRegisterPortable) == cudaSuccess) {
      pinned = true;
    }
  }
#endif
  return std::unique_ptr<HostPool>(
      new HostPool(static_cast<uint8_t*>(mem), capacity, page, pinned, owned));
}

HostPool::HostPool(uint8_t* base, uint64_t capacity, uint64_t page_bytes, bool pinned,
                   bool owned)
    : base_(base), capacity_(capacity), page_bytes_(page_bytes), pinned_(pinned), owned_(owned) {
  absl::MutexLock lock(&mu_);
  InsertFreeRun(0, capacity / page_bytes);
}

HostPool::~HostPool() {
#ifdef TIERKV_HAVE_CUDA
  if (pinned_) cudaHostUnregister(base_);
#endif
  if (owned_) munmap(base_, capacity_);
}

void HostPool::InsertFreeRun(uint64_t first_page, uint64_t pages) {
  runs_by_start_.emplace(first_page, pages);
  runs_by_size_.emplace(pages, first_page);
}

void HostPool::EraseFreeRun(std::map<uint64_t, uint64_t>::iterator it) {
  runs_by_size_.erase({it->second, it->first});
  runs_by_start_.erase(it);
}

absl::StatusOr<PoolAllocation> HostPool::Allocate(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("host pool: cannot allocate 0 bytes");
  const uint64_t need = PagesFor(size);
  const uint64_t total_pages = capacity_ / page_bytes_;
  PoolAllocation out;
  out.size = size;
  out.reserved_bytes = need * page_bytes_;
  absl::MutexLock lock(&mu_);
  if (need > total_pages - used_pages_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host pool: ", need, " pages wanted, ", total_pages - used_pages_, " free"));
  }
  uint64_t remaining = need;
  while (remaining > 0) {
    // Best fit: the smallest run that covers the rest; else the largest run there is.
    auto fit = runs_by_size_.lower_bound({remaining, 0});
    if (fit == runs_by_size_.end()) fit = std::prev(runs_by_size_.end());
    const uint64_t run_pages = fit->first;
    const uint64_t first = fit->second;
    const uint64_t take = std::min(run_pages, remaining);
    EraseFreeRun(runs_by_start_.find(first));
    if (take < run_pages) InsertFreeRun(first + take, run_pages - take);
    out.extents.push_back({first * page_bytes_, take * page_bytes_});
    remaining -= take;
  }
  // Adjacent pieces (possible when a large run was split earlier) merge into one extent.
  std::sort(out.extents.begin(), out.extents.end(),
            [](const PoolExtent& a, const PoolExtent& b) { return a.offset < b.offset; });
  std::vector<PoolExtent> merged;
  for (const PoolExtent& e : out.extents) {
    if (!merged.empty() && merged.back().offset + merged.back().length == e.offset) {
      merged.back().length += e.length;
    } else {
      merged.push_back(e);
    }
  }
  // The last extent is trimmed to the payload size; the page tail stays reserved.
  merged.back().length -= need * page_bytes_ - size;
  out.extents = std::move(merged);
  used_pages_ += need;
  return out;
}

void HostPool::Free(const PoolAllocation& allocation) {
  absl::MutexLock lock(&mu_);
  for (const PoolExtent& e : allocation.extents) {
    uint64_t first = e.offset / page_bytes_;
    uint64_t pages = PagesFor(e.length);
    used_pages_ -= pages;
    // Coalesce with the free runs on either side.
    auto next = runs_by_start_.lower_bound(first);
    if (next != runs_by_start_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == first) {
        first = prev->first;
        pages += prev->second;
        EraseFreeRun(prev);
      }
    }
    next = runs_by_start_.lower_bound(first + pages);
    if (next != runs_by_start_.end() && next->first == first + pages) {
      pages += next->second;
      EraseFreeRun(next);
    }
    InsertFreeRun(first, pages);
  }
}

void HostPool::Write(const PoolAllocation& allocation, uint64_t offset, const void* data,
                     uint64_t length) {
  const uint8_t* src = static_cast<const uint8_t*>(data);
  for (const PoolExtent& e : allocation.extents) {
    if (length == 0) break;
    if (offset >= e.length) {
      offset -= e.length;
      continue;
    }
    const uint64_t n = std::min(length, e.length - offset);
    std::memcpy(base_ + e.offset + offset, src, n);
    src += n;
    length -= n;
    offset = 0;
  }
}

void HostPool::Read(const PoolAllocation& allocation, uint64_t offset, void* out,
                    uint64_t length) const {
  uint8_t* dst = static_cast<uint8_t*>(out);
  for (const PoolExtent& e : allocation.extents) {
    if (length == 0) break;
    if (offset >= e.length) {
      offset -= e.length;
      continue;
    }
    const uint64_t n = std::min(length, e.length - offset);
    std::memcpy(dst, base_ + e.offset + offset, n);
    dst += n;
    length -= n;
    offset = 0;
  }
}

uint64_t HostPool::Checksum(const PoolAllocation& allocation) const {
  if (allocation.extents.size() == 1) {
    return BlockChecksum(base_ + allocation.extents[0].offset, allocation.extents[0].length);
  }
  ChecksumBuilder builder;
  for (const PoolExtent& e : allocation.extents) builder.Update(base_ + e.offset, e.length);
  return builder.Finish();
}

uint64_t HostPool::used_bytes() const {
  absl::MutexLock lock(&mu_);
  return used_pages_ * page_bytes_;
}

std::pair<uint64_t, uint64_t> HostPool::FreeRuns() const {
  absl::MutexLock lock(&mu_);
  uint64_t largest = runs_by_size_.empty() ? 0 : runs_by_size_.rbegin()->first;
  return {runs_by_start_.size(), largest * page_bytes_};
}

}  // namespace tierkv
