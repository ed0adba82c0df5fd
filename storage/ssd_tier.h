// The SSD tier: block payloads in slab files under a data directory, written and read with
// O_DIRECT, and a RocksDB catalog of what is durably stored (docs/ssd-catalog.md).
//
// Space: `capacity_bytes` split into slab files of `slab_bytes` each (the last may be
// shorter), created on first use. A block takes one contiguous, 4 KiB-aligned run inside
// one slab (best fit); freed runs merge with their neighbours and are reused. Reserved
// bytes never exceed the capacity.
//
// Durability: Write() makes payloads durable (fdatasync of each slab file written) before it
// adds their catalog records in one synced RocksDB batch, so a record never points at bytes
// that were not on disk. Remove frees space at once, but no Write puts payload on disk
// before every pending deletion is durable, so a crash never resurrects a record over
// someone else's bytes (a removed record whose space was not reused may come back intact).
// Bytes written without a record (a crash between the two steps) are free space on the
// next Open.
//
// Integrity: Read() verifies the payload's XXH3-64 against the record's checksum; a
// mismatch, a short read (truncated slab) or an I/O error is DATA_LOSS and counted. The
// caller decides what to do with the record (the cache manager removes it).
//
// Every file operation goes through an SsdFileIo (the storage seam), so tests can inject
// ENOSPC, EIO, flipped bytes and truncation.
//
// Thread-safe. Reserve/Unreserve are in-memory and cheap, and Remove/Touch are unsynced
// catalog updates (microseconds): all four may be called under a caller's lock. Write and
// Read do payload I/O and must not be.
#ifndef TIERKV_STORAGE_SSD_TIER_H_
#define TIERKV_STORAGE_SSD_TIER_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/block_key.h"

namespace tierkv {

// Where a block lies on the SSD tier. `reserved` is the aligned length taken from the slab.
struct SsdLocation {
  uint32_t slab = 0;
  uint64_t offset = 0;
  uint64_t reserved = 0;
  bool operator==(const SsdLocation&) const = default;
};

// One catalog record: everything needed to serve the block after a restart.
struct SsdRecord {
  BlockKey key{};
  std::optional<BlockKey> parent;
  uint64_t size = 0;      // Payload bytes (before alignment).
  uint32_t codec = 1;     // As in proto/tierkv/v1/common.proto.
  uint64_t checksum = 0;  // XXH3-64 of the payload (BlockChecksum).
  Digest fingerprint{};   // Model fingerprint the block was stored under.
  int64_t last_use_unix_ms = 0;
  SsdLocation location;
};

// The storage seam: the file operations the tier performs. Return values follow the POSIX
// calls they are named after (-1 with errno set on failure).
class SsdFileIo {
 public:
  virtual ~SsdFileIo() = default;
  virtual int Open(const std::string& path, int flags, mode_t mode) = 0;
  virtual int Close(int fd) = 0;
  virtual ssize_t PWrite(int fd, const void* buf, size_t count, off_t offset) = 0;
  virtual ssize_t PRead(int fd, void* buf, size_t count, off_t offset) = 0;
  virtual int FDataSync(int fd) = 0;
  virtual int FAllocate(int fd, off_t offset, off_t length) = 0;
  virtual int FStat(int fd, struct stat* st) = 0;
};

// The real thing (plain syscalls).
std::shared_ptr<SsdFileIo> DefaultSsdFileIo();

struct SsdTierOptions {
  std::string dir;                    // Created if missing; holds slabs/ and catalog/.
  uint64_t capacity_bytes = 0;        // Rounded down to 4 KiB; at least one block's worth.
  uint64_t slab_bytes = 1ull << 30;   // Multiple of 4 KiB.
  bool direct_io = true;              // O_DIRECT; off only where the filesystem refuses it.
  std::shared_ptr<SsdFileIo> io;      // Null: DefaultSsdFileIo().
};

struct SsdRecovery {
  std::vector<SsdRecord> records;     // Every valid record, in no particular order.
  std::vector<ModelSpec> models;      // Specs remembered with RememberModel.
  uint64_t dropped_records = 0;       // Records removed at open (payload outside its slab
                                      // file, overlapping another record, undecodable).
  absl::Duration elapsed;
};

struct SsdTierStats {
  uint64_t capacity_bytes = 0;
  uint64_t reserved_bytes = 0;  // Reserved or written (aligned).
  uint64_t records = 0;
  uint64_t slabs = 0;
  uint64_t bytes_written = 0;
  uint64_t bytes_read = 0;
  uint64_t writes = 0;
  uint64_t reads = 0;
  uint64_t write_errors = 0;
  uint64_t read_errors = 0;         // I/O errors and short reads.
  uint64_t checksum_failures = 0;
};

class SsdTier {
 public:
  // Opens (or creates) the tier in options.dir and recovers the catalog without reading
  // any payload. INVALID_ARGUMENT for bad options or a catalog written with other slab
  // geometry or a newer format; UNAVAILABLE / INTERNAL when the directory or RocksDB
  // cannot be opened (with the path and the OS or RocksDB message).
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const SsdTierOptions& options,
                                                       SsdRecovery* recovery);
  ~SsdTier();
  SsdTier(const SsdTier&) = delete;
  SsdTier& operator=(const SsdTier&) = delete;

  // Reserves space for a payload of `size` bytes. RESOURCE_EXHAUSTED when no free run is
  // large enough (the caller evicts and retries); INVALID_ARGUMENT for 0 or more than a slab.
  absl::StatusOr<SsdLocation> Reserve(uint64_t size);
  // Returns a reservation that was never written, or whose Write failed.
  void Unreserve(const SsdLocation& location);

  // One block to store: its record (location from Reserve) and its payload in pieces that
  // cover exactly record.size bytes, in order.
  struct WriteItem {
    SsdRecord record;
    std::vector<std::span<const uint8_t>> pieces;
  };
  // Writes the payloads, makes them durable, then catalogs them in one synced batch. One
  // status per item: OK means the record is durable; on error the item's reservation is
  // still the caller's (Unreserve it). RESOURCE_EXHAUSTED for ENOSPC, UNAVAILABLE for other
  // I/O errors, each naming the slab file and the OS error.
  std::vector<absl::Status> Write(std::span<const WriteItem> items);

  // Reads a record's payload into `pieces` (covering exactly record.size bytes) and verifies
  // its checksum. DATA_LOSS for a mismatch, a short read or an I/O error.
  absl::Status Read(const SsdRecord& record, std::span<const std::span<uint8_t>> pieces);

  // Deletes records from the catalog and frees their space (reusable once the deletion is
  // durable). Records not in the catalog are ignored.
  absl::Status Remove(std::span<const SsdRecord> records);

  // Updates last use times (not synced: only an eviction hint after a restart).
  absl::Status Touch(std::span<const SsdRecord> records);

  // Remembers a model spec under its fingerprint (idempotent), so that a restarted cache
  // manager can still explain fingerprint mismatches.
  absl::Status RememberModel(const ModelSpec& spec);

  SsdTierStats Stats() const;
  uint64_t capacity_bytes() const;
  // Aligned bytes a payload of `size` takes.
  static uint64_t ReservedFor(uint64_t size) { return (size + 4095) & ~uint64_t{4095}; }

 private:
  class Impl;
  explicit SsdTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tierkv

#endif  // TIERKV_STORAGE_SSD_TIER_H_
