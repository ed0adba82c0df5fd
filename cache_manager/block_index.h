// The cache manager's state machine: committed blocks and their prefix structure across the
// host and SSD tiers, pending allocations under write leases, read leases, pins,
// prefix-aware LRU eviction, demotion and promotion, and the bookkeeping that lets
// InspectPrefix explain a miss. Owns nothing on the wire: the gRPC services translate to
// and from these calls.
//
// Tiers. A committed block has a host copy (pool pages), an SSD copy (a durable catalog
// record), a GPU copy (pages of the device tier), or several of them. New blocks are written
// to the host tier, or, when the writer asks for it and the node has a GPU tier (its writers
// share the process and the GPU), to the GPU tier; the GPU tier makes room by demoting its
// coldest blocks to host memory (a device-to-host copy with the lock released) or dropping
// GPU copies that have another copy, and evicts a GPU-only leaf only when host memory cannot
// take it. Only callers that share the GPU get GPU locations from Lookup; for anyone else a
// GPU-only block is first copied into host memory, as an SSD-only one is promoted. When the host tier needs room,
// the coldest host blocks without host-resident children go first: a block that also has an
// SSD copy just drops its host copy; one the admission rule accepts (used again since its
// commit, or a parent of blocks already on SSD) is demoted, written to SSD with the lock
// released while it stays readable in host memory; any other leaf is evicted. Lookup and
// reads promote SSD-only blocks back to host memory (checksum verified) before they hand
// out locations. In write-through mode Commit also writes every block to SSD before it
// returns, so a restart finds every committed block. The SSD tier evicts its coldest
// blocks that are either also in host memory or leaves. A block whose SSD copy fails its
// checksum is dropped and remembered as a checksum failure.
//
// Invariants (checked by CheckInvariants() in tests):
// - every GPU-resident committed block and every pending GPU block owns one allocation of
//   the device tier's pool, whose used bytes equal their reservations; gpu_order_ holds
//   exactly the GPU-resident blocks;
// - every host-resident committed block and every pending block owns exactly one pool
//   allocation, and the pool's used bytes equal the sum of their reservations (plus
//   allocations whose release waits for an in-flight copy); every committed block is in at
//   least one tier;
// - a block with readers (leases, in-flight Get, an allocation extending it) or a pin is
//   never evicted, and neither is any ancestor of one, since a chain cut above it would make
//   it unreachable: `kept` counts exactly these reasons, and kept_bytes_ their host space;
//   a pinned block or one with readers keeps its host copy (protected_host_bytes_), while
//   its ancestors may be demoted (the chain stays whole on SSD);
// - the eviction orders hold exactly: all committed blocks without committed children
//   (leaves_), host-resident blocks without host-resident children (host_leaves_), and
//   SSD-resident blocks that are in host or GPU memory too or are leaves (ssd_order_);
// - a slab's pending run (use statistics a Lookup left there) holds only live blocks, none
//   of them in an eviction order: whatever lists or frees a block applies the run first.
//
// Thread-safe: every public method takes the index's mutex; checksums, byte copies of large
// payloads and SSD I/O run outside it, and so does Lookup's counting of its keys for
// admission (under the admission controller's own mutex).
#ifndef TIERKV_CACHE_MANAGER_BLOCK_INDEX_H_
#define TIERKV_CACHE_MANAGER_BLOCK_INDEX_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache_manager/event_log.h"
#include "cache_manager/admission.h"
#include "cache_manager/block_probe_table.h"
#include "core/block_key.h"
#include "core/clock.h"
#include "storage/device_tier.h"
#include "storage/host_pool.h"
#include "storage/ssd_tier.h"

namespace tierkv {

// Codec ids as in proto/tierkv/v1/common.proto (0 means raw).
inline constexpr uint32_t kCodecRaw = 1;
inline constexpr uint32_t kMaxCodec = 5;
inline constexpr uint64_t kMaxBlockBytes = 256ull << 20;
inline constexpr size_t kMaxBlocksPerAllocation = 65536;
inline constexpr size_t kMaxLookupKeys = 1 << 20;

class BlockIndex;
struct BlockSlab;
struct CommittedBlockDelete;

// A committed block. Readers outside the index see it only through the visitor callbacks,
// under the index's lock.
//
// Field order is for Lookup, which walks thousands of blocks scattered over the heap: the
// first line holds everything it reads to decide a block is in the prefix and to answer
// for it, the second what it updates; the rest comes after. Aligned to a cache line so
// that this holds for every block (block_index_test checks the offsets).
//
// Use statistics (recency, hits, last access, admission uses): a Lookup that answers a run
// of blocks of one slab through a LookupRecordSink does not write them into each block.
// It notes the run in the slab (its first and end slot, the time, the first recency number
// and how many Lookups found that same run), and the blocks get their statistics when
// anything reads or changes them: the accessors below apply what the slab holds for the
// block first (to every block of the run at once). A repeated prefix, the common hit, then
// costs one line a block instead of two.
struct alignas(64) CommittedBlock {
  // Marks host_offset of a host copy stored in several pieces (read `space`).
  static constexpr uint64_t kSplitHostCopy = ~uint64_t{0};

  BlockKey key;
  uint64_t checksum = 0;
  // Where the host copy begins in the pool while in_host: space.extents[0].offset for a
  // copy in one piece, kSplitHostCopy for one in several.
  uint64_t host_offset = 0;
  uint32_t size = 0;  // At most kMaxBlockBytes.
  static_assert(kMaxBlockBytes <= UINT32_MAX);
  // In at least one eviction order, as of the last Relist (true until the first: a Touch
  // is then never skipped wrongly).
  bool listed = true;

 private:
  friend class BlockIndex;
  friend struct BlockSlab;
  friend struct CommittedBlockDelete;
  // In its slab's pending run (see above): its statistics are not all in the block.
  bool in_pending_run_ = false;

 public:
  // Lookup reads the next five fields as one little-endian word at kStateWordAt
  // (fingerprint_id in its low 4 bytes, then codec, in_host, moving, in_gpu; block_index_test
  // checks).
  static constexpr size_t kStateWordAt = 56;
  uint32_t fingerprint_id = 0;  // The index's number for `fingerprint`.
  uint8_t codec = kCodecRaw;
  // Host copy: `space` is valid only while in_host.
  bool in_host = true;
  // A demotion or promotion of this block is running with the lock released.
  bool moving = false;
  // GPU copy: `gpu_space` (pages of the device tier) is valid only while in_gpu.
  bool in_gpu = false;

  // -- second line: use statistics, read through these (see above) --
  uint64_t touch_seq() const {  // Recency (eviction order).
    Settle();
    return touch_seq_;
  }
  uint64_t hits() const {
    Settle();
    return hits_;
  }
  absl::Time last_access() const {
    Settle();
    return last_access_;
  }
  // Its demotion failed (I/O error): it leaves host memory only by eviction.
  bool no_demote() const {
    Settle();
    return no_demote_;
  }
  // Lookup hits not yet in the admission sketch (AdmissionController::OnLookup).
  BlockUses uses() const {
    Settle();
    return uses_;
  }
  // Offsets of the use statistics in the block (block_index_test checks the layout).
  static std::vector<size_t> UseStatOffsetsForTest();

 private:
  // Applies what the block's slab holds for it (BlockIndex, under its lock).
  void Settle() const {
    if (in_pending_run_) ApplySlabRun();
  }
  void ApplySlabRun() const;
  // What `lookups` Lookups that found it at `now` record in it, recency aside (settled).
  void NoteFound(uint64_t lookups, absl::Time now, bool count_uses, uint64_t uses_epoch) {
    hits_ += lookups;
    if (count_uses) {
      if (lookups == 1) {
        uses_.Add(uses_epoch);  // The walk's case (a constant there): no more than that.
      } else {
        uses_.AddTimes(uses_epoch, lookups);
      }
    }
    no_demote_ = false;  // A failed demotion is retried after the block's next use.
    last_access_ = now;
  }

  uint64_t touch_seq_ = 0;
  uint64_t hits_ = 0;
  absl::Time last_access_;
  bool no_demote_ = false;
  BlockUses uses_;

 public:
  bool pinned = false;
  // Slots after this one in its slab: the blocks its Commit created after it, in order
  // (dead ones read as a zero key). Lookup expects a chain's next block there.
  uint32_t slab_after = 0;
  uint32_t host_children = 0;  // Committed children with a host copy.
  uint32_t readers = 0;   // Read leases, in-flight Gets, and allocations extending it.
  uint32_t children = 0;  // Committed blocks whose parent is this one.
  // Why eviction must keep this block: 1 if it is protected itself (pinned or read), plus
  // one per committed child that is kept. Eviction takes only blocks where this is 0.
  uint32_t kept = 0;
  // -- cold --
  Digest fingerprint{};
  PoolAllocation space;
  // SSD copy (durable, cataloged), if any.
  std::optional<SsdLocation> ssd;
  PoolAllocation gpu_space;
  std::optional<BlockKey> parent;
  absl::Time committed_at;
  uint64_t commit_seq = 0;  // Order of commit (ListBlocks paging).
  BlockSlab* slab = nullptr;  // Where it lives (freed with its last block).
};

// Committed blocks live in slabs: the blocks one Commit creates, side by side in its
// order (a chain's order, as writers commit), so that a Lookup of the chain finds each next
// block at the next address rather than by a probe of the table, and reads them in
// address order. A slab goes with its last block.
struct CommittedBlockDelete {
  void operator()(CommittedBlock* block) const;
};
using CommittedBlockPtr = std::unique_ptr<CommittedBlock, CommittedBlockDelete>;

// Where a Lookup may write the answer of a block stored in one piece in host memory
// itself: the block's 32-byte LookupResponse record (the layout of proto/lookup_blocks.h:
// checksum, offset, size, pieces = 1, first_piece = 0, codec, tier = host_tier, two zero
// bytes, little-endian), at records + 32 * count. Its owner (LookupResponseEncoder) writes
// the records of the blocks handed to emit_blocks at `count` too, so the records stay in
// the blocks' order. The Lookup writes only while count < capacity.
//
// Plain stores: the socket's copy reads the records right after the handler, and finds them
// in cache. (Streaming stores past the caches made the handler no faster and that copy
// twice as slow: bench/RESULTS.md, 2026-11-28.)
struct LookupRecordSink {
  char* records = nullptr;
  size_t capacity = 0;
  size_t count = 0;
  uint8_t host_tier = 0;

  // Writes the record of a block stored in one piece at `offset` to `out`.
  static void WriteOnePiece(char* out, uint64_t checksum, uint64_t offset, uint64_t size,
                            uint8_t codec, uint8_t tier) {
    Store(out, checksum);
    Store(out + 8, offset);
    Store(out + 16, (size & 0xffffffffu) | uint64_t{1} << 32);  // pieces = 1
    Store(out + 24, uint64_t{codec} << 32 | uint64_t{tier} << 40);  // first_piece = 0
  }

 private:
  // One 8-byte store each: the compiler would build a 32-byte record on the stack and
  // reload it in halves, which stalls on every record (the loads cannot be forwarded from
  // the smaller stores).
  static void Store(char* at, uint64_t value) {
    static_assert(std::endian::native == std::endian::little);
    std::memcpy(at, &value, sizeof(value));
  }
};

struct BlockIndexOptions {
  absl::Duration write_lease_ttl = absl::Seconds(30);
  absl::Duration read_lease_ttl = absl::Seconds(30);
  absl::Duration max_lease_ttl = absl::Minutes(10);
  uint32_t eviction_memory = 1 << 20;
  uint32_t expired_allocation_memory = 65536;
  // With an SSD tier: write back (blocks reach SSD when demoted, if admitted) or write
  // through (Commit returns once every block is durable on SSD too).
  bool ssd_write_through = false;
  // Admission to SSD on demotion: a block must have had at least this many Lookup hits
  // since its commit (0 admits every block). Parents of SSD-resident blocks are always
  // admitted, so that chains stay whole.
  uint32_t ssd_admit_min_hits = 1;
  // Admission to the host tier when it is full: kAll stores every new block, evicting the
  // least recently used (plain prefix-aware LRU); kSecondUse stores, under pressure, only
  // blocks that Lookups asked for at least twice lately (a frequency sketch), so one-off
  // prompts do not flush blocks that are reused. With free space every block is stored.
  // kAuto chooses between the two by simulating both on a sample (cache_manager/admission.h).
  enum class Admission { kAll, kSecondUse, kAuto };
  Admission admission = Admission::kAll;
  // Counters per hash of the frequency sketch; 0: sixteen per page of the host tier, at
  // least 1M and at most 4M.
  uint64_t admission_sketch_width = 0;
};

struct AllocateBlockSpec {
  std::string key;         // Raw bytes as received; validated by Allocate.
  std::string parent_key;  // Empty for block 0.
  uint64_t size = 0;
  uint32_t codec = 0;
};

enum class AllocateState { kAllocated, kAlreadyCommitted, kInProgress, kNotAdmitted };

struct AllocateResult {
  uint64_t allocation_id = 0;  // 0 when nothing was reserved.
  absl::Time lease_expires;
  struct Block {
    BlockKey key;
    AllocateState state;
    PoolAllocation space;  // kAllocated only.
    bool on_gpu = false;   // `space` is in the GPU tier's region (else the host tier's).
  };
  std::vector<Block> blocks;
};

struct LookupResult {
  size_t found = 0;
  uint64_t lease_id = 0;
  absl::Time lease_expires;
};

struct EvictResult {
  uint32_t evicted = 0;
  uint64_t bytes_freed = 0;
};

enum class InspectState {
  kFound,
  kNeverStored,
  kEvicted,
  kUncommitted,
  kFingerprintMismatch,
  kUnreachable,
  kChecksumFailure,
};

struct InspectEntry {
  BlockKey key;
  InspectState state;
  std::string detail;
};

struct IndexStats {
  uint64_t blocks = 0;
  uint64_t bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t page_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t pending_allocations = 0;
  uint64_t pending_blocks = 0;
  uint64_t read_leases = 0;
  uint64_t pinned_blocks = 0;
  uint64_t lookups = 0;
  uint64_t commits = 0;
  uint64_t aborts = 0;
  uint64_t expired_allocations = 0;
  uint64_t checksum_failures = 0;
  uint64_t allocation_failures = 0;
  bool draining = false;
  // SSD tier (zero without one).
  bool has_ssd = false;
  uint64_t ssd_blocks = 0;
  uint64_t ssd_bytes = 0;
  uint64_t ssd_used_bytes = 0;
  uint64_t ssd_capacity_bytes = 0;
  uint64_t ssd_hits = 0;            // Lookup/read hits served by a promotion.
  uint64_t ssd_evictions = 0;       // SSD copies dropped for room.
  uint64_t host_blocks = 0;         // Committed blocks with a host copy, and their bytes.
  uint64_t host_bytes = 0;
  bool ssd_write_through = false;
  uint64_t demotions = 0;
  uint64_t promotions = 0;
  uint64_t host_drops = 0;          // Host copies dropped because an SSD copy existed.
  uint64_t admissions_refused = 0;  // Cold blocks evicted rather than demoted.
  uint64_t ssd_write_failures = 0;
  uint64_t ssd_read_failures = 0;   // Promotions that failed (checksum, truncation, I/O).
  uint64_t ssd_recovered_blocks = 0;
  // Host admission (BlockIndexOptions::admission) and evictions by reason.
  std::string admission = "all";  // AdmissionController::Describe().
  uint64_t admission_switches = 0;
  uint64_t admissions_not_admitted = 0;  // New blocks refused because the tier was full.
  uint64_t evicted_capacity = 0;
  uint64_t evicted_requested = 0;
  uint64_t evicted_ssd_capacity = 0;
  uint64_t dropped_corrupt = 0;
  // GPU tier (zero without one).
  bool has_gpu = false;
  std::string gpu_device;
  uint64_t gpu_blocks = 0;
  uint64_t gpu_bytes = 0;
  uint64_t gpu_used_bytes = 0;
  uint64_t gpu_capacity_bytes = 0;
  uint64_t gpu_hits = 0;          // Lookup hits handed out as GPU locations.
  uint64_t gpu_demotions = 0;     // GPU-only blocks copied down to host memory for room.
  uint64_t gpu_drops = 0;         // GPU copies dropped for room (another copy existed).
  uint64_t gpu_to_host = 0;       // GPU-only blocks copied to host memory for a host reader.
  uint64_t gpu_copy_failures = 0; // Device-to-host copies that failed.
  uint64_t gpu_fallbacks = 0;     // Allocations that asked for the GPU tier and got host.
  uint64_t gpu_evictions = 0;     // Blocks with a GPU copy that left the cache.
};

class BlockIndex {
 public:
  // `pool`, `clock`, `events`, `ssd` (null: no SSD tier) and `gpu` (null: no GPU tier) must
  // outlive the index.
  BlockIndex(const BlockIndexOptions& options, HostPool* pool, Clock* clock, EventLog* events,
             SsdTier* ssd = nullptr, DeviceTier* gpu = nullptr);

  // Writes every host block without an SSD copy to SSD (write-back mode's graceful
  // shutdown; blocks only in GPU memory are copied down to host memory first), most recently
  // used first, in batches of `batch` blocks, until all are there
  // or the SSD has no more room for them. Returns how many were written. No-op without an
  // SSD tier.
  struct FlushResult {
    uint64_t written = 0;
    uint64_t bytes = 0;
    uint64_t left = 0;  // Host-only blocks that did not fit or failed.
  };
  FlushResult FlushToSsd(size_t batch = 256);

  // Adds the blocks an SSD tier recovered at start (SSD-only, coldest by last use first)
  // and the model specs it remembered. Call once, before serving.
  void Recover(const SsdRecovery& recovery);
  ~BlockIndex();
  BlockIndex(const BlockIndex&) = delete;
  BlockIndex& operator=(const BlockIndex&) = delete;

  // Longest committed prefix of `keys`; calls `emit` for each found block in order, under
  // the lock. A block committed under another fingerprint than `fingerprint` (when given), or
  // with a codec outside `accept_codecs` (raw only when empty), ends the prefix. With
  // `lease`, the found blocks are held until ReleaseLease or `lease_ttl` (zero: the default).
  // INVALID_ARGUMENT for a malformed key, too many keys or a lease longer than the maximum.
  // `keys` view the caller's buffers (no copy of large key lists on the hot path). With
  // `accept_gpu` (the caller shares the GPU tier's memory) blocks with a GPU copy are
  // emitted as they are (the caller reads gpu_space); otherwise every emitted block has a
  // host copy.
  absl::StatusOr<LookupResult> Lookup(const std::vector<std::string_view>& keys,
                                      const std::optional<Digest>& fingerprint,
                                      const std::vector<uint32_t>& accept_codecs, bool lease,
                                      absl::Duration lease_ttl,
                                      absl::FunctionRef<void(const CommittedBlock&)> emit,
                                      bool accept_gpu = false);
  // The same with the keys concatenated (LookupRequest.keys as received): INVALID_ARGUMENT
  // when `packed_keys` is not a whole number of 32-byte keys. The fast path: no per-key
  // allocation, and the probes of later keys are prefetched while earlier ones are handled.
  absl::StatusOr<LookupResult> LookupPacked(std::string_view packed_keys,
                                            const std::optional<Digest>& fingerprint,
                                            const std::vector<uint32_t>& accept_codecs,
                                            bool lease, absl::Duration lease_ttl,
                                            absl::FunctionRef<void(const CommittedBlock&)> emit,
                                            bool accept_gpu = false);
  // The same, handing the found blocks to `emit_blocks` in batches (in order, under the
  // lock): one call per few dozen blocks instead of one per block. With a `sink`, blocks
  // stored in one piece in host memory may be answered by a record written there instead
  // (LookupRecordSink), in order with the blocks handed to emit_blocks.
  using BlockBatch = std::span<const CommittedBlock* const>;
  absl::StatusOr<LookupResult> LookupPackedBatches(
      std::string_view packed_keys, const std::optional<Digest>& fingerprint,
      const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
      absl::FunctionRef<void(BlockBatch)> emit_blocks, bool accept_gpu = false,
      LookupRecordSink* sink = nullptr);
  absl::StatusOr<LookupResult> Lookup(const std::vector<std::string>& keys,
                                      const std::optional<Digest>& fingerprint,
                                      const std::vector<uint32_t>& accept_codecs, bool lease,
                                      absl::Duration lease_ttl,
                                      absl::FunctionRef<void(const CommittedBlock&)> emit,
                                      bool accept_gpu = false) {
    return Lookup(std::vector<std::string_view>(keys.begin(), keys.end()), fingerprint,
                  accept_codecs, lease, lease_ttl, emit, accept_gpu);
  }

  // Reserves space for the blocks not committed or pending yet, evicting cold blocks when
  // needed. With `prefer_gpu` and a GPU tier (and no SSD write-through), the space is in the
  // GPU tier when it has or can make room for all of them (the results say on_gpu), else in
  // the host tier as without it; with admission (kSecondUse, kAuto) and a full tier, blocks
  // the rule in force keeps out (not asked for twice lately, in a request bringing more new
  // blocks than the rule lets in at once) and the rest of their chain in the request come
  // back kNotAdmitted. With an SSD tier
  // that cannot take demotions (full of protected blocks, or failing), a RESOURCE_EXHAUSTED
  // Allocate may already have evicted cold blocks; otherwise all or nothing: INVALID_ARGUMENT (bad spec, key, size, codec, duplicate keys,
  // lease), RESOURCE_EXHAUSTED (not enough evictable space; nothing is evicted then),
  // UNAVAILABLE (draining).
  absl::StatusOr<AllocateResult> Allocate(const ModelSpec& model,
                                          const std::vector<AllocateBlockSpec>& blocks,
                                          absl::Duration lease_ttl, bool prefer_gpu = false);

  // Writes `data` at `offset` of a pending block. NOT_FOUND (unknown allocation),
  // FAILED_PRECONDITION (lease expired, or the block's space is on the GPU: its writer
  // writes it in place), INVALID_ARGUMENT (key not in the allocation),
  // OUT_OF_RANGE (past the declared size; nothing written).
  absl::Status Write(uint64_t allocation_id, const std::string& key, uint64_t offset,
                     std::string_view data);

  // Verifies each block's bytes against its checksum and makes them visible, all or
  // nothing. NOT_FOUND, FAILED_PRECONDITION (lease expired, or a commit of the same block in
  // progress), INVALID_ARGUMENT (malformed, duplicate or foreign key), DATA_LOSS (bytes do
  // not match; the blocks stay pending so the writer can rewrite them).
  absl::StatusOr<uint32_t> Commit(uint64_t allocation_id,
                                  const std::vector<std::pair<std::string, uint64_t>>& blocks);

  // Frees pending blocks (all of the allocation's when `keys` is empty).
  absl::StatusOr<uint32_t> Abort(uint64_t allocation_id, const std::vector<std::string>& keys);

  // NOT_FOUND for an unknown or already expired lease.
  absl::Status ReleaseLease(uint64_t lease_id);

  // Pins or unpins committed blocks. INVALID_ARGUMENT / NOT_FOUND change nothing.
  absl::StatusOr<uint32_t> SetPinned(const std::vector<std::string>& keys, bool pinned);

  // Evicts the blocks and their committed descendants. NOT_FOUND (a key not committed),
  // FAILED_PRECONDITION (one of them is pinned or leased); nothing changes on error.
  absl::StatusOr<EvictResult> Evict(const std::vector<std::string>& keys);
  // Blocks a reader found not matching their checksums: each one's bytes are checked here
  // (its host and its GPU copy, whichever it has; a block only on SSD is checked when the
  // SSD tier reads it), outside the index lock under a reader hold. One that does not match
  // (in any copy) goes with its committed descendants, counted as
  // dropped for a checksum failure, pinned or not (a pin keeps data, and this data is
  // wrong); one that matches stays (the reader's copy went wrong, not the block). NOT_FOUND
  // (a key not committed), FAILED_PRECONDITION (a doomed block is leased by a reader or
  // moving between tiers); nothing changes on error.
  absl::StatusOr<EvictResult> DropCorrupt(const std::vector<std::string>& keys);

  // Holds a committed block against eviction (as a reader) until the returned hold is
  // destroyed; `info` runs under the lock. NOT_FOUND when the key is not committed,
  // INVALID_ARGUMENT for a malformed key.
  class ReadHold;
  absl::StatusOr<ReadHold> Hold(const std::string& key,
                                absl::FunctionRef<void(const CommittedBlock&)> info);

  // Copies a committed block's bytes out in chunks, holding it against eviction meanwhile.
  // `info` runs first under the lock; `chunk` runs outside it, and may return false to stop.
  absl::Status Read(const std::string& key, uint64_t chunk_bytes,
                    absl::FunctionRef<void(const CommittedBlock&)> info,
                    absl::FunctionRef<bool(uint64_t offset, std::string_view data)> chunk);

  // Explains each key. `token_query` (spec, salt, tokens) lets the index recognise the same
  // tokens cached under another model fingerprint; `emit_found` gives FOUND / UNREACHABLE
  // blocks' details under the lock.
  struct TokenQuery {
    ModelSpec model;
    std::string salt;
    std::vector<uint32_t> tokens;
  };
  absl::StatusOr<std::vector<InspectEntry>> Inspect(
      const std::vector<std::string>& keys, const std::optional<TokenQuery>& token_query,
      absl::FunctionRef<void(size_t index, const CommittedBlock&)> emit_found);

  // The sampled found keys of this thread's last Lookup with admission on, as handed to the
  // admission controller: (index in the request, the block's uses counting that Lookup).
  static std::vector<std::pair<size_t, uint32_t>> SampledOfLastLookupForTest();

  // Committed blocks in commit order, starting after commit sequence `after`; returns the
  // last sequence emitted (0 when none).
  uint64_t List(uint64_t after, size_t limit, absl::FunctionRef<void(const CommittedBlock&)> emit);

  // Reclaims expired write leases and read leases. Returns how many expired.
  size_t ExpireLeases();

  void SetDraining(bool draining);
  IndexStats Stats();

  // Verifies the invariants in the class comment; INTERNAL with the first violation.
  absl::Status CheckInvariants();

 private:
  struct PendingBlock {
    BlockKey key;
    std::optional<BlockKey> parent;
    uint64_t size = 0;
    uint32_t codec = kCodecRaw;
    PoolAllocation space;
    bool on_gpu = false;  // `space` is in the GPU tier.
    uint64_t allocation_id = 0;
    uint32_t writers = 0;      // In-flight Write / Commit checksums.
    bool committing = false;
    bool doomed = false;       // Aborted or expired while writers > 0: free when they finish.
  };
  struct Allocation {
    Digest fingerprint;
    absl::Time expires;
    absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> keys;
    // Committed parents of the blocks being written, held (as readers) until the
    // allocation ends so that the chain they extend stays reachable.
    std::vector<BlockKey> held_parents;
  };
  struct Lease {
    absl::Time expires;
    std::vector<BlockKey> keys;
  };
  struct EvictedRecord {
    absl::Time when;
    std::string reason;
    bool checksum_failure = false;
    uint64_t seq = 0;
  };
  // A block being demoted: where its SSD copy goes.
  struct Demotion {
    BlockKey key;
    SsdLocation location;
  };

  absl::Status CheckLeaseTtl(absl::Duration ttl, const char* what) const;
  // The allocation, or NOT_FOUND / FAILED_PRECONDITION (expired) for the caller.
  absl::StatusOr<Allocation*> FindAllocation(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireAllocation(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropPending(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishAllocationIfEmpty(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases the allocation's held parents and forgets it.
  void EndAllocation(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t FingerprintId(const Digest& fingerprint) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets host_offset from `space` (call after every change of a block's host copy).
  static void SyncHostOffset(CommittedBlock& block);
  // admission_->Admit(key, new_blocks) (admission_ must be set).
  bool AdmitNew(const BlockKey& key, uint64_t new_blocks) ABSL_LOCKS_EXCLUDED(admission_mu_);
  // What AnswerRun reads and updates of LookupWalk's state.
  struct RunWalk {
    const char* packed;       // The request's keys.
    size_t n;                 // How many.
    size_t run_end;           // The run's slots hold keys up to here.
    uint64_t state_mask;      // What the state word must show (LookupWalk).
    uint64_t state_want;
    uint64_t accept_gpu;      // 1: count blocks also in the GPU tier as GPU hits.
    absl::Time now;
    bool count_uses;
    uint64_t uses_epoch;
    AdmissionController::SampledUse* sampled;
    size_t sampled_count;
    const CommittedBlock** batch;  // kLookupBatch entries.
    size_t batched;
    absl::FunctionRef<void(BlockBatch)> emit_blocks;
    uint64_t gpu_hits;
    LookupRecordSink* sink;  // Null: every block goes to emit_blocks.
  };
  static constexpr size_t kLookupBatch = 32;
  // Lookup's common case: answers keys [i, stop) of a slab run, key i in slot `block` and
  // each next key in the next slot, while each is the key asked for, its state word passes
  // and it is in no eviction order (no Touch needed); stops at the first that is not, and
  // returns its place. Every key up to stop + the walk's lookahead lies in the run. With a
  // sink it writes the blocks' records there (and stops at a block stored in pieces, or
  // when the sink is full), with the walk's batch empty, and leaves the blocks' use
  // statistics pending in their slab (CommittedBlock); without one it writes them.
  size_t AnswerRun(RunWalk& walk, size_t i, size_t stop, CommittedBlock* block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The found keys AdmissionController::Sampled picks: uses[0, count). `uses` only grows
  // (every found key writes a slot; a sampled one keeps it).
  struct SampledFound {
    std::vector<AdmissionController::SampledUse> uses;
    size_t count = 0;
  };
  // This thread's, reused by every Lookup it makes.
  static SampledFound& ThreadSampledFound();
  // LookupPacked without the admission controller's counting; lists the found keys that
  // AdmissionController::Sampled picks in `sampled_found`, with their blocks' pending uses
  // (when admission is on).
  absl::StatusOr<LookupResult> LookupWalk(std::string_view packed_keys,
                                          const std::optional<Digest>& fingerprint,
                                          const std::vector<uint32_t>& accept_codecs, bool lease,
                                          absl::Duration lease_ttl,
                                          absl::FunctionRef<void(BlockBatch)> emit_blocks,
                                          bool accept_gpu, SampledFound* sampled_found,
                                          LookupRecordSink* sink)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Take a block out of / put it back into the eviction orders its state qualifies it for.
  // Every change of touch_seq, children, host_children, in_host or ssd happens between the
  // two (a block that qualifies for no order, e.g. a host-only block inside a chain, needs
  // neither: Lookup's recency update relies on this).
  void Unlist(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Relist(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  CommittedBlock* FindParent(const CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Host copy changes, keeping the parent's host_children and the byte counts exact.
  void DropHostCopy(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetHostCopy(CommittedBlock& block, PoolAllocation space) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a block's SSD copy from the catalog and the tier (the block stays if in host).
  void DropSsdCopy(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SsdRecord RecordOf(const CommittedBlock& block, const SsdLocation& location) const;
  // SSD space for `size` bytes, evicting cold SSD copies when needed (with
  // `drop_host_copies_ssd` false, only of blocks that are on SSD alone).
  absl::StatusOr<SsdLocation> ReserveSsd(uint64_t size, bool drop_host_copies_ssd = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Admit(const CommittedBlock& block) const;
  bool AllHostChildrenMoving(const CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees `bytes` of host pool: drops host copies that have SSD copies, demotes admitted
  // blocks (releasing the lock while they are written), evicts the rest, coldest first.
  // False when what may leave does not free enough.
  bool MakeHostRoom(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunDemotions(const std::vector<Demotion>& demotions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees `bytes` of the GPU tier: drops GPU copies of blocks that have another copy,
  // demotes GPU-only blocks to host memory (releasing the lock for the copy), and evicts a
  // GPU-only leaf that host memory cannot take; coldest first, never a protected or moving
  // block. False when that does not free enough.
  bool MakeGpuRoom(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies GPU-only block `key` into host memory (making room there) and drops its GPU copy
  // unless it is protected. False when host memory had no room or the copy failed.
  bool DemoteFromGpu(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropGpuCopy(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Without an SSD tier: evicts the descendants of `block` when all of them are in GPU
  // memory only and free to go, so that `block` becomes an evictable leaf. False (nothing
  // changed) otherwise.
  bool EvictGpuOnlySubtree(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Brings blocks without a host copy (a chain, in order) into host memory from their GPU
  // copy or else their SSD copy, releasing the lock for the copies; stops at the first that
  // cannot come. Blocks must exist and not be moving.
  void Promote(const std::vector<BlockKey>& keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits (releasing the lock) until no move of `key` is running.
  void WaitForMove(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a block whose SSD copy failed verification, wherever it sits in its chain.
  void RemoveCorrupt(CommittedBlock& block, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT when committing `keys` (pending) would close a cycle of parents.
  absl::Status CheckNoCycle(const std::vector<BlockKey>& keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddReader(CommittedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveReader(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsProtected(const CommittedBlock& block) const { return block.pinned || block.readers > 0; }
  // Call after a block's pin or readers changed from `was_protected`: keeps `kept` counts
  // and kept_bytes_ exact along its chain (amortised O(1) for prefix leases).
  void UpdateProtection(CommittedBlock& block, bool was_protected)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdjustKept(CommittedBlock* block, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a committed block from every tier (a leaf, unless its SSD copy is corrupt).
  void RemoveBlock(CommittedBlock& block, const std::string& reason, bool checksum_failure)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberEvicted(const BlockKey& key, const std::string& reason,
                       bool checksum_failure = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CollectSubtree(const BlockKey& key, std::vector<BlockKey>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(EventType type, const CommittedBlock& block, const std::string& reason,
               uint32_t tier = kTierHost)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const BlockIndexOptions options_;
  HostPool* const pool_;
  Clock* const clock_;
  EventLog* const events_;
  SsdTier* const ssd_;
  DeviceTier* const gpu_;

  // Admission when the host tier is full (null with kAll); the pointer is constant after
  // construction, the controller guarded by admission_mu_. Lookup counts its keys there
  // without holding mu_ (so that one caller's counting overlaps another's walk); a holder
  // of mu_ may take admission_mu_, never the other way round.
  std::unique_ptr<AdmissionController> admission_;
  absl::Mutex admission_mu_ ABSL_ACQUIRED_AFTER(mu_);

  absl::Mutex mu_;
  // Signalled whenever a demotion or promotion finishes.
  absl::CondVar moved_;
  // Committed blocks; the key sits inline in the table (a probe touches no block), the block
  // behind a stable pointer (the eviction orders point at blocks).
  absl::flat_hash_map<BlockKey, CommittedBlockPtr, BlockKeyHash, BlockKeyEq> blocks_
      ABSL_GUARDED_BY(mu_);
  // The same blocks, for Lookup's prefetched probes (cache_manager/block_probe_table.h).
  BlockProbeTable<CommittedBlock> probe_ ABSL_GUARDED_BY(mu_);
  // Parent key -> committed children, whether or not the parent itself is committed.
  absl::flat_hash_map<BlockKey, std::vector<BlockKey>, BlockKeyHash, BlockKeyEq> children_
      ABSL_GUARDED_BY(mu_);
  // Committed leaves by touch_seq: the eviction order.
  absl::btree_map<uint64_t, CommittedBlock*> leaves_ ABSL_GUARDED_BY(mu_);
  // Host-resident blocks without host-resident children: the host tier's eviction order.
  absl::btree_map<uint64_t, CommittedBlock*> host_leaves_ ABSL_GUARDED_BY(mu_);
  // SSD-resident blocks that are in host or GPU memory too or are leaves: the SSD order.
  absl::btree_map<uint64_t, CommittedBlock*> ssd_order_ ABSL_GUARDED_BY(mu_);
  // GPU-resident blocks by touch_seq: the GPU tier's order (demotion keeps chains whole,
  // so it needs no prefix order).
  absl::btree_map<uint64_t, CommittedBlock*> gpu_order_ ABSL_GUARDED_BY(mu_);
  absl::btree_map<uint64_t, CommittedBlock*> by_commit_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, PendingBlock, BlockKeyHash, BlockKeyEq> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Allocation> allocations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, absl::Time> expired_allocations_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> expired_order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  // Parent holds of Allocate calls that are making room (and may release the lock).
  std::vector<std::vector<BlockKey>*> in_flight_holds_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, EvictedRecord, BlockKeyHash, BlockKeyEq> evicted_ ABSL_GUARDED_BY(mu_);
  // Remembered evictions, oldest first, with the sequence number of their record.
  std::deque<std::pair<BlockKey, uint64_t>> evicted_order_ ABSL_GUARDED_BY(mu_);
  // Numbers of the fingerprints of committed blocks (CommittedBlock::fingerprint_id), so
  // that Lookup compares four bytes per block instead of 32. Never shrinks: one entry per
  // model a node ever stored.
  absl::flat_hash_map<Digest, uint32_t, BlockKeyHash, BlockKeyEq> fingerprint_ids_
      ABSL_GUARDED_BY(mu_);
  // Specs seen in Allocate, by fingerprint, to explain fingerprint mismatches (bounded).
  absl::flat_hash_map<Digest, ModelSpec, BlockKeyHash, BlockKeyEq> known_models_ ABSL_GUARDED_BY(mu_);
  uint64_t next_allocation_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_lease_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t committed_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Pool bytes reserved by committed blocks, and by those of them that are kept.
  uint64_t committed_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t kept_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Host space of blocks that must stay in host memory themselves (pinned, or with readers):
  // with an SSD tier, everything else can be demoted.
  uint64_t protected_host_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pinned_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ssd_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ssd_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t host_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t host_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t gpu_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t gpu_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  IndexStats counters_ ABSL_GUARDED_BY(mu_);
};

// A committed block held against eviction while its bytes are read from the pool.
// Move-only; the index must outlive it.
class BlockIndex::ReadHold {
 public:
  ReadHold() = default;
  ReadHold(ReadHold&& other) noexcept { *this = std::move(other); }
  ReadHold& operator=(ReadHold&& other) noexcept {
    Release();
    index_ = std::exchange(other.index_, nullptr);
    key_ = other.key_;
    space_ = std::move(other.space_);
    return *this;
  }
  ReadHold(const ReadHold&) = delete;
  ReadHold& operator=(const ReadHold&) = delete;
  ~ReadHold() { Release(); }

  // Where the block's payload lies in the pool.
  const PoolAllocation& space() const { return space_; }

 private:
  friend class BlockIndex;
  void Release();

  BlockIndex* index_ = nullptr;
  BlockKey key_{};
  PoolAllocation space_;
};

std::string_view InspectStateName(InspectState state);

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_BLOCK_INDEX_H_
