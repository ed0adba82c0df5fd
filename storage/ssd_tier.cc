#include "storage/ssd_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/block_key.h"
#include "core/status.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace tierkv {
namespace {

// O_DIRECT granularity, allocation unit and on-disk alignment of every payload.
constexpr uint64_t kAlign = 4096;

// Catalog layout (docs/ssd-catalog.md). Bump kFormatVersion for any change an older build
// would misread; older builds then refuse the directory instead of guessing.
constexpr uint32_t kFormatVersion = 1;
constexpr std::string_view kMetaKey = "format";
constexpr size_t kMetaBytes = 16;
constexpr char kRecordPrefix = 'b';
constexpr char kModelPrefix = 'm';
constexpr uint8_t kRecordVersion = 1;
constexpr uint8_t kRecordHasParent = 1;
constexpr size_t kRecordBytes = 1 + 1 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 32 + 32;
constexpr uint8_t kModelVersion = 1;

// Bounce buffers carry whatever cannot go to or from the device in place (unaligned
// pieces, the padded tail). 1 MiB keeps each syscall large enough to stream.
constexpr size_t kBounceBytes = 1 << 20;
constexpr size_t kSpareBounceBuffers = 8;

// Payload writes of one Write call spread over up to this many threads (one pwrite in
// flight per thread); small batches (few items and few bytes) stay on the caller's thread.
constexpr size_t kWriteThreads = 4;
constexpr uint64_t kParallelWriteMinBytes = 4 << 20;
constexpr size_t kParallelWriteMinItems = 8;

// Queued catalog updates (Remove, Touch, RememberModel) reach RocksDB with the next Write's
// batch, or from a background thread at least this often or once this many are queued.
constexpr absl::Duration kFlushInterval = absl::Seconds(1);
constexpr size_t kFlushOps = 4096;
// Beyond this many queued updates (RocksDB failing for a long time) Touch drops its hints.
constexpr size_t kMaxQueuedOps = 1 << 20;

// Slab positions pack the slab number above the unit index inside the slab, so positions
// order as (slab, offset) and runs of different slabs never touch.
constexpr int kSlabShift = 32;
constexpr uint32_t kMaxSlabs = 1u << 20;

uint64_t Pack(uint32_t slab, uint64_t unit) { return (uint64_t{slab} << kSlabShift) | unit; }
uint32_t SlabOf(uint64_t pos) { return static_cast<uint32_t>(pos >> kSlabShift); }
uint64_t UnitOf(uint64_t pos) { return pos & ((uint64_t{1} << kSlabShift) - 1); }
uint64_t PosOf(const SsdLocation& loc) { return Pack(loc.slab, loc.offset / kAlign); }

bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; }

std::string Hex16(const BlockKey& key) { return ToHex(std::span(key.data(), 8)); }

// ---- Little-endian encoding -------------------------------------------------------------

void PutU8(std::string* out, uint8_t v) { out->push_back(static_cast<char>(v)); }
void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutBytes(std::string* out, std::span<const uint8_t> bytes) {
  out->append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}
void PutString(std::string* out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

// Reads fields off the front of a value; every read fails once the input runs short.
class Decoder {
 public:
  explicit Decoder(std::string_view in) : in_(in) {}
  bool U8(uint8_t* v) {
    if (in_.empty()) return false;
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool U32(uint32_t* v) { return Fixed(v); }
  bool U64(uint64_t* v) { return Fixed(v); }
  bool Bytes(std::span<uint8_t> out) {
    if (in_.size() < out.size()) return false;
    std::memcpy(out.data(), in_.data(), out.size());
    in_.remove_prefix(out.size());
    return true;
  }
  bool String(std::string* s) {
    uint32_t n;
    if (!U32(&n) || in_.size() < n) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  template <typename T>
  bool Fixed(T* v) {
    if (in_.size() < sizeof(T)) return false;
    T x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      x |= static_cast<T>(static_cast<uint8_t>(in_[i])) << (8 * i);
    }
    *v = x;
    in_.remove_prefix(sizeof(T));
    return true;
  }
  std::string_view in_;
};

std::string RecordKey(const BlockKey& key) {
  std::string k(1, kRecordPrefix);
  k.append(KeyBytes(key));
  return k;
}

std::string ModelKey(const Digest& fingerprint) {
  std::string k(1, kModelPrefix);
  k.append(KeyBytes(fingerprint));
  return k;
}

std::string EncodeRecord(const SsdRecord& r) {
  std::string v;
  v.reserve(kRecordBytes);
  PutU8(&v, kRecordVersion);
  PutU8(&v, r.parent ? kRecordHasParent : 0);
  PutU32(&v, r.codec);
  PutU32(&v, r.location.slab);
  PutU64(&v, r.location.offset);
  PutU64(&v, r.location.reserved);
  PutU64(&v, r.size);
  PutU64(&v, r.checksum);
  PutU64(&v, static_cast<uint64_t>(r.last_use_unix_ms));
  PutBytes(&v, r.fingerprint);
  const BlockKey no_parent{};
  PutBytes(&v, r.parent ? *r.parent : no_parent);
  return v;
}

bool DecodeRecord(std::string_view key, std::string_view value, SsdRecord* r) {
  if (key.size() != 1 + kDigestBytes || key[0] != kRecordPrefix) return false;
  if (value.size() != kRecordBytes) return false;
  std::memcpy(r->key.data(), key.data() + 1, kDigestBytes);
  Decoder d(value);
  uint8_t version, flags;
  uint64_t last_use;
  BlockKey parent;
  if (!d.U8(&version) || version != kRecordVersion) return false;
  if (!d.U8(&flags) || (flags & ~kRecordHasParent) != 0) return false;
  if (!d.U32(&r->codec) || !d.U32(&r->location.slab) || !d.U64(&r->location.offset) ||
      !d.U64(&r->location.reserved) || !d.U64(&r->size) || !d.U64(&r->checksum) ||
      !d.U64(&last_use) || !d.Bytes(r->fingerprint) || !d.Bytes(parent)) {
    return false;
  }
  r->last_use_unix_ms = static_cast<int64_t>(last_use);
  if (flags & kRecordHasParent) {
    r->parent = parent;
  } else {
    r->parent.reset();
  }
  return d.done();
}

std::string EncodeModel(const ModelSpec& s) {
  std::string v;
  PutU8(&v, kModelVersion);
  PutString(&v, s.model_id);
  PutString(&v, s.weights_digest);
  PutU32(&v, s.num_layers);
  PutU32(&v, s.num_kv_heads);
  PutU32(&v, s.head_dim);
  PutString(&v, s.kv_dtype);
  PutU32(&v, s.block_tokens);
  PutU32(&v, s.tp_rank);
  PutU32(&v, s.tp_size);
  return v;
}

bool DecodeModel(std::string_view value, ModelSpec* s) {
  Decoder d(value);
  uint8_t version;
  return d.U8(&version) && version == kModelVersion && d.String(&s->model_id) &&
         d.String(&s->weights_digest) && d.U32(&s->num_layers) && d.U32(&s->num_kv_heads) &&
         d.U32(&s->head_dim) && d.String(&s->kv_dtype) && d.U32(&s->block_tokens) &&
         d.U32(&s->tp_rank) && d.U32(&s->tp_size) && d.done();
}

std::string EncodeMeta(uint64_t slab_bytes) {
  std::string v;
  PutU32(&v, kFormatVersion);
  PutU32(&v, static_cast<uint32_t>(kAlign));
  PutU64(&v, slab_bytes);
  return v;
}

// ---- Error conversion at the edges ------------------------------------------------------

// The one place RocksDB statuses become canonical codes.
absl::Status RocksToStatus(const rocksdb::Status& s, absl::string_view context) {
  std::string message = absl::StrCat(context, ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) {
    return absl::UnavailableError(message);
  }
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(message);
  if (s.IsNotFound()) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

// Write-path errno: a full device is RESOURCE_EXHAUSTED (the caller may evict elsewhere or
// give up on the SSD copy), anything else UNAVAILABLE (the device misbehaves; retrying the
// same block elsewhere may work).
absl::Status WriteErrno(int err, absl::string_view context) {
  std::string message = absl::StrCat(context, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::UnavailableError(message);
}

// ---- Memory ------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedPtr = std::unique_ptr<uint8_t, FreeDeleter>;

AlignedPtr AllocateAligned(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlign, bytes) != 0) return nullptr;
  return AlignedPtr(static_cast<uint8_t*>(p));
}

// Free runs of 4 KiB units over all slabs, by position (to merge neighbours) and by
// (length, position) for best fit. Not thread-safe (the tier's allocator lock guards it).
class FreeSpace {
 public:
  // Adds a run and merges it with the free runs on either side. False, adding nothing, when
  // any unit of it is free already: a double free would otherwise hand bytes out twice.
  bool Add(uint64_t pos, uint64_t units) {
    if (Overlaps(pos, units)) return false;
    auto next = by_pos_.lower_bound(pos);
    if (next != by_pos_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == pos) {
        pos = prev->first;
        units += prev->second;
        Erase(prev->first, prev->second);
      }
    }
    auto after = by_pos_.find(pos + units);
    if (after != by_pos_.end()) {
      const uint64_t more = after->second;
      Erase(pos + units, more);
      units += more;
    }
    Insert(pos, units);
    return true;
  }

  // Appends a run that lies after every run added so far and touches none (recovery).
  void AppendSorted(uint64_t pos, uint64_t units) {
    by_pos_.insert(by_pos_.end(), {pos, units});
    by_size_.insert({units, pos});
    free_units_ += units;
  }

  // Best fit: takes the smallest run of at least `units` (the lowest position among equals)
  // and returns the start of what was taken.
  std::optional<uint64_t> Take(uint64_t units) {
    auto fit = by_size_.lower_bound({units, 0});
    if (fit == by_size_.end()) return std::nullopt;
    const auto [run_units, pos] = *fit;
    Erase(pos, run_units);
    if (run_units > units) Insert(pos + units, run_units - units);
    return pos;
  }

  // Whether any unit of [pos, pos + units) is free.
  bool Overlaps(uint64_t pos, uint64_t units) const {
    auto it = by_pos_.upper_bound(pos);
    if (it != by_pos_.end() && it->first < pos + units) return true;
    if (it == by_pos_.begin()) return false;
    --it;
    return it->first + it->second > pos;
  }

  uint64_t free_units() const { return free_units_; }
  size_t runs() const { return by_pos_.size(); }
  uint64_t largest_units() const { return by_size_.empty() ? 0 : by_size_.rbegin()->first; }

 private:
  void Insert(uint64_t pos, uint64_t units) {
    by_pos_.emplace(pos, units);
    by_size_.emplace(units, pos);
    free_units_ += units;
  }
  void Erase(uint64_t pos, uint64_t units) {
    by_pos_.erase(pos);
    by_size_.erase({units, pos});
    free_units_ -= units;
  }

  absl::btree_map<uint64_t, uint64_t> by_pos_;
  absl::btree_set<std::pair<uint64_t, uint64_t>> by_size_;
  uint64_t free_units_ = 0;
};

// Runs `fn(0) .. fn(n - 1)` on up to `threads` threads, the caller's included.
void ParallelFor(size_t n, size_t threads, absl::FunctionRef<void(size_t)> fn) {
  threads = std::min(threads, n);
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(work);
  work();
  for (std::thread& t : helpers) t.join();
}

class PosixSsdFileIo final : public SsdFileIo {
 public:
  int Open(const std::string& path, int flags, mode_t mode) override {
    int fd;
    do {
      fd = ::open(path.c_str(), flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
  }
  int Close(int fd) override { return ::close(fd); }
  ssize_t PWrite(int fd, const void* buf, size_t count, off_t offset) override {
    return ::pwrite(fd, buf, count, offset);
  }
  ssize_t PRead(int fd, void* buf, size_t count, off_t offset) override {
    return ::pread(fd, buf, count, offset);
  }
  int FDataSync(int fd) override { return ::fdatasync(fd); }
  // fallocate(2) rather than posix_fallocate: glibc's fallback for file systems without
  // it writes single bytes, which O_DIRECT refuses. The tier handles EOPNOTSUPP itself.
  int FAllocate(int fd, off_t offset, off_t length) override {
    return ::fallocate(fd, 0, offset, length);
  }
  int FStat(int fd, struct stat* st) override { return ::fstat(fd, st); }
};

}  // namespace

std::shared_ptr<SsdFileIo> DefaultSsdFileIo() {
  static const std::shared_ptr<SsdFileIo> io = std::make_shared<PosixSsdFileIo>();
  return io;
}

// The tier's state: geometry and files, the free space, the catalog and its in-memory index.
// Reserve/Unreserve/Remove/Touch/RememberModel/Stats touch memory only; Write and Read do the
// I/O without holding any lock across it, except that Write holds flush_mu_ over its catalog
// batch. Lock order: flush_mu_, catalog_mu_, then alloc_mu_ or files_mu_.
class SsdTier::Impl {
 public:
  static absl::StatusOr<std::unique_ptr<Impl>> Open(const SsdTierOptions& options,
                                                    SsdRecovery* recovery);
  ~Impl();

  absl::StatusOr<SsdLocation> Reserve(uint64_t size);
  void Unreserve(const SsdLocation& location);
  std::vector<absl::Status> Write(std::span<const WriteItem> items);
  absl::Status Read(const SsdRecord& record, std::span<const std::span<uint8_t>> pieces);
  absl::Status Remove(std::span<const SsdRecord> records);
  absl::Status Touch(std::span<const SsdRecord> records);
  absl::Status RememberModel(const ModelSpec& spec);
  SsdTierStats Stats() const;
  uint64_t capacity_bytes() const { return capacity_; }

 private:
  // One queued catalog update: a put, or a delete when `value` is empty.
  struct CatalogOp {
    std::string key;
    std::optional<std::string> value;
  };

  struct SlabFile {
    int fd = -1;
    uint64_t size = 0;   // File size when opened (or the slab length once preallocated).
    bool sized = false;  // Preallocated to at least the slab length.
  };

  // Hands out bounce buffers, keeping a few for reuse.
  class BounceLease {
   public:
    explicit BounceLease(Impl* impl) : impl_(impl) {
      absl::MutexLock lock(&impl_->buffers_mu_);
      if (!impl_->spare_buffers_.empty()) {
        buf_ = std::move(impl_->spare_buffers_.back());
        impl_->spare_buffers_.pop_back();
      }
    }
    ~BounceLease() {
      if (!buf_) return;
      absl::MutexLock lock(&impl_->buffers_mu_);
      if (impl_->spare_buffers_.size() < kSpareBounceBuffers) {
        impl_->spare_buffers_.push_back(std::move(buf_));
      }
    }
    BounceLease(const BounceLease&) = delete;
    BounceLease& operator=(const BounceLease&) = delete;
    // Null only when memory ran out.
    uint8_t* get() {
      if (!buf_) buf_ = AllocateAligned(kBounceBytes);
      return buf_.get();
    }

   private:
    Impl* const impl_;
    AlignedPtr buf_;
  };

  Impl(const SsdTierOptions& options, uint64_t capacity, uint32_t slabs);

  uint64_t SlabLength(uint32_t slab) const {
    return std::min(slab_bytes_, capacity_ - uint64_t{slab} * slab_bytes_);
  }
  std::string SlabPath(uint32_t slab) const {
    return absl::StrFormat("%s/slab-%06u.dat", slab_dir_, slab);
  }
  // Whether `loc` is a well-formed run inside one slab of the current capacity.
  bool InBounds(const SsdLocation& loc) const {
    return loc.slab < num_slabs_ && loc.offset % kAlign == 0 && loc.reserved > 0 &&
           loc.reserved % kAlign == 0 && loc.offset <= SlabLength(loc.slab) &&
           loc.reserved <= SlabLength(loc.slab) - loc.offset;
  }
  absl::Status CheckRecordShape(const SsdRecord& record, uint64_t pieces_bytes,
                                absl::string_view op) const;

  absl::Status OpenCatalog();
  absl::Status CheckMeta();
  absl::Status OpenExistingSlabs();
  absl::Status RecoverRecords(SsdRecovery* recovery);
  absl::Status RecoverModels(SsdRecovery* recovery);
  void RemoveSlabFilesBeyondCapacity();

  // The slab's descriptor, creating and preallocating the file on first write.
  absl::StatusOr<int> SlabForWrite(uint32_t slab);
  absl::StatusOr<int> SlabForRead(uint32_t slab, const SsdRecord& record);
  absl::Status SyncSlabDirectory();

  absl::Status WritePayload(int fd, uint32_t slab, const WriteItem& item);
  absl::Status PWriteAll(int fd, uint32_t slab, const uint8_t* buf, size_t n, uint64_t off,
                         const SsdRecord& record);
  absl::Status PReadAll(int fd, const SsdRecord& record, uint8_t* buf, size_t n, uint64_t off);
  absl::Status ReadPayload(int fd, const SsdRecord& record,
                           std::span<const std::span<uint8_t>> pieces);

  void FreeRun(const SsdLocation& loc) ABSL_EXCLUSIVE_LOCKS_REQUIRED(alloc_mu_);

  // Writes the queued catalog updates and then `records` (key, value) in one batch. With
  // `sync`, every delete queued so far is durable once it returns OK. On failure the queued
  // updates stay queued, ahead of newer ones.
  absl::Status FlushCatalog(bool sync,
                            const std::vector<std::pair<std::string, std::string>>& records = {})
      ABSL_LOCKS_EXCLUDED(flush_mu_, catalog_mu_);
  bool FlushDue() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(catalog_mu_) {
    return stopping_ || queue_.size() >= kFlushOps;
  }
  void FlushLoop();

  // Constant after construction.
  const std::shared_ptr<SsdFileIo> io_;
  const std::string dir_;
  const std::string slab_dir_;
  const std::string catalog_dir_;
  const uint64_t capacity_;
  const uint64_t slab_bytes_;
  const uint32_t num_slabs_;
  const bool direct_io_;
  std::unique_ptr<rocksdb::DB> db_;  // Set once by Open.
  rocksdb::WriteOptions synced_;
  rocksdb::WriteOptions unsynced_;

  // Serializes catalog writes (queued updates, then Write's records), so that they reach
  // RocksDB in the order they were made.
  absl::Mutex flush_mu_ ABSL_ACQUIRED_BEFORE(catalog_mu_);

  // What the catalog holds (index_, models_) once the queued updates are written. Remove,
  // Touch and RememberModel only change these and queue their RocksDB updates, so they never
  // wait for the disk; checking index_ first keeps a Touch from re-creating a removed record.
  mutable absl::Mutex catalog_mu_;
  absl::flat_hash_map<BlockKey, SsdLocation, BlockKeyHash, BlockKeyEq> index_
      ABSL_GUARDED_BY(catalog_mu_);
  absl::flat_hash_set<Digest, BlockKeyHash, BlockKeyEq> models_ ABSL_GUARDED_BY(catalog_mu_);
  std::vector<CatalogOp> queue_ ABSL_GUARDED_BY(catalog_mu_);
  uint64_t deletes_queued_ ABSL_GUARDED_BY(catalog_mu_) = 0;   // Ever queued.
  uint64_t deletes_durable_ ABSL_GUARDED_BY(catalog_mu_) = 0;  // Of those, known durable.
  bool stopping_ ABSL_GUARDED_BY(catalog_mu_) = false;
  std::thread flusher_;  // Runs FlushLoop; joined by the destructor.

  // Space. used_units_ counts reservations and cataloged records, so
  // used_units_ + free_.free_units() is the capacity in units at all times.
  mutable absl::Mutex alloc_mu_;
  FreeSpace free_ ABSL_GUARDED_BY(alloc_mu_);
  uint64_t used_units_ ABSL_GUARDED_BY(alloc_mu_) = 0;

  mutable absl::Mutex files_mu_;
  std::vector<SlabFile> slabs_ ABSL_GUARDED_BY(files_mu_);

  absl::Mutex buffers_mu_;
  std::vector<AlignedPtr> spare_buffers_ ABSL_GUARDED_BY(buffers_mu_);

  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> read_errors_{0};
  std::atomic<uint64_t> checksum_failures_{0};
};

SsdTier::Impl::Impl(const SsdTierOptions& options, uint64_t capacity, uint32_t slabs)
    : io_(options.io ? options.io : DefaultSsdFileIo()),
      dir_(options.dir),
      slab_dir_(options.dir + "/slabs"),
      catalog_dir_(options.dir + "/catalog"),
      capacity_(capacity),
      slab_bytes_(options.slab_bytes),
      num_slabs_(slabs),
      direct_io_(options.direct_io) {
  synced_.sync = true;
  unsynced_.sync = false;
  absl::MutexLock lock(&files_mu_);
  slabs_.resize(slabs);
}

SsdTier::Impl::~Impl() {
  {
    absl::MutexLock lock(&catalog_mu_);
    stopping_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
  if (db_) {
    // A clean shutdown leaves every update durable. Nothing to do about a failure here: the
    // next Open validates whatever the catalog holds.
    FlushCatalog(true).IgnoreError();
    db_->Close().PermitUncheckedError();
  }
  absl::MutexLock lock(&files_mu_);
  for (SlabFile& s : slabs_) {
    if (s.fd >= 0) io_->Close(s.fd);
  }
}

absl::StatusOr<std::unique_ptr<SsdTier::Impl>> SsdTier::Impl::Open(const SsdTierOptions& options,
                                                                   SsdRecovery* recovery) {
  if (options.dir.empty()) return absl::InvalidArgumentError("ssd tier: no directory given");
  if (options.slab_bytes == 0 || options.slab_bytes % kAlign != 0 ||
      options.slab_bytes / kAlign >= (uint64_t{1} << kSlabShift)) {
    return absl::InvalidArgumentError(absl::StrCat("ssd tier: slab size ", options.slab_bytes,
                                                   " bytes is not a positive multiple of ", kAlign,
                                                   " below 16 TiB"));
  }
  const uint64_t capacity = options.capacity_bytes / kAlign * kAlign;
  if (capacity == 0) {
    return absl::InvalidArgumentError(absl::StrCat("ssd tier: capacity ", options.capacity_bytes,
                                                   " bytes is below one block of ", kAlign));
  }
  const uint64_t slabs = (capacity + options.slab_bytes - 1) / options.slab_bytes;
  if (slabs > kMaxSlabs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ssd tier: capacity ", capacity, " bytes in slabs of ", options.slab_bytes, " bytes makes ",
        slabs, " slab files, more than ", kMaxSlabs, "; use larger slabs"));
  }
  for (const std::string& d : {options.dir, options.dir + "/slabs"}) {
    std::error_code ec;
    std::filesystem::create_directories(d, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("ssd tier: cannot create directory ", d, ": ", ec.message()));
    }
  }
  auto impl = std::unique_ptr<Impl>(new Impl(options, capacity, static_cast<uint32_t>(slabs)));
  if (impl->direct_io_) {
    // Fail at start rather than on the first demotion when the file system (tmpfs, some
    // FUSE and network file systems) refuses O_DIRECT.
    const std::string probe = impl->slab_dir_ + "/.direct-io-probe";
    const int fd = impl->io_->Open(probe, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0) {
      const int err = errno;
      if (err == EINVAL) {
        return absl::InvalidArgumentError(
            absl::StrCat("ssd tier: the file system of ", impl->slab_dir_,
                         " refuses O_DIRECT; use a local file system or turn direct I/O off"));
      }
      return absl::UnavailableError(
          absl::StrCat("ssd tier: cannot create ", probe, ": ", std::strerror(err)));
    }
    impl->io_->Close(fd);
    ::unlink(probe.c_str());
  }
  TIERKV_RETURN_IF_ERROR(impl->OpenCatalog());
  TIERKV_RETURN_IF_ERROR(impl->CheckMeta());
  TIERKV_RETURN_IF_ERROR(impl->OpenExistingSlabs());
  TIERKV_RETURN_IF_ERROR(impl->RecoverRecords(recovery));
  TIERKV_RETURN_IF_ERROR(impl->RecoverModels(recovery));
  impl->RemoveSlabFilesBeyondCapacity();
  impl->flusher_ = std::thread([raw = impl.get()] { raw->FlushLoop(); });
  return impl;
}

absl::Status SsdTier::Impl::OpenCatalog() {
  rocksdb::Options o;
  o.create_if_missing = true;
  // Values are ~114-byte records of hashes and offsets: nothing to gain from compression.
  o.compression = rocksdb::kNoCompression;
  o.write_buffer_size = 32 << 20;
  o.max_write_buffer_number = 2;
  // Bounds what a restart replays from the WAL.
  o.max_total_wal_size = 64 << 20;
  o.max_background_jobs = 2;
  // Slab files hold a descriptor each; keep RocksDB's share modest.
  o.max_open_files = 256;
  o.level_compaction_dynamic_level_bytes = true;
  o.keep_log_file_num = 4;
  o.max_log_file_size = 8 << 20;
  rocksdb::BlockBasedTableOptions table;
  // Records are read in bulk once, at open, bypassing the cache; a small bounded cache is
  // enough for everything else (index blocks, the meta key).
  table.block_cache = rocksdb::NewLRUCache(16 << 20);
  table.block_size = 16 << 10;
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, catalog_dir_, &db);
  if (!s.ok()) {
    return RocksToStatus(s, absl::StrCat("ssd tier: cannot open catalog ", catalog_dir_));
  }
  db_.reset(db);
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::CheckMeta() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kMetaKey, &value);
  if (s.IsNotFound()) {
    s = db_->Put(synced_, kMetaKey, EncodeMeta(slab_bytes_));
    if (!s.ok()) return RocksToStatus(s, absl::StrCat("ssd tier: catalog ", catalog_dir_));
    return absl::OkStatus();
  }
  if (!s.ok()) return RocksToStatus(s, absl::StrCat("ssd tier: catalog ", catalog_dir_));
  Decoder d(value);
  uint32_t version = 0, alignment = 0;
  uint64_t slab_bytes = 0;
  if (!d.U32(&version) || version == 0) {
    return absl::DataLossError(
        absl::StrCat("ssd tier: catalog ", catalog_dir_, " has an undecodable format record"));
  }
  if (version > kFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("ssd tier: catalog ", catalog_dir_, " has format version ", version,
                     "; this build reads up to version ", kFormatVersion));
  }
  if (value.size() != kMetaBytes || !d.U32(&alignment) || !d.U64(&slab_bytes)) {
    return absl::DataLossError(
        absl::StrCat("ssd tier: catalog ", catalog_dir_, " has an undecodable format record"));
  }
  if (alignment != kAlign) {
    return absl::InvalidArgumentError(absl::StrCat("ssd tier: catalog ", catalog_dir_,
                                                   " was written with alignment ", alignment,
                                                   "; this build uses ", kAlign));
  }
  if (slab_bytes != slab_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ssd tier: catalog ", catalog_dir_, " was written with slab_bytes=", slab_bytes,
        " but the options ask for slab_bytes=", slab_bytes_, "; slab geometry cannot change: use ",
        slab_bytes, " or a new directory"));
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::OpenExistingSlabs() {
  const int flags = O_RDWR | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0);
  absl::MutexLock lock(&files_mu_);
  for (uint32_t i = 0; i < num_slabs_; ++i) {
    const std::string path = SlabPath(i);
    const int fd = io_->Open(path, flags, 0);
    if (fd < 0) {
      const int err = errno;
      if (err == ENOENT) continue;
      return absl::UnavailableError(
          absl::StrCat("ssd tier: cannot open slab file ", path, ": ", std::strerror(err)));
    }
    struct stat st;
    if (io_->FStat(fd, &st) != 0) {
      const int err = errno;
      io_->Close(fd);
      return absl::UnavailableError(
          absl::StrCat("ssd tier: cannot stat slab file ", path, ": ", std::strerror(err)));
    }
    slabs_[i].fd = fd;
    slabs_[i].size = static_cast<uint64_t>(st.st_size);
    slabs_[i].sized = slabs_[i].size >= SlabLength(i);
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::RecoverRecords(SsdRecovery* recovery) {
  std::vector<uint64_t> file_sizes(num_slabs_, 0);  // 0: no file.
  {
    absl::MutexLock lock(&files_mu_);
    for (uint32_t i = 0; i < num_slabs_; ++i) {
      if (slabs_[i].fd >= 0) file_sizes[i] = slabs_[i].size;
    }
  }
  // One sequential pass over the records; nothing of it is worth caching afterwards.
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  ro.readahead_size = 4 << 20;
  const std::string upper(1, kRecordPrefix + 1);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;

  std::vector<SsdRecord>& records = recovery->records;
  std::vector<std::string> drop;  // Catalog keys to delete.
  uint64_t estimate = 0;
  if (db_->GetIntProperty("rocksdb.estimate-num-keys", &estimate)) {
    records.reserve(std::min<uint64_t>(estimate, 1 << 24));
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(rocksdb::Slice(&kRecordPrefix, 1)); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    const rocksdb::Slice v = it->value();
    SsdRecord& r = records.emplace_back();
    const bool ok = DecodeRecord(std::string_view(k.data(), k.size()),
                                 std::string_view(v.data(), v.size()), &r) &&
                    r.size > 0 && r.location.reserved == SsdTier::ReservedFor(r.size) &&
                    InBounds(r.location) &&
                    file_sizes[r.location.slab] >= r.location.offset + r.location.reserved;
    if (!ok) {
      drop.push_back(k.ToString());
      records.pop_back();
    }
  }
  if (!it->status().ok()) {
    return RocksToStatus(it->status(), absl::StrCat("ssd tier: reading catalog ", catalog_dir_));
  }
  it.reset();

  // Records sorted by position; two that overlap cannot both be right, and without reading
  // payloads there is no telling which is, so both go.
  std::vector<uint32_t> order(records.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::vector<uint64_t> pos(records.size());
  for (size_t i = 0; i < records.size(); ++i) pos[i] = PosOf(records[i].location);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return pos[a] < pos[b]; });
  std::vector<bool> bad(records.size(), false);
  size_t bad_count = 0;
  for (size_t i = 0; i < order.size();) {
    uint64_t end = pos[order[i]] + records[order[i]].location.reserved / kAlign;
    size_t j = i + 1;
    while (j < order.size() && pos[order[j]] < end) {
      end = std::max(end, pos[order[j]] + records[order[j]].location.reserved / kAlign);
      ++j;
    }
    if (j - i > 1) {
      for (size_t m = i; m < j; ++m) {
        bad[order[m]] = true;
        drop.push_back(RecordKey(records[order[m]].key));
      }
      bad_count += j - i;
    }
    i = j;
  }

  if (!drop.empty()) {
    // Durable before the dropped records' space can be handed out again.
    rocksdb::WriteBatch batch;
    for (const std::string& k : drop) batch.Delete(k);
    rocksdb::Status s = db_->Write(synced_, &batch);
    if (!s.ok()) {
      return RocksToStatus(s, absl::StrCat("ssd tier: dropping ", drop.size(),
                                           " invalid records from catalog ", catalog_dir_));
    }
  }
  recovery->dropped_records = drop.size();

  // Free space is every gap between the surviving records, slab by slab.
  {
    absl::MutexLock lock(&alloc_mu_);
    size_t k = 0;
    for (uint32_t slab = 0; slab < num_slabs_; ++slab) {
      const uint64_t slab_units = SlabLength(slab) / kAlign;
      uint64_t cursor = 0;
      for (; k < order.size() && SlabOf(pos[order[k]]) == slab; ++k) {
        if (bad[order[k]]) continue;
        const uint64_t start = UnitOf(pos[order[k]]);
        if (start > cursor) free_.AppendSorted(Pack(slab, cursor), start - cursor);
        cursor = start + records[order[k]].location.reserved / kAlign;
      }
      if (slab_units > cursor) free_.AppendSorted(Pack(slab, cursor), slab_units - cursor);
    }
    used_units_ = capacity_ / kAlign - free_.free_units();
  }

  if (bad_count > 0) {
    size_t w = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      if (!bad[i]) records[w++] = std::move(records[i]);
    }
    records.resize(w);
  }
  absl::MutexLock lock(&catalog_mu_);
  index_.reserve(records.size());
  for (const SsdRecord& r : records) index_.emplace(r.key, r.location);
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::RecoverModels(SsdRecovery* recovery) {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  const std::string upper(1, kModelPrefix + 1);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  rocksdb::WriteBatch drop;
  absl::MutexLock lock(&catalog_mu_);
  for (it->Seek(rocksdb::Slice(&kModelPrefix, 1)); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    ModelSpec spec;
    Digest fingerprint;
    if (k.size() == 1 + kDigestBytes &&
        DecodeModel(std::string_view(it->value().data(), it->value().size()), &spec) &&
        (fingerprint = ModelFingerprint(spec),
         std::memcmp(fingerprint.data(), k.data() + 1, kDigestBytes) == 0)) {
      models_.insert(fingerprint);
      recovery->models.push_back(std::move(spec));
    } else {
      drop.Delete(k);
    }
  }
  if (!it->status().ok()) {
    return RocksToStatus(it->status(), absl::StrCat("ssd tier: reading catalog ", catalog_dir_));
  }
  if (drop.Count() > 0) {
    rocksdb::Status s = db_->Write(unsynced_, &drop);
    if (!s.ok()) return RocksToStatus(s, absl::StrCat("ssd tier: catalog ", catalog_dir_));
  }
  return absl::OkStatus();
}

void SsdTier::Impl::RemoveSlabFilesBeyondCapacity() {
  // After a capacity cut, the slabs past the end hold nothing the catalog still names (their
  // records were dropped durably above): give their disk space back. Best effort.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(slab_dir_, ec)) {
    unsigned index = 0;
    char tail = 0;
    const std::string name = entry.path().filename().string();
    if (std::sscanf(name.c_str(), "slab-%6u.dat%c", &index, &tail) == 1 && name.size() == 15 &&
        index >= num_slabs_) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

absl::Status SsdTier::Impl::SyncSlabDirectory() {
  const int fd = io_->Open(slab_dir_, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) {
    const int err = errno;
    return WriteErrno(err, absl::StrCat("ssd tier: opening directory ", slab_dir_));
  }
  const int r = io_->FDataSync(fd);
  const int err = errno;
  io_->Close(fd);
  if (r != 0) return WriteErrno(err, absl::StrCat("ssd tier: syncing directory ", slab_dir_));
  return absl::OkStatus();
}

absl::StatusOr<int> SsdTier::Impl::SlabForWrite(uint32_t slab) {
  absl::MutexLock lock(&files_mu_);
  SlabFile& s = slabs_[slab];
  const std::string path = SlabPath(slab);
  if (s.fd < 0) {
    const int fd =
        io_->Open(path, O_RDWR | O_CREAT | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0), 0644);
    if (fd < 0) {
      const int err = errno;
      return WriteErrno(err, absl::StrCat("ssd tier: creating slab file ", path));
    }
    // The new name must survive a crash as surely as the payloads written into it.
    if (absl::Status st = SyncSlabDirectory(); !st.ok()) {
      io_->Close(fd);
      return st;
    }
    s.fd = fd;
    s.size = 0;
    s.sized = false;
  }
  if (!s.sized) {
    const uint64_t length = SlabLength(slab);
    if (io_->FAllocate(s.fd, 0, static_cast<off_t>(length)) != 0) {
      const int err = errno;
      // Without preallocation the writes allocate as they go; ENOSPC then surfaces there.
      if (err != EOPNOTSUPP) {
        return WriteErrno(
            err, absl::StrCat("ssd tier: preallocating ", length, " bytes for slab file ", path));
      }
    }
    s.sized = true;
    s.size = std::max(s.size, length);
  }
  return s.fd;
}

absl::StatusOr<int> SsdTier::Impl::SlabForRead(uint32_t slab, const SsdRecord& record) {
  absl::MutexLock lock(&files_mu_);
  SlabFile& s = slabs_[slab];
  if (s.fd >= 0) return s.fd;
  const std::string path = SlabPath(slab);
  const int fd = io_->Open(path, O_RDWR | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0), 0);
  if (fd < 0) {
    const int err = errno;
    return absl::DataLossError(absl::StrCat("ssd tier: block ", Hex16(record.key),
                                            ": cannot open slab file ", path, ": ",
                                            std::strerror(err)));
  }
  s.fd = fd;
  return fd;
}

absl::Status SsdTier::Impl::CheckRecordShape(const SsdRecord& record, uint64_t pieces_bytes,
                                             absl::string_view op) const {
  if (record.size == 0 || record.location.reserved != SsdTier::ReservedFor(record.size) ||
      !InBounds(record.location)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ssd tier: ", op, " of block ", Hex16(record.key), ": location slab ", record.location.slab,
        " offset ", record.location.offset, " reserved ", record.location.reserved,
        " does not fit a payload of ", record.size, " bytes in this tier"));
  }
  if (pieces_bytes != record.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ssd tier: ", op, " of block ", Hex16(record.key), ": pieces cover ",
                     pieces_bytes, " bytes, the record ", record.size));
  }
  return absl::OkStatus();
}

absl::StatusOr<SsdLocation> SsdTier::Impl::Reserve(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("ssd tier: cannot reserve 0 bytes");
  const uint64_t largest_slab = std::min(slab_bytes_, capacity_);
  if (size > largest_slab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ssd tier: a block of ", size, " bytes does not fit a slab of ", largest_slab, " bytes"));
  }
  const uint64_t units = SsdTier::ReservedFor(size) / kAlign;
  absl::MutexLock lock(&alloc_mu_);
  std::optional<uint64_t> pos = free_.Take(units);
  if (!pos) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "ssd tier: no free run of ", units * kAlign, " bytes: ", free_.free_units() * kAlign,
        " bytes free in ", free_.runs(), " runs (largest ", free_.largest_units() * kAlign, ")"));
  }
  used_units_ += units;
  return SsdLocation{SlabOf(*pos), UnitOf(*pos) * kAlign, units * kAlign};
}

void SsdTier::Impl::FreeRun(const SsdLocation& loc) {
  // A location that is not in use (a double free or a stranger's) is ignored rather than
  // allowed to corrupt the accounting.
  const uint64_t units = loc.reserved / kAlign;
  if (free_.Add(PosOf(loc), units)) used_units_ -= units;
}

void SsdTier::Impl::Unreserve(const SsdLocation& location) {
  if (!InBounds(location)) return;
  absl::MutexLock lock(&alloc_mu_);
  FreeRun(location);
}

absl::Status SsdTier::Impl::PWriteAll(int fd, uint32_t slab, const uint8_t* buf, size_t n,
                                      uint64_t off, const SsdRecord& record) {
  while (n > 0) {
    const ssize_t w = io_->PWrite(fd, buf, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      return WriteErrno(err,
                        absl::StrCat("ssd tier: block ", Hex16(record.key), ": writing ", n,
                                     " bytes at offset ", off, " of slab file ", SlabPath(slab)));
    }
    buf += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::WritePayload(int fd, uint32_t slab, const WriteItem& item) {
  const SsdRecord& r = item.record;
  // Aligned pieces go to the device in place; everything else (unaligned pieces, the
  // remainder of a piece, the zero-padded tail) is gathered in the bounce buffer, which is
  // flushed whenever it fills and before the next in-place write.
  BounceLease bounce(this);
  uint64_t off = r.location.offset;
  size_t fill = 0;
  auto flush = [&](size_t n) -> absl::Status {
    TIERKV_RETURN_IF_ERROR(PWriteAll(fd, slab, bounce.get(), n, off, r));
    off += n;
    fill = 0;
    return absl::OkStatus();
  };
  for (std::span<const uint8_t> piece : item.pieces) {
    const uint8_t* p = piece.data();
    size_t left = piece.size();
    if (left >= kAlign && IsAligned(p) && fill % kAlign == 0) {
      if (fill > 0) TIERKV_RETURN_IF_ERROR(flush(fill));
      const size_t direct = left & ~(kAlign - 1);
      TIERKV_RETURN_IF_ERROR(PWriteAll(fd, slab, p, direct, off, r));
      off += direct;
      p += direct;
      left -= direct;
    }
    while (left > 0) {
      if (bounce.get() == nullptr) {
        return absl::ResourceExhaustedError("ssd tier: out of memory for a bounce buffer");
      }
      const size_t n = std::min(left, kBounceBytes - fill);
      std::memcpy(bounce.get() + fill, p, n);
      fill += n;
      p += n;
      left -= n;
      if (fill == kBounceBytes) TIERKV_RETURN_IF_ERROR(flush(fill));
    }
  }
  if (fill > 0) {
    const size_t padded = SsdTier::ReservedFor(fill);
    std::memset(bounce.get() + fill, 0, padded - fill);
    TIERKV_RETURN_IF_ERROR(flush(padded));
  }
  return absl::OkStatus();
}

std::vector<absl::Status> SsdTier::Impl::Write(std::span<const WriteItem> items) {
  std::vector<absl::Status> status(items.size());
  // Shape, duplicates and reservation first: no I/O for an item that cannot succeed.
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> keys;
  for (size_t i = 0; i < items.size(); ++i) {
    const SsdRecord& r = items[i].record;
    uint64_t bytes = 0;
    for (const auto& piece : items[i].pieces) bytes += piece.size();
    status[i] = CheckRecordShape(r, bytes, "write");
    if (status[i].ok() && !keys.insert(r.key).second) {
      status[i] = absl::InvalidArgumentError(
          absl::StrCat("ssd tier: block ", Hex16(r.key), " appears more than once in one write"));
    }
  }
  {
    absl::MutexLock lock(&alloc_mu_);
    for (size_t i = 0; i < items.size(); ++i) {
      const SsdLocation& loc = items[i].record.location;
      if (status[i].ok() && free_.Overlaps(PosOf(loc), loc.reserved / kAlign)) {
        status[i] = absl::FailedPreconditionError(
            absl::StrCat("ssd tier: block ", Hex16(items[i].record.key), ": slab ", loc.slab,
                         " offset ", loc.offset, " is not reserved"));
      }
    }
  }

  // Space freed by a Remove may be in these reservations; its old record must be gone for
  // good before new bytes land there, or a crash could bring the record back over them.
  bool deletes_pending;
  {
    absl::MutexLock lock(&catalog_mu_);
    deletes_pending = deletes_durable_ < deletes_queued_;
  }
  if (deletes_pending) {
    absl::Status st = FlushCatalog(true);
    if (!st.ok()) {
      for (absl::Status& item : status) {
        if (item.ok()) item = st;
      }
    }
  }

  // Slab files, created on first use.
  struct SlabUse {
    int fd = -1;
    absl::Status status;  // Of opening (then of syncing) the slab file.
    bool synced = false;
  };
  absl::btree_map<uint32_t, SlabUse> used;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!status[i].ok()) continue;
    const uint32_t slab = items[i].record.location.slab;
    auto [it, fresh] = used.try_emplace(slab);
    if (fresh) {
      absl::StatusOr<int> fd = SlabForWrite(slab);
      if (fd.ok()) {
        it->second.fd = *fd;
      } else {
        it->second.status = fd.status();
      }
    }
    if (!it->second.status.ok()) status[i] = it->second.status;
  }

  // Payloads.
  std::vector<size_t> todo;
  uint64_t todo_bytes = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!status[i].ok()) continue;
    todo.push_back(i);
    todo_bytes += items[i].record.location.reserved;
  }
  // Many small payloads need several writes in flight as much as a few large ones do.
  const bool parallel =
      todo_bytes >= kParallelWriteMinBytes || todo.size() >= kParallelWriteMinItems;
  ParallelFor(todo.size(), parallel ? kWriteThreads : 1, [&](size_t t) {
    const WriteItem& item = items[todo[t]];
    const uint32_t slab = item.record.location.slab;
    status[todo[t]] = WritePayload(used.at(slab).fd, slab, item);
  });

  // Durable payloads before any record names them: one fdatasync per slab file.
  for (size_t i : todo) {
    if (!status[i].ok()) continue;
    const uint32_t slab = items[i].record.location.slab;
    SlabUse& use = used.at(slab);
    if (!use.synced) {
      use.synced = true;
      if (io_->FDataSync(use.fd) != 0) {
        const int err = errno;
        use.status = WriteErrno(err, absl::StrCat("ssd tier: syncing slab file ", SlabPath(slab)));
      }
    }
    if (!use.status.ok()) status[i] = use.status;
  }

  // One synced batch for every record whose payload is durable.
  std::vector<std::pair<std::string, std::string>> records;
  std::vector<size_t> done;
  for (size_t i : todo) {
    if (!status[i].ok()) continue;
    records.emplace_back(RecordKey(items[i].record.key), EncodeRecord(items[i].record));
    done.push_back(i);
  }
  if (!done.empty()) {
    absl::Status st = FlushCatalog(true, records);
    if (!st.ok()) {
      for (size_t i : done) status[i] = st;
    } else {
      std::vector<SsdLocation> replaced;
      absl::MutexLock lock(&catalog_mu_);
      for (size_t i : done) {
        const SsdRecord& r = items[i].record;
        auto [it, inserted] = index_.try_emplace(r.key, r.location);
        if (!inserted && it->second != r.location) {
          replaced.push_back(it->second);
          it->second = r.location;
        }
      }
      // A record this batch replaced is durably gone with it: its run is free at once.
      absl::MutexLock alloc(&alloc_mu_);
      for (const SsdLocation& loc : replaced) FreeRun(loc);
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (status[i].ok()) {
      writes_.fetch_add(1, std::memory_order_relaxed);
      bytes_written_.fetch_add(items[i].record.size, std::memory_order_relaxed);
    } else {
      write_errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return status;
}

absl::Status SsdTier::Impl::PReadAll(int fd, const SsdRecord& record, uint8_t* buf, size_t n,
                                     uint64_t off) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = io_->PRead(fd, buf + got, n - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      return absl::DataLossError(absl::StrCat(
          "ssd tier: block ", Hex16(record.key), ": reading ", n, " bytes at offset ", off,
          " of slab file ", SlabPath(record.location.slab), ": ", std::strerror(err)));
    }
    // A partial O_DIRECT read that is not whole blocks can only be the end of the file.
    if (r == 0 || (direct_io_ && r % kAlign != 0)) {
      got += static_cast<size_t>(r);
      return absl::DataLossError(absl::StrCat(
          "ssd tier: block ", Hex16(record.key), ": short read at offset ", off, " of slab file ",
          SlabPath(record.location.slab), ": ", got, " of ", n, " bytes (slab file truncated)"));
    }
    got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::ReadPayload(int fd, const SsdRecord& r,
                                        std::span<const std::span<uint8_t>> pieces) {
  // Mirror of WritePayload: whole aligned blocks straight into aligned pieces, the rest
  // through the bounce buffer. `pos` is the payload offset reached; the bounce buffer holds
  // payload [buf_start, buf_end) and always ends on a block boundary.
  BounceLease bounce(this);
  uint64_t pos = 0, buf_start = 0, buf_end = 0;
  for (std::span<uint8_t> piece : pieces) {
    uint8_t* dst = piece.data();
    size_t left = piece.size();
    while (left > 0) {
      if (pos < buf_end) {
        const size_t n = std::min<uint64_t>(left, buf_end - pos);
        std::memcpy(dst, bounce.get() + (pos - buf_start), n);
        dst += n;
        left -= n;
        pos += n;
        continue;
      }
      if (left >= kAlign && IsAligned(dst)) {
        const size_t direct = left & ~(kAlign - 1);
        TIERKV_RETURN_IF_ERROR(PReadAll(fd, r, dst, direct, r.location.offset + pos));
        dst += direct;
        left -= direct;
        pos += direct;
        continue;
      }
      if (bounce.get() == nullptr) {
        return absl::ResourceExhaustedError("ssd tier: out of memory for a bounce buffer");
      }
      const size_t n = std::min<uint64_t>(kBounceBytes, r.location.reserved - pos);
      TIERKV_RETURN_IF_ERROR(PReadAll(fd, r, bounce.get(), n, r.location.offset + pos));
      buf_start = pos;
      buf_end = pos + n;
    }
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::Read(const SsdRecord& record,
                                 std::span<const std::span<uint8_t>> pieces) {
  uint64_t bytes = 0;
  for (const auto& piece : pieces) bytes += piece.size();
  TIERKV_RETURN_IF_ERROR(CheckRecordShape(record, bytes, "read"));
  absl::StatusOr<int> fd = SlabForRead(record.location.slab, record);
  absl::Status st = fd.ok() ? ReadPayload(*fd, record, pieces) : fd.status();
  if (!st.ok()) {
    read_errors_.fetch_add(1, std::memory_order_relaxed);
    return st;
  }
  uint64_t sum;
  if (pieces.size() == 1) {
    sum = BlockChecksum(pieces[0].data(), pieces[0].size());
  } else {
    ChecksumBuilder builder;
    for (const auto& piece : pieces) builder.Update(piece.data(), piece.size());
    sum = builder.Finish();
  }
  if (sum != record.checksum) {
    checksum_failures_.fetch_add(1, std::memory_order_relaxed);
    return absl::DataLossError(absl::StrFormat(
        "ssd tier: block %s: checksum mismatch in slab file %s at offset %d (%d bytes): "
        "stored %016x, read %016x",
        Hex16(record.key), SlabPath(record.location.slab), record.location.offset, record.size,
        record.checksum, sum));
  }
  reads_.fetch_add(1, std::memory_order_relaxed);
  bytes_read_.fetch_add(record.size, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::FlushCatalog(
    bool sync, const std::vector<std::pair<std::string, std::string>>& records) {
  absl::MutexLock flush(&flush_mu_);
  std::vector<CatalogOp> ops;
  uint64_t deletes;
  bool unsynced_deletes;
  {
    absl::MutexLock lock(&catalog_mu_);
    ops.swap(queue_);
    deletes = deletes_queued_;
    unsynced_deletes = deletes_durable_ < deletes_queued_;
  }
  rocksdb::WriteBatch batch;
  for (const CatalogOp& op : ops) {
    if (op.value) {
      batch.Put(op.key, *op.value);
    } else {
      batch.Delete(op.key);
    }
  }
  for (const auto& [key, value] : records) batch.Put(key, value);
  rocksdb::Status s;
  if (batch.Count() > 0) {
    s = db_->Write(sync ? synced_ : unsynced_, &batch);
  } else if (sync && unsynced_deletes) {
    // Deletes an unsynced flush already wrote: syncing the WAL makes them durable.
    s = db_->SyncWAL();
  }
  absl::MutexLock lock(&catalog_mu_);
  if (!s.ok()) {
    queue_.insert(queue_.begin(), std::make_move_iterator(ops.begin()),
                  std::make_move_iterator(ops.end()));
    return RocksToStatus(
        s, absl::StrCat("ssd tier: writing ", batch.Count(), " updates to catalog ", catalog_dir_));
  }
  // A synced write makes everything written to the WAL before it durable too.
  if (sync) deletes_durable_ = std::max(deletes_durable_, deletes);
  return absl::OkStatus();
}

void SsdTier::Impl::FlushLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&catalog_mu_);
      catalog_mu_.AwaitWithTimeout(absl::Condition(this, &Impl::FlushDue), kFlushInterval);
      // The destructor writes what is left, synced.
      if (stopping_) return;
      if (queue_.empty()) continue;
    }
    // A failure keeps the updates queued for the next try (or the next Write, which reports
    // it).
    FlushCatalog(false).IgnoreError();
  }
}

// Removals are deliberately lazy: the record leaves the index and its run goes back to the
// free space at once (Reserve may hand it out again right away: the caller is usually
// evicting to make room), while the catalog delete is only queued. Safety comes from Write,
// which makes every queued delete durable (one synced catalog write) before it writes any
// payload, so no new bytes land in a run whose old record could still come back after a
// crash. Until then a crash at most brings back a removed record whose bytes are intact.
absl::Status SsdTier::Impl::Remove(std::span<const SsdRecord> records) {
  std::vector<SsdLocation> freed;
  {
    absl::MutexLock lock(&catalog_mu_);
    for (const SsdRecord& r : records) {
      auto it = index_.find(r.key);
      if (it == index_.end() || it->second != r.location) continue;
      index_.erase(it);
      queue_.push_back(CatalogOp{RecordKey(r.key), std::nullopt});
      ++deletes_queued_;
      freed.push_back(r.location);
    }
  }
  if (freed.empty()) return absl::OkStatus();
  absl::MutexLock alloc(&alloc_mu_);
  for (const SsdLocation& loc : freed) FreeRun(loc);
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::Touch(std::span<const SsdRecord> records) {
  absl::MutexLock lock(&catalog_mu_);
  if (queue_.size() >= kMaxQueuedOps) {
    // Hints only: drop them rather than grow without bound while the catalog fails.
    return absl::UnavailableError(absl::StrCat("ssd tier: ", queue_.size(),
                                               " catalog updates are waiting for ", catalog_dir_,
                                               "; last-use hints dropped"));
  }
  for (const SsdRecord& r : records) {
    auto it = index_.find(r.key);
    // Only records still cataloged where the caller thinks: a Touch racing a Remove must not
    // bring the record back.
    if (it == index_.end() || it->second != r.location ||
        r.location.reserved != SsdTier::ReservedFor(r.size)) {
      continue;
    }
    queue_.push_back(CatalogOp{RecordKey(r.key), EncodeRecord(r)});
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Impl::RememberModel(const ModelSpec& spec) {
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  const Digest fingerprint = ModelFingerprint(spec);
  absl::MutexLock lock(&catalog_mu_);
  // Queued like a Touch; durable at the latest with the Write of the model's first block.
  if (models_.insert(fingerprint).second) {
    queue_.push_back(CatalogOp{ModelKey(fingerprint), EncodeModel(spec)});
  }
  return absl::OkStatus();
}

SsdTierStats SsdTier::Impl::Stats() const {
  SsdTierStats st;
  st.capacity_bytes = capacity_;
  {
    absl::MutexLock lock(&catalog_mu_);
    st.records = index_.size();
  }
  {
    absl::MutexLock lock(&alloc_mu_);
    st.reserved_bytes = used_units_ * kAlign;
  }
  {
    absl::MutexLock lock(&files_mu_);
    for (const SlabFile& s : slabs_) st.slabs += s.fd >= 0 ? 1 : 0;
  }
  st.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  st.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  st.writes = writes_.load(std::memory_order_relaxed);
  st.reads = reads_.load(std::memory_order_relaxed);
  st.write_errors = write_errors_.load(std::memory_order_relaxed);
  st.read_errors = read_errors_.load(std::memory_order_relaxed);
  st.checksum_failures = checksum_failures_.load(std::memory_order_relaxed);
  return st;
}

// ---- SsdTier ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(const SsdTierOptions& options,
                                                       SsdRecovery* recovery) {
  const absl::Time start = absl::Now();
  SsdRecovery discarded;
  if (recovery == nullptr) recovery = &discarded;
  *recovery = SsdRecovery();
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Open(options, recovery));
  recovery->elapsed = absl::Now() - start;
  return std::unique_ptr<SsdTier>(new SsdTier(std::move(impl)));
}

SsdTier::SsdTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SsdTier::~SsdTier() = default;

absl::StatusOr<SsdLocation> SsdTier::Reserve(uint64_t size) { return impl_->Reserve(size); }
void SsdTier::Unreserve(const SsdLocation& location) { impl_->Unreserve(location); }
std::vector<absl::Status> SsdTier::Write(std::span<const WriteItem> items) {
  return impl_->Write(items);
}
absl::Status SsdTier::Read(const SsdRecord& record, std::span<const std::span<uint8_t>> pieces) {
  return impl_->Read(record, pieces);
}
absl::Status SsdTier::Remove(std::span<const SsdRecord> records) { return impl_->Remove(records); }
absl::Status SsdTier::Touch(std::span<const SsdRecord> records) { return impl_->Touch(records); }
absl::Status SsdTier::RememberModel(const ModelSpec& spec) { return impl_->RememberModel(spec); }
SsdTierStats SsdTier::Stats() const { return impl_->Stats(); }
uint64_t SsdTier::capacity_bytes() const { return impl_->capacity_bytes(); }

}  // namespace tierkv
