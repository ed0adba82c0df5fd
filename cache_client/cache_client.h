// The client side of a cache manager: what prefill and decode workers (and tools) use to
// find, fetch and store KV blocks. Control calls go over gRPC; block bytes move over the
// node's UCX data plane (DataPlane gives its address and remote key; one-sided or
// engine-served transfers, see transfer/engine.h), or over the gRPC Get/Put streams when
// the node has no data plane or the client is told not to use it.
//
// Every fetched block is verified against the checksum the cache reported: a block that
// does not match is never returned, it ends the prefix and is counted as a failure.
//
// Thread-safe: calls may run concurrently from several threads.
#ifndef TIERKV_CACHE_CLIENT_CACHE_CLIENT_H_
#define TIERKV_CACHE_CLIENT_CACHE_CLIENT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/block_key.h"

namespace tierkv {

namespace v1 {
class ModelSpec;
}

// Fills a proto ModelSpec from a core one.
void ModelSpecToProto(const ModelSpec& spec, v1::ModelSpec* proto);

struct CacheClientOptions {
  // host:port of the cache manager.
  std::string address = "127.0.0.1:7471";
  // Deadline of each control call; data streams get `timeout` per block.
  absl::Duration timeout = absl::Seconds(10);
  // Write lease asked for while storing.
  absl::Duration write_lease = absl::Seconds(30);
  // Move block bytes over UCX when the node offers a data plane.
  bool use_data_plane = true;
  // UCX transports of the client's engine ("tcp", "shm", ...); empty: UCX_TLS or UCX's
  // default.
  std::string transports;
  // Test hook: flip one byte of the fetched block with this index (within a FetchPrefix
  // call) as if it had been corrupted in flight; -1 (default) never.
  int fault_corrupt_block = -1;
};

// How the client moves block bytes (decided at the first call that needs it).
enum class DataPath { kUndecided, kUcx, kGrpcStreams };

struct FetchedPrefix {
  // Payloads of the verified prefix: blocks[i] belongs to keys[i].
  std::vector<std::string> blocks;
  // Blocks the cache reported but whose bytes failed the checksum (or vanished) in transfer.
  uint32_t checksum_failures = 0;
  // Time in the Lookup call and in moving and checking the bytes.
  absl::Duration lookup_time;
  absl::Duration fetch_time;
};

struct InPlacePrefix {
  uint32_t found = 0;  // Blocks Lookup reported.
  uint32_t used = 0;   // Leading blocks `use` took.
  // The read lease was not confirmed when released (it expired, or the release failed): the
  // memory may have changed while `use` read it, so what it took must be discarded.
  bool lease_lost = false;
  absl::Duration lookup_time;
  absl::Duration use_time;  // Time inside `use`.
};

struct StoreResult {
  uint32_t stored = 0;          // Written and committed by this call.
  uint32_t already_cached = 0;  // Committed before; nothing written.
  uint32_t in_progress = 0;     // Another writer holds them; skipped.
  uint32_t not_admitted = 0;    // The node's admission policy kept them out; skipped.
};

class CacheClient {
 public:
  // Creates a client for `options.address`; connects lazily. INVALID_ARGUMENT for an empty
  // address.
  static absl::StatusOr<std::unique_ptr<CacheClient>> Create(const CacheClientOptions& options);
  virtual ~CacheClient() = default;

  // Looks up `keys` (a prompt's chain under `spec`) and fetches the longest committed,
  // intact prefix, holding a read lease meanwhile. UNAVAILABLE / DEADLINE_EXCEEDED when
  // the cache manager cannot be reached; a block that goes missing or fails its checksum
  // ends the prefix (no error).
  virtual absl::StatusOr<FetchedPrefix> FetchPrefix(const ModelSpec& spec,
                                                    std::span<const BlockKey> keys) = 0;

  // The cache manager's host tier lies in this process at `region` (tierkv up runs the
  // workers beside it): UsePrefixInPlace may read blocks there without copying them. Call
  // once, before other calls; the region must outlive the client.
  virtual void SetLocalHostTier(std::span<const uint8_t> region) = 0;
  virtual bool HasLocalHostTier() const = 0;
  // The cache manager's GPU tier lies in this process at `region` (device memory on the
  // GPU the caller computes on): with a local host tier as well, UsePrefixInPlace asks for
  // GPU locations and StoreInPlace for GPU space. Call once, before other calls; the region
  // must outlive the client.
  virtual void SetLocalGpuTier(std::span<uint8_t> region) = 0;
  virtual bool HasLocalGpuTier() const = 0;

  // Looks up `keys` with a read lease and hands `use` the found prefix where it lies in the
  // local host tier, or in the local GPU tier where one is set and the block has a GPU copy
  // (on_gpu[i] is 1 then, and the pieces are device memory): blocks[i] is block i's payload
  // in pieces, checksums[i] the checksum the cache reported for it. `use` must check checksums before trusting a block and returns
  // how many leading blocks it took; the lease holds until it returns, and a lease that was
  // lost meanwhile is reported (lease_lost). `use` is not called when the cache gave no
  // lease, or one about to expire. A block outside the local tier (or of the wrong size)
  // ends the prefix before it. FAILED_PRECONDITION without a local host tier (use
  // FetchPrefix); INTERNAL for a malformed Lookup response; errors of Lookup as FetchPrefix.
  using InPlaceUse = absl::FunctionRef<size_t(std::span<const std::span<const PayloadPiece>>,
                                              std::span<const uint64_t>,
                                              std::span<const uint8_t> on_gpu)>;
  virtual absl::StatusOr<InPlacePrefix> UsePrefixInPlace(const ModelSpec& spec,
                                                         std::span<const BlockKey> keys,
                                                         InPlaceUse use) = 0;

  // A block this client read did not match its checksum (the reader has stopped using it):
  // asks the cache manager to drop it, so that later Lookups miss it and a recomputed block
  // can take its place (Store skips blocks that are still cached). The cache manager checks
  // the bytes itself and keeps a block that matches. Returns how many blocks went (the block
  // and its descendants; 0 when it matched). Errors of the Evict call (FAILED_PRECONDITION
  // while another reader holds it: a later reader reports it again).
  virtual absl::StatusOr<uint32_t> ReportCorrupt(const BlockKey& key) = 0;

  // Number of blocks of `keys` a Lookup finds, without fetching.
  virtual absl::StatusOr<size_t> CountCached(const ModelSpec& spec,
                                             std::span<const BlockKey> keys) = 0;

  // Stores payloads[i] as block keys[first + i] (its parent is keys[first + i - 1]): Allocate,
  // write, Commit with checksums. Blocks already cached or being written elsewhere are
  // skipped. Each payload must be spec.RawBlockBytes() long (raw codec). Errors of the
  // cache manager are returned as they are (RESOURCE_EXHAUSTED when it is full of pinned or
  // leased blocks, ...); nothing half-written ever becomes visible.
  virtual absl::StatusOr<StoreResult> Store(const ModelSpec& spec, std::span<const BlockKey> keys,
                                            size_t first,
                                            std::span<const std::string> payloads) = 0;

  // Store into the local host tier (or the local GPU tier, where one is set and the cache
  // manager has room there: targets are device memory then) without copies: Allocate
  // keys[first, first + count),
  // then `write` fills the space reserved for the blocks to write (indices[j] is such a
  // block's position counted from `first`; targets[j] its space in pieces) and sets
  // checksums[j] to each payload's BlockChecksum, then Commit (which checks them). Blocks
  // already cached, in progress elsewhere or not admitted are skipped and counted. An error
  // of `write` aborts the allocation and is returned. FAILED_PRECONDITION without a local
  // host tier; otherwise the errors of Store.
  using InPlaceWrite = absl::FunctionRef<absl::Status(
      std::span<const size_t>, std::span<const std::span<const PayloadTarget>>,
      std::span<uint64_t>)>;
  virtual absl::StatusOr<StoreResult> StoreInPlace(const ModelSpec& spec,
                                                   std::span<const BlockKey> keys, size_t first,
                                                   size_t count, InPlaceWrite write) = 0;

  // The data path in use (kUndecided before the first fetch or store).
  virtual DataPath data_path() const = 0;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_CLIENT_CACHE_CLIENT_H_
