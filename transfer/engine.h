// The data plane: moves block bytes between processes over UCX (ucp), without the bytes
// passing through gRPC.
//
// One TransferEngine per process owns a ucp context, one worker and the progress thread
// that drives it. A process that owns bytes takes them from the engine (Allocate) or
// registers its own (Register), and ships the region's remote key and its worker address
// to peers through the control plane; a peer connects to that address (Connect) and reads
// (Get) or writes (Put) ranges of the region, many blocks at a time, with a status per
// block.
//
//   auto engine = TransferEngine::Create({}).value();
//   auto region = engine->Allocate(pool_bytes).value();          // owner
//   ... send engine->worker_address() and region->remote_key() to the reader ...
//   auto ep = engine->Connect(owner_address).value();           // reader
//   std::vector<TransferOp> ops = {{key, remote_addr, buffer, block_bytes, checksum}, ...};
//   std::vector<absl::Status> statuses = engine->Get(*ep, ops);
//
// Two protocols sit under one API, chosen per endpoint (Endpoint::path()):
// - one-sided: ucp_get/ucp_put against the owner's registered memory, where the transport
//   moves bytes without the owner's CPU (RDMA verbs, cma/knem/xpmem, mapped shared memory);
// - two-sided: where UCX would only emulate RMA over messages (tcp), the owner's engine
//   serves each request itself: the reader posts a tagged receive into its buffer and asks
//   the owner, which checks the range and tag-sends the bytes (GET); the writer sends the
//   bytes as an active message by rendezvous, which the owner receives straight into the
//   target once it has checked the range (PUT). On this machine's UCX 1.13 over tcp the
//   two-sided path moves 2 MiB blocks 7-23% faster than UCX's emulated RMA does even with
//   the engine's tcp settings (untuned, ucx_perftest's ucp_get runs at a third of tag_bw),
//   and it lets the owner check every range it serves.
// PathPolicy::kAuto picks one-sided exactly when every lane UCX chose for RMA bandwidth on
// the endpoint is such a transport (ucp_ep_print_info lists the lanes); the policy can
// force either path (tests run both paths on both transports).
//
// GPU memory. Where UCX has no CUDA transports (Debian's 1.13), an op whose `local` is device
// memory cannot be handed to UCX. An engine created with EngineOptions::device_memory (a
// DeviceMemory, transfer/device_memory.h; transfer/cuda_device_memory.h makes the CUDA one)
// splits every batch into host ops, which take the paths above unchanged, and device ops,
// which it stages through pinned host bounce buffers (EngineOptions::bounce_bytes, split in
// up to four slots and registered once): a device GET lands in a slot, its checksum is
// verified there, and only bytes that passed are copied to the device; a device PUT is
// copied from the device into a slot and sent from there. The slots form a ring, so the
// device copies of one slot overlap the network transfers of the others. Ops larger than a
// slot move in slot-sized pieces (a checksum then covers all of them: earlier pieces of a
// GET that ends in DATA_LOSS may already be in device memory); several small ops share a
// slot, and an op that fits in a slot is never split. Device ops of a batch run after those
// of batches submitted before it: one staging thread drives the ring for every caller.
// Without device_memory (null, the default) device pointers are not recognised and are
// handed to UCX as host memory, as before.
//
// Transports come from UCX: EngineOptions::transports if set, else the UCX_TLS variable,
// else UCX's default. Every engine answers the owner side of the two-sided protocol
// whatever its own policy.
//
// Thread safety: every method of TransferEngine may be called from any thread. Completion
// callbacks of the async forms run on the engine's progress thread (or, for a batch with
// device ops, on its staging thread): they must not block. The synchronous methods (Get,
// Put, Register, Allocate, Connect) called on the progress thread, and Get and Put called
// on the staging thread, fail with FAILED_PRECONDITION instead of deadlocking, and a
// MemoryRegion destroyed on the progress thread is unregistered without waiting for the
// transfers in flight on it. Endpoint and MemoryRegion objects are immutable and
// thread-safe; they must not outlive the engine that made them. The engine must not be
// destroyed from one of its own callbacks.
//
// Device ops run one batch at a time on the staging thread, in submission order: a batch
// waiting on a dead peer (up to op_timeout per slot-sized piece) delays the device ops of
// later batches, so op_timeout bounds each piece's transfer, not a device op's whole wait.
#ifndef TIERKV_TRANSFER_ENGINE_H_
#define TIERKV_TRANSFER_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/device_memory.h"

namespace tierkv::transfer {

// How an endpoint moves bytes (see the file comment).
enum class TransferPath { kOneSided, kTwoSided };

// Which path new endpoints take.
enum class PathPolicy {
  kAuto,       // One-sided where the transport does RMA natively, else two-sided.
  kOneSided,   // Always one-sided (over tcp, UCX emulates it: slow, but it works).
  kTwoSided,   // Always two-sided.
};

struct EngineOptions {
  // For logs and error messages.
  std::string name = "tierkv";
  // UCX transports, as UCX_TLS takes them ("tcp", "shm", "rc,sm", ...). Empty: the UCX_TLS
  // environment variable, or UCX's default when that is unset too. A limit of UCX 1.13
  // (Debian 12): its cross-memory-attach transport (cma, included in "shm") aborts the
  // process when a peer it is reading from dies mid-transfer. The one-sided path over shm
  // maps the peer's segments and does not use it; the two-sided path's rendezvous reads
  // can. Where peers may die during two-sided transfers over shared memory, name the
  // transports without cma ("posix,sysv,self").
  std::string transports;
  // UCX_NET_DEVICES ("lo", "mlx5_0:1", ...). Empty: the environment or UCX's default.
  std::string net_devices;
  PathPolicy path = PathPolicy::kAuto;
  // An operation that has not completed this long after it was submitted completes with
  // DEADLINE_EXCEEDED, and its endpoint is closed (see TransferEngine::Get). This is what
  // bounds the wait for a peer that vanished where the transport cannot tell (shared
  // memory); over tcp a dead peer is usually detected sooner (UNAVAILABLE).
  absl::Duration op_timeout = absl::Seconds(30);
  // Create endpoints with UCX peer error handling where a transport supports it (tcp,
  // RDMA; shared memory never does), so that a dead peer fails the operations in flight at
  // once (UNAVAILABLE). UCX 1.13 then offers no zero-copy rendezvous lane over tcp; with
  // the engine's tcp segment sizes that costs nothing on loopback (bench/RESULTS.md), but a
  // fabric where zero copy matters may prefer false. When false, a dead peer may be noticed
  // only at op_timeout (DEADLINE_EXCEEDED), and UCX logs the errors it meets on the way.
  bool detect_peer_failure = true;
  // How long the progress thread keeps polling after its last event before it sleeps on
  // the worker's event fd. It polls without sleeping while any operation is in flight.
  absl::Duration idle_spin = absl::Microseconds(100);
  // Fault injection for tests, off (0) by default. When n > 0, every n-th block whose
  // bytes this engine moves is corrupted in flight (one byte flipped in a copy; the source
  // memory is never changed): as the owner serving a two-sided GET (it sends a corrupted
  // copy), as a writer (it PUTs a corrupted copy), and as a one-sided reader (the byte is
  // flipped where the bytes landed). When 0, the TIERKV_TRANSFER_FAULT_CORRUPT_EVERY_N
  // environment variable is read instead.
  uint64_t fault_corrupt_every_n = 0;
  // GPU memory (see the file comment). Null: ops' local buffers are all host memory. The
  // engine keeps a reference; the object must be usable from the engine's threads.
  std::shared_ptr<DeviceMemory> device_memory;
  // With device_memory: the pinned host memory for bounce buffers, split in up to four
  // equal slots (fewer when that would make slots below 4 KiB). At least 8 KiB. The device
  // memory must offer a copy lane per slot (Create: INVALID_ARGUMENT otherwise).
  size_t bounce_bytes = 64 << 20;
};

// A range of this process's memory registered with UCX (Register) or allocated by it
// (Allocate). Destroying it unregisters the range (and frees it when allocated): from then on peers' requests for it are refused (OUT_OF_RANGE), and the
// destructor waits (up to op_timeout) for the two-sided transfers this engine is serving
// from or into it to finish, so that once it returns the engine no longer touches the
// memory. Peers holding the key may still reach it one-sided until then: callers must
// stop peers first (the cache manager's leases), as with any RDMA registration.
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual void* base() const = 0;
  virtual size_t length() const = 0;
  // The bytes a peer needs to address this region in TransferOp::remote_key: its base,
  // length, an id, and UCX's packed rkey. Opaque to callers; ship them as they are.
  virtual const std::string& remote_key() const = 0;
};

// A connection to one peer engine. Obtained from Connect, which returns the same endpoint
// for the same address while it is healthy.
class Endpoint {
 public:
  virtual ~Endpoint() = default;
  virtual const std::string& peer_address() const = 0;
  virtual TransferPath path() const = 0;
  // The UCX lanes of the endpoint as "transport/device" names, e.g. "cma/memory" or
  // "tcp/lo", for logs and tests.
  virtual const std::string& transports() const = 0;
  // OK while usable; otherwise the error that closed it (UNAVAILABLE, DEADLINE_EXCEEDED).
  // Operations on a closed endpoint fail at once with UNAVAILABLE; Connect again for a new
  // one.
  virtual absl::Status health() const = 0;
};

// One block to move. For GET the bytes go from [remote_addr, remote_addr + length) of the
// peer's region named by remote_key to `local`; for PUT the other way.
struct TransferOp {
  std::string_view remote_key;  // MemoryRegion::remote_key() of the peer; copied at submit.
  uint64_t remote_addr = 0;     // Address in the peer's memory (inside that region).
  void* local = nullptr;        // This process's buffer; any memory, registered or not.
  size_t length = 0;            // Bytes, > 0.
  // GET only: the BlockChecksum (XXH3-64) the bytes must have. When set, a block whose
  // landed bytes differ completes with DATA_LOSS.
  std::optional<uint64_t> checksum;
};

// Counters of one engine since it was created.
struct EngineStats {
  uint64_t gets_served = 0;        // Two-sided GET requests served as the owner.
  uint64_t puts_served = 0;        // Two-sided PUT requests served as the owner.
  uint64_t requests_refused = 0;   // Two-sided requests refused (range outside any region).
  uint64_t bytes_served = 0;       // Bytes sent or received as the owner.
  uint64_t blocks_corrupted = 0;   // Fault injection: blocks this engine corrupted.
};

// Called once with one status per op, in the order of the ops.
using BatchCallback = absl::AnyInvocable<void(std::vector<absl::Status>) &&>;

class TransferEngine {
 public:
  // Creates the ucp context and worker and starts the progress thread (and, with
  // device_memory, allocates and registers the bounce buffers and starts the staging
  // thread). INVALID_ARGUMENT for bad options; UNAVAILABLE (or the converted UCX error) when
  // UCX cannot start with the requested transports; DeviceMemory::AllocatePinned's error
  // when the bounce buffers cannot be had.
  static absl::StatusOr<std::unique_ptr<TransferEngine>> Create(EngineOptions options);

  // Stops the progress thread. Operations still in flight complete with CANCELLED first
  // (their callbacks run); endpoints are closed. Regions and endpoints must be gone or no
  // longer used.
  virtual ~TransferEngine() = default;

  // This engine's worker address, to ship to peers for Connect.
  virtual const std::string& worker_address() const = 0;

  // Registers [base, base + length) for peers to GET from and PUT into. The memory must
  // stay valid until the returned region is destroyed. INVALID_ARGUMENT for a null base,
  // zero length, or a range overlapping a region already registered here.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> Register(void* base, size_t length) = 0;

  // Allocates `length` bytes through UCX and registers them. Over shared memory the bytes
  // live in a segment that peers on this host map when they unpack the key, so their
  // one-sided transfers become plain memory copies in their own process (a registered
  // ordinary buffer is reached through cma, one system call per block); elsewhere it is
  // ordinary memory. Owners that serve many blocks (the cache manager's host pool) should
  // take their memory from here. The memory is freed when the region is destroyed.
  // INVALID_ARGUMENT for zero length; RESOURCE_EXHAUSTED when UCX cannot allocate it.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> Allocate(size_t length) = 0;

  // Connects to the engine whose worker_address() is `peer_address` (cached per address
  // while healthy). INVALID_ARGUMENT for bytes that are not a worker address; UNAVAILABLE
  // when UCX finds no transport to reach the peer. Connecting does not wait for the peer:
  // an unreachable peer shows as failed operations.
  virtual absl::StatusOr<std::shared_ptr<Endpoint>> Connect(std::string_view peer_address) = 0;

  // Reads every op's range from the peer into op.local, all ops in flight at once, and
  // returns when all have completed, one status per op in op order:
  //   OK                 the bytes are in op.local (and match op.checksum if set).
  //   INVALID_ARGUMENT   the op is malformed (null local, zero length, remote_key not a
  //                      remote key) or `ep` is not an endpoint of this engine.
  //   OUT_OF_RANGE       the range is not inside the region the key names, or the owner has
  //                      no registered region covering it (any more). Nothing was moved.
  //   DATA_LOSS          the bytes landed but do not match op.checksum.
  //   UNAVAILABLE        the endpoint failed or was closed (peer gone, connection reset).
  //   DEADLINE_EXCEEDED  the op did not complete within op_timeout; the endpoint is then
  //                      closed and the other ops still in flight on it fail UNAVAILABLE.
  //   CANCELLED          the engine is shutting down.
  // When an op fails, op.local may hold any bytes. op.local must not be read or written by
  // anyone else until the call returns; once it returns the engine no longer touches it.
  // Device ops (EngineOptions::device_memory) have the same statuses; their checksum is
  // verified on the bounce buffer, so a block that fails it never reaches device memory
  // (an op larger than a slot: its last piece never does). An op larger than a slot that
  // fails OUT_OF_RANGE at the owner (two-sided: the region went away) may have moved some
  // pieces. A device copy that fails reports the DeviceMemory's error (INTERNAL from the
  // CUDA one).
  virtual std::vector<absl::Status> Get(Endpoint& ep, std::span<const TransferOp> ops) = 0;

  // Writes every op's op.local bytes into the peer's range; OK means the bytes have
  // landed in the peer's memory (visible to the peer's reads). Errors as for Get, without
  // DATA_LOSS (checksum is ignored); on an error the peer's range may hold any bytes.
  // op.local must stay unchanged until the call returns. Device memory is read on the
  // DeviceMemory's own streams: finish (synchronize) the work that produces it first.
  virtual std::vector<absl::Status> Put(Endpoint& ep, std::span<const TransferOp> ops) = 0;

  // Asynchronous forms: return at once; `done` runs on the progress thread when every op
  // has completed, with the statuses Get/Put would return (Get's checksums are verified on
  // the progress thread). For a batch with device ops, `done` runs on the staging thread
  // instead (where device ops' checksums are verified), once the host ops have completed
  // too. The buffers must stay valid until `done` runs; the ops themselves (and their
  // remote_key bytes) are copied before these return.
  virtual void GetAsync(std::shared_ptr<Endpoint> ep, std::span<const TransferOp> ops,
                        BatchCallback done) = 0;
  virtual void PutAsync(std::shared_ptr<Endpoint> ep, std::span<const TransferOp> ops,
                        BatchCallback done) = 0;

  virtual EngineStats stats() const = 0;
};

}  // namespace tierkv::transfer

#endif  // TIERKV_TRANSFER_ENGINE_H_
