// A storage seam for the SSD tier's fault tests: wraps another SsdFileIo and, on demand,
// fails calls with a chosen errno or inverts a byte of what PRead returns, and counts every
// call. Truncating or deleting a slab file is left to the
// test (truncate(2), unlink(2)), since those happen behind the tier's back anyway.
//
// Thread-safe.
#ifndef TIERKV_STORAGE_SSD_FAULT_IO_H_
#define TIERKV_STORAGE_SSD_FAULT_IO_H_

#include <sys/types.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/ssd_tier.h"

namespace tierkv {

class FaultInjectingIo : public SsdFileIo {
 public:
  enum class Op { kOpen, kClose, kPWrite, kPRead, kFDataSync, kFAllocate, kFStat };
  static constexpr size_t kOpCount = 7;

  // `base` does the real work; it must outlive nothing in particular (shared).
  explicit FaultInjectingIo(std::shared_ptr<SsdFileIo> base = DefaultSsdFileIo())
      : base_(std::move(base)) {}

  // The next `count` calls of `op` fail with `err` (return -1, errno = err) without
  // reaching the wrapped io. Replaces what was pending for `op`.
  void FailNext(Op op, int count, int err) {
    absl::MutexLock lock(&mu_);
    fail_[Index(op)] = {count, err};
  }

  // The next `count` PReads that return data come back with the byte at `index` of the
  // returned data inverted (the last byte when fewer were read).
  void CorruptNextReads(int count, size_t index = 0) {
    absl::MutexLock lock(&mu_);
    corrupt_reads_ = count;
    corrupt_index_ = index;
  }

  // Drops every pending failure and corruption; counts stay.
  void Clear() {
    absl::MutexLock lock(&mu_);
    fail_ = {};
    corrupt_reads_ = 0;
  }

  // Calls of `op` so far, injected failures included.
  uint64_t calls(Op op) const {
    absl::MutexLock lock(&mu_);
    return calls_[Index(op)];
  }
  // Failures and corruptions injected so far.
  uint64_t injected() const {
    absl::MutexLock lock(&mu_);
    return injected_;
  }

  int Open(const std::string& path, int flags, mode_t mode) override {
    if (int err = Enter(Op::kOpen)) return Fail(err);
    return base_->Open(path, flags, mode);
  }
  int Close(int fd) override {
    if (int err = Enter(Op::kClose)) return Fail(err);
    return base_->Close(fd);
  }
  ssize_t PWrite(int fd, const void* buf, size_t count, off_t offset) override {
    if (int err = Enter(Op::kPWrite)) return Fail(err);
    return base_->PWrite(fd, buf, count, offset);
  }
  ssize_t PRead(int fd, void* buf, size_t count, off_t offset) override {
    if (int err = Enter(Op::kPRead)) return Fail(err);
    const ssize_t n = base_->PRead(fd, buf, count, offset);
    if (n > 0) {
      absl::MutexLock lock(&mu_);
      if (corrupt_reads_ > 0) {
        --corrupt_reads_;
        ++injected_;
        const size_t at = corrupt_index_ < static_cast<size_t>(n) ? corrupt_index_ : n - 1;
        static_cast<uint8_t*>(buf)[at] ^= 0xff;
      }
    }
    return n;
  }
  int FDataSync(int fd) override {
    if (int err = Enter(Op::kFDataSync)) return Fail(err);
    return base_->FDataSync(fd);
  }
  int FAllocate(int fd, off_t offset, off_t length) override {
    if (int err = Enter(Op::kFAllocate)) return Fail(err);
    return base_->FAllocate(fd, offset, length);
  }
  int FStat(int fd, struct stat* st) override {
    if (int err = Enter(Op::kFStat)) return Fail(err);
    return base_->FStat(fd, st);
  }

 private:
  struct Pending {
    int count = 0;
    int err = 0;
  };
  static size_t Index(Op op) { return static_cast<size_t>(op); }
  static int Fail(int err) {
    errno = err;
    return -1;
  }

  // Counts the call; the errno to fail it with, or 0 to let it through.
  int Enter(Op op) {
    absl::MutexLock lock(&mu_);
    ++calls_[Index(op)];
    Pending& p = fail_[Index(op)];
    if (p.count <= 0) return 0;
    --p.count;
    ++injected_;
    return p.err;
  }

  // Constant after construction.
  const std::shared_ptr<SsdFileIo> base_;

  mutable absl::Mutex mu_;
  std::array<Pending, kOpCount> fail_ ABSL_GUARDED_BY(mu_){};
  std::array<uint64_t, kOpCount> calls_ ABSL_GUARDED_BY(mu_){};
  int corrupt_reads_ ABSL_GUARDED_BY(mu_) = 0;
  size_t corrupt_index_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t injected_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tierkv

#endif  // TIERKV_STORAGE_SSD_FAULT_IO_H_
