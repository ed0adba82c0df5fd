// Device ops staged through pinned bounce buffers.
//
// A batch is split at submit: its host ops go to the wrapped engine at once, as one batch;
// its device ops become a job for the staging thread, which runs the jobs one at a time
// (the bounce buffers are one ring for the whole engine). A batch completes when both parts
// have: whichever part finishes last delivers it, and when that is the host part (on the
// wrapped engine's progress thread) it queues the delivery at the front of the staging
// thread's jobs instead, so that `done` always runs on the staging thread and never blocks
// the progress thread.
//
// The ring. The device ops of a job are cut into pieces laid out in "fills": a fill is what
// one slot holds at once, consecutive pieces in op order, each at most a slot long (an op
// larger than a slot spans several fills; several small ops share one; an op that fits in
// a slot is never split). Fill f uses slot
// f % slots. Every fill's network transfer is one batch of the wrapped engine (one op per
// piece); every piece's device copy goes on the lane of its slot.
// - GET: up to `slots` - 1 fills are in flight on the network. The oldest is handled when
//   it lands: each piece is checked (the op's checksum, over all its pieces in order, is
//   compared once the last piece landed) and copied to the device asynchronously; the next
//   fill is posted into the slot handled one step before, once that slot's copies are done.
//   So one slot's copy runs while the other slots' transfers are on the network.
// - PUT: fills are copied from the device into free slots asynchronously (up to `slots`
//   ahead); a copied fill is posted once its lane is done, the newest one only when nothing
//   older is left to collect (so that its copy runs while the network completes the
//   others); a slot is free again when its fill's network transfer completed.
// Invariants: a slot is written by the network only after the copies out of it finished
// (GET: WaitLane before posting) and by a copy only after the network transfer out of it
// completed (PUT: copied - completed < slots). A piece of an op that has already failed is
// not moved any more. Every posted network batch completes before the job ends (the
// wrapped engine bounds each by op_timeout), so no transfer refers to a slot after that.
#include "transfer/internal/staging_engine.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/block_key.h"
#include "transfer/device_memory.h"
#include "transfer/internal/wire.h"

namespace tierkv::transfer::internal {
namespace {

constexpr int kMaxSlots = 4;
constexpr size_t kMinSlotBytes = 4096;
// Pieces sharing a slot start at multiples of this (DMA engines like aligned buffers).
constexpr size_t kPieceAlign = 256;

std::string RangeText(uint64_t addr, uint64_t length) {
  return absl::StrFormat("[0x%x, +%u)", addr, length);
}

absl::Status ChecksumError(uint64_t addr, size_t length, uint64_t got, uint64_t expected) {
  return absl::DataLossError(absl::StrFormat("GET of %s: checksum %016x, expected %016x",
                                             RangeText(addr, length), got, expected));
}

// One device op of a batch. Touched by the staging thread only.
struct DeviceOp {
  size_t index = 0;  // In the batch.
  std::string key;   // The op's remote_key, copied at submit.
  uint64_t remote_addr = 0;
  char* local = nullptr;  // Device memory.
  size_t length = 0;
  std::optional<uint64_t> checksum;  // GET only.
  // GET with a checksum, in more than one piece: the checksum of the pieces so far.
  std::unique_ptr<ChecksumBuilder> builder;
  absl::Status status;  // The first failure; OK until one.

  void Fail(absl::Status why) {
    if (status.ok()) status = std::move(why);
  }
};

struct Batch {
  bool is_get = false;
  // For a synchronous call, a non-owning alias of the caller's endpoint (the caller waits).
  std::shared_ptr<Endpoint> ep;
  // Host ops' statuses are written by the host part's callback, device ops' by the staging
  // thread, each to its own indices; the last part to finish delivers (under mu_ of the
  // engine, which orders the writes before the delivery).
  std::vector<absl::Status> statuses;
  std::vector<DeviceOp> device;
  BatchCallback done;
  int parts_left = 2;  // Host part and device part. Guarded by StagingEngine::mu_.
};

// A piece of a device op that moves through one slot.
struct Piece {
  size_t op = 0;      // In Batch::device.
  size_t offset = 0;  // In the op.
  size_t length = 0;
  size_t slot_offset = 0;  // In the slot.
};

// One network batch of the wrapped engine for one fill; shared with its callback.
struct Posting {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  std::vector<absl::Status> statuses ABSL_GUARDED_BY(mu);  // One per posted piece.
  std::vector<size_t> pieces;  // The pieces posted, as indices; constant once posted.
};

class StagingEngine final : public TransferEngine {
 public:
  StagingEngine(std::unique_ptr<TransferEngine> inner, std::shared_ptr<DeviceMemory> device,
                std::string name, int slots, size_t slot_bytes)
      : inner_(std::move(inner)),
        device_(std::move(device)),
        name_(std::move(name)),
        slots_(slots),
        slot_bytes_(slot_bytes) {}
  ~StagingEngine() override;

  absl::Status Start();

  // Once the destructor has begun (closing_), no entry point touches inner_: callbacks that
  // run during the teardown and call back in get CANCELLED at once, as the UCX engine does.
  const std::string& worker_address() const override { return worker_address_; }
  absl::StatusOr<std::unique_ptr<MemoryRegion>> Register(void* base, size_t length) override {
    if (closing_.load()) return Closing();
    return inner_->Register(base, length);
  }
  absl::StatusOr<std::unique_ptr<MemoryRegion>> Allocate(size_t length) override {
    if (closing_.load()) return Closing();
    return inner_->Allocate(length);
  }
  absl::StatusOr<std::shared_ptr<Endpoint>> Connect(std::string_view peer_address) override {
    if (closing_.load()) return Closing();
    return inner_->Connect(peer_address);
  }
  std::vector<absl::Status> Get(Endpoint& ep, std::span<const TransferOp> ops) override {
    if (closing_.load()) return std::vector<absl::Status>(ops.size(), Closing());
    return RunBatch(/*is_get=*/true, ep, ops);
  }
  std::vector<absl::Status> Put(Endpoint& ep, std::span<const TransferOp> ops) override {
    if (closing_.load()) return std::vector<absl::Status>(ops.size(), Closing());
    return RunBatch(/*is_get=*/false, ep, ops);
  }
  void GetAsync(std::shared_ptr<Endpoint> ep, std::span<const TransferOp> ops,
                BatchCallback done) override {
    if (closing_.load()) {
      return std::move(done)(std::vector<absl::Status>(ops.size(), Closing()));
    }
    if (!HasDeviceOp(ops)) return inner_->GetAsync(std::move(ep), ops, std::move(done));
    Submit(/*is_get=*/true, std::move(ep), ops, std::move(done), /*host_checksums=*/true);
  }
  void PutAsync(std::shared_ptr<Endpoint> ep, std::span<const TransferOp> ops,
                BatchCallback done) override {
    if (closing_.load()) {
      return std::move(done)(std::vector<absl::Status>(ops.size(), Closing()));
    }
    if (!HasDeviceOp(ops)) return inner_->PutAsync(std::move(ep), ops, std::move(done));
    Submit(/*is_get=*/false, std::move(ep), ops, std::move(done), /*host_checksums=*/false);
  }
  EngineStats stats() const override { return closing_.load() ? EngineStats{} : inner_->stats(); }

 private:
  struct Job {
    Batch* batch = nullptr;
    bool deliver = false;  // Deliver `batch`; else run its device part.
  };

  bool IsDevice(const TransferOp& op) const {
    return op.local != nullptr && device_->IsDevice(op.local);
  }
  bool HasDeviceOp(std::span<const TransferOp> ops) const {
    return std::any_of(ops.begin(), ops.end(),
                       [this](const TransferOp& op) { return IsDevice(op); });
  }
  char* slot(size_t s) const { return bounce_ + s * slot_bytes_; }
  int lane(size_t s) const { return static_cast<int>(s % lanes_); }

  std::vector<absl::Status> RunBatch(bool is_get, Endpoint& ep, std::span<const TransferOp> ops);
  // Splits `ops` and starts both parts. host_checksums: whether the wrapped engine verifies
  // the host ops' checksums (else the caller does).
  void Submit(bool is_get, std::shared_ptr<Endpoint> ep, std::span<const TransferOp> ops,
              BatchCallback done, bool host_checksums);
  void PartDone(Batch* batch, bool on_staging_thread);
  void Deliver(Batch* batch);

  // Staging thread.
  void Loop();
  void RunDevicePart(Batch& batch);
  // Posts the pieces [begin, end) that are still worth moving, between slot `s` and the
  // peer; returns the posting (already done when nothing was posted).
  std::shared_ptr<Posting> Post(Batch& batch, const std::vector<Piece>& pieces, size_t begin,
                                size_t end, size_t s);
  // Waits for `posting` and fails the ops of its failed pieces.
  void Collect(Batch& batch, const std::vector<Piece>& pieces, Posting& posting);
  // Waits for the copies queued on slot `s`'s lane; a failure fails the ops in `copying`.
  void FinishCopies(Batch& batch, size_t s, std::vector<size_t>& copying);
  void StageGets(Batch& batch, const std::vector<Piece>& pieces, const std::vector<size_t>& fills);
  void StagePuts(Batch& batch, const std::vector<Piece>& pieces, const std::vector<size_t>& fills);

  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !jobs_.empty() || (inner_gone_ && open_batches_ == 0);
  }
  bool NoDeviceParts() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return device_parts_ == 0; }

  static absl::Status Closing() {
    return absl::CancelledError("the transfer engine is shutting down");
  }

  // Constant after Start() (inner_ is reset by the destructor only).
  std::unique_ptr<TransferEngine> inner_;
  std::string worker_address_;
  std::atomic<bool> closing_{false};
  const std::shared_ptr<DeviceMemory> device_;
  const std::string name_;
  const size_t slots_;
  const size_t slot_bytes_;
  size_t lanes_ = 1;
  char* bounce_ = nullptr;  // slots_ * slot_bytes_ pinned bytes.
  std::unique_ptr<MemoryRegion> bounce_region_;
  std::thread::id progress_thread_;
  std::thread thread_;
  std::thread::id staging_thread_;

  // Read by the staging thread between pieces; set under mu_.
  std::atomic<bool> stopping_{false};

  absl::Mutex mu_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  size_t open_batches_ ABSL_GUARDED_BY(mu_) = 0;  // Submitted, not yet delivered.
  size_t device_parts_ ABSL_GUARDED_BY(mu_) = 0;  // Queued or running.
  bool inner_gone_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status StagingEngine::Start() {
  worker_address_ = inner_->worker_address();
  int lanes = device_->lanes();
  lanes_ = lanes > 0 ? static_cast<size_t>(lanes) : 1;
  absl::StatusOr<void*> bounce = device_->AllocatePinned(slots_ * slot_bytes_);
  if (!bounce.ok()) return bounce.status();
  bounce_ = static_cast<char*>(*bounce);
  // Registered once, so that UCX does not map the slots again for every transfer. Its key
  // is never shipped: peers have no business with the slots.
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region =
      inner_->Register(bounce_, slots_ * slot_bytes_);
  if (!region.ok()) return region.status();
  bounce_region_ = std::move(*region);
  // An empty batch completes on the progress thread: how this wrapper learns which thread
  // that is (synchronous calls with device ops must refuse to run there).
  absl::Notification learned;
  inner_->GetAsync(nullptr, {}, [&](std::vector<absl::Status>) {
    progress_thread_ = std::this_thread::get_id();
    learned.Notify();
  });
  learned.WaitForNotification();
  thread_ = std::thread([this] { Loop(); });
  staging_thread_ = thread_.get_id();
  return absl::OkStatus();
}

StagingEngine::~StagingEngine() {
  closing_.store(true);
  if (thread_.joinable()) {
    {
      // From here on device parts are cancelled without touching inner_; wait for the one
      // running, which stops posting and waits for what it posted, and for those queued.
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      mu_.Await(absl::Condition(this, &StagingEngine::NoDeviceParts));
    }
    bounce_region_.reset();
    // Completes the host parts still in flight (CANCELLED); their deliveries queue up on
    // the staging thread, which ends once every batch is delivered.
    inner_.reset();
    {
      absl::MutexLock lock(&mu_);
      inner_gone_ = true;
    }
    thread_.join();
  }
  bounce_region_.reset();
  inner_.reset();
  if (bounce_ != nullptr) device_->FreePinned(bounce_);
}

std::vector<absl::Status> StagingEngine::RunBatch(bool is_get, Endpoint& ep,
                                                  std::span<const TransferOp> ops) {
  std::thread::id self = std::this_thread::get_id();
  if (self == staging_thread_) {
    return std::vector<absl::Status>(
        ops.size(), absl::FailedPreconditionError("Get/Put called from a completion callback"));
  }
  if (!HasDeviceOp(ops)) return is_get ? inner_->Get(ep, ops) : inner_->Put(ep, ops);
  if (self == progress_thread_) {
    return std::vector<absl::Status>(
        ops.size(), absl::FailedPreconditionError("Get/Put called from a completion callback"));
  }
  absl::Notification done;
  std::vector<absl::Status> statuses;
  // The caller waits below, so the endpoint outlives the batch without being owned.
  std::shared_ptr<Endpoint> alias(std::shared_ptr<Endpoint>(), &ep);
  Submit(
      is_get, std::move(alias), ops,
      [&](std::vector<absl::Status> s) {
        statuses = std::move(s);
        done.Notify();
      },
      /*host_checksums=*/false);
  done.WaitForNotification();
  if (is_get) {
    // As the wrapped engine does for synchronous calls: host ops' checksums are verified in
    // the caller's thread, not on the progress thread.
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!statuses[i].ok() || !ops[i].checksum.has_value() || IsDevice(ops[i])) continue;
      uint64_t got = BlockChecksum(ops[i].local, ops[i].length);
      if (got != *ops[i].checksum) {
        statuses[i] = ChecksumError(ops[i].remote_addr, ops[i].length, got, *ops[i].checksum);
      }
    }
  }
  return statuses;
}

void StagingEngine::Submit(bool is_get, std::shared_ptr<Endpoint> ep,
                           std::span<const TransferOp> ops, BatchCallback done,
                           bool host_checksums) {
  auto* batch = new Batch;
  batch->is_get = is_get;
  batch->ep = ep;
  batch->statuses.resize(ops.size());
  batch->done = std::move(done);
  std::vector<TransferOp> host;
  std::vector<size_t> host_index;
  for (size_t i = 0; i < ops.size(); ++i) {
    const TransferOp& op = ops[i];
    if (!IsDevice(op)) {
      host.push_back(op);
      if (!host_checksums) host.back().checksum.reset();
      host_index.push_back(i);
      continue;
    }
    // Checked here, for the whole op, as the wrapped engine would: a piece must never be
    // the first to notice that the op is out of range.
    if (op.length == 0) {
      batch->statuses[i] =
          absl::InvalidArgumentError("op needs a non-null local buffer and a length > 0");
    } else if (absl::StatusOr<RemoteKey> key = DecodeRemoteKey(op.remote_key); !key.ok()) {
      batch->statuses[i] = key.status();
    } else if (!RangeInside(op.remote_addr, op.length, key->base, key->length)) {
      batch->statuses[i] = absl::OutOfRangeError(absl::StrCat(RangeText(op.remote_addr, op.length),
                                                              " is not inside the remote region ",
                                                              RangeText(key->base, key->length)));
    } else {
      DeviceOp& d = batch->device.emplace_back();
      d.index = i;
      d.key = std::string(op.remote_key);
      d.remote_addr = op.remote_addr;
      d.local = static_cast<char*>(op.local);
      d.length = op.length;
      if (is_get) d.checksum = op.checksum;
    }
  }
  if (host.empty()) {
    PartDone(batch, /*on_staging_thread=*/false);  // Not the last: the device part is next.
  } else {
    auto on_host_done = [this, batch,
                         host_index = std::move(host_index)](std::vector<absl::Status> statuses) {
      for (size_t j = 0; j < host_index.size(); ++j) {
        batch->statuses[host_index[j]] = std::move(statuses[j]);
      }
      PartDone(batch, /*on_staging_thread=*/false);
    };
    if (is_get) {
      inner_->GetAsync(ep, host, std::move(on_host_done));
    } else {
      inner_->PutAsync(ep, host, std::move(on_host_done));
    }
  }
  absl::MutexLock lock(&mu_);
  ++open_batches_;
  ++device_parts_;
  jobs_.push_back(Job{batch, /*deliver=*/false});
}

void StagingEngine::PartDone(Batch* batch, bool on_staging_thread) {
  {
    absl::MutexLock lock(&mu_);
    if (--batch->parts_left > 0) return;
    if (!on_staging_thread) {
      // Ahead of device parts still queued: the batch is complete and should not wait.
      jobs_.push_front(Job{batch, /*deliver=*/true});
      return;
    }
  }
  Deliver(batch);
}

void StagingEngine::Deliver(Batch* batch) {
  std::move(batch->done)(std::move(batch->statuses));
  delete batch;
  absl::MutexLock lock(&mu_);
  --open_batches_;
}

void StagingEngine::Loop() {
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &StagingEngine::HasWork));
      if (jobs_.empty()) return;  // inner_ is gone and every batch delivered.
      job = jobs_.front();
      jobs_.pop_front();
    }
    if (job.deliver) {
      Deliver(job.batch);
      continue;
    }
    RunDevicePart(*job.batch);
    {
      absl::MutexLock lock(&mu_);
      --device_parts_;
    }
    PartDone(job.batch, /*on_staging_thread=*/true);
  }
}

void StagingEngine::RunDevicePart(Batch& batch) {
  if (stopping_.load(std::memory_order_relaxed)) {
    for (DeviceOp& op : batch.device) {
      batch.statuses[op.index] =
          absl::CancelledError(absl::StrCat(name_, ": engine shutting down"));
    }
    batch.ep.reset();
    return;
  }
  // Lay the ops out in fills: fills[f] is the first piece of fill f; fills.back() is the
  // number of pieces.
  std::vector<Piece> pieces;
  std::vector<size_t> fills;
  size_t used = slot_bytes_;  // The first piece starts a fill.
  for (size_t k = 0; k < batch.device.size(); ++k) {
    DeviceOp& op = batch.device[k];
    for (size_t offset = 0; offset < op.length;) {
      // A piece starts a fill unless all of it fits behind the pieces already there: an op
      // no larger than a slot is never split, and so its checksum is verified before any
      // of its bytes go to the device.
      size_t at = (used + kPieceAlign - 1) / kPieceAlign * kPieceAlign;
      if (at + std::min(op.length - offset, slot_bytes_) > slot_bytes_) {
        fills.push_back(pieces.size());
        at = 0;
      }
      size_t length = std::min(op.length - offset, slot_bytes_ - at);
      if (offset == 0 && length < op.length && op.checksum.has_value()) {
        op.builder = std::make_unique<ChecksumBuilder>();
      }
      pieces.push_back(Piece{k, offset, length, at});
      used = at + length;
      offset += length;
    }
  }
  fills.push_back(pieces.size());
  if (!pieces.empty()) {
    if (batch.is_get) {
      StageGets(batch, pieces, fills);
    } else {
      StagePuts(batch, pieces, fills);
    }
  }
  for (DeviceOp& op : batch.device) batch.statuses[op.index] = std::move(op.status);
  // The endpoint must not outlive the wrapped engine: let go of it before the destructor
  // may destroy that engine.
  batch.ep.reset();
}

std::shared_ptr<Posting> StagingEngine::Post(Batch& batch, const std::vector<Piece>& pieces,
                                             size_t begin, size_t end, size_t s) {
  auto posting = std::make_shared<Posting>();
  std::vector<TransferOp> ops;
  for (size_t p = begin; p < end; ++p) {
    const Piece& piece = pieces[p];
    DeviceOp& op = batch.device[piece.op];
    if (stopping_.load(std::memory_order_relaxed)) {
      op.Fail(absl::CancelledError(absl::StrCat(name_, ": engine shutting down")));
    }
    if (!op.status.ok()) continue;
    ops.push_back(TransferOp{op.key, op.remote_addr + piece.offset, slot(s) + piece.slot_offset,
                             piece.length, std::nullopt});
    posting->pieces.push_back(p);
  }
  if (ops.empty()) {
    absl::MutexLock lock(&posting->mu);
    posting->done = true;
    return posting;
  }
  auto on_done = [posting](std::vector<absl::Status> statuses) {
    absl::MutexLock lock(&posting->mu);
    posting->statuses = std::move(statuses);
    posting->done = true;
  };
  if (batch.is_get) {
    inner_->GetAsync(batch.ep, ops, std::move(on_done));
  } else {
    inner_->PutAsync(batch.ep, ops, std::move(on_done));
  }
  return posting;
}

void StagingEngine::Collect(Batch& batch, const std::vector<Piece>& pieces, Posting& posting) {
  posting.mu.LockWhen(absl::Condition(&posting.done));
  for (size_t j = 0; j < posting.pieces.size() && j < posting.statuses.size(); ++j) {
    if (!posting.statuses[j].ok()) {
      batch.device[pieces[posting.pieces[j]].op].Fail(std::move(posting.statuses[j]));
    }
  }
  posting.mu.Unlock();
}

void StagingEngine::FinishCopies(Batch& batch, size_t s, std::vector<size_t>& copying) {
  if (copying.empty()) return;
  absl::Status status = device_->WaitLane(lane(s));
  if (!status.ok()) {
    for (size_t op : copying) batch.device[op].Fail(status);
  }
  copying.clear();
}

void StagingEngine::StageGets(Batch& batch, const std::vector<Piece>& pieces,
                              const std::vector<size_t>& fills) {
  const size_t n = fills.size() - 1;
  std::vector<std::shared_ptr<Posting>> net(slots_);
  std::vector<std::vector<size_t>> copying(slots_);  // Ops with copies queued, per slot.
  size_t posted = 0;
  for (size_t handled = 0; handled < n; ++handled) {
    // slots - 1 fills on the network, the last slot copying to the device: the slot posted
    // into next is the one whose copies were queued a whole step ago.
    for (; posted < n && posted - handled < slots_ - 1; ++posted) {
      size_t s = posted % slots_;
      FinishCopies(batch, s, copying[s]);
      net[s] = Post(batch, pieces, fills[posted], fills[posted + 1], s);
    }
    size_t s = handled % slots_;
    Collect(batch, pieces, *net[s]);
    net[s].reset();
    for (size_t p = fills[handled]; p < fills[handled + 1]; ++p) {
      const Piece& piece = pieces[p];
      DeviceOp& op = batch.device[piece.op];
      if (!op.status.ok()) continue;
      const char* bytes = slot(s) + piece.slot_offset;
      if (op.checksum.has_value()) {
        // Verified on the bounce bytes, so that bytes that fail never reach the device.
        if (op.builder != nullptr) op.builder->Update(bytes, piece.length);
        if (piece.offset + piece.length == op.length) {
          uint64_t got =
              op.builder != nullptr ? op.builder->Finish() : BlockChecksum(bytes, piece.length);
          if (got != *op.checksum) {
            op.Fail(ChecksumError(op.remote_addr, op.length, got, *op.checksum));
            continue;
          }
        }
      }
      absl::Status status =
          device_->CopyToDeviceAsync(op.local + piece.offset, bytes, piece.length, lane(s));
      if (!status.ok()) {
        op.Fail(std::move(status));
      } else {
        copying[s].push_back(piece.op);
      }
    }
  }
  for (size_t s = 0; s < slots_; ++s) FinishCopies(batch, s, copying[s]);
}

void StagingEngine::StagePuts(Batch& batch, const std::vector<Piece>& pieces,
                              const std::vector<size_t>& fills) {
  const size_t n = fills.size() - 1;
  std::vector<std::shared_ptr<Posting>> net(slots_);
  std::vector<std::vector<size_t>> copying(slots_);
  size_t copied = 0;
  size_t posted = 0;
  size_t completed = 0;
  while (completed < n) {
    if (copied < n && copied - completed < slots_) {
      // Slot copied % slots is free: the fill before in it has left over the network.
      size_t s = copied % slots_;
      for (size_t p = fills[copied]; p < fills[copied + 1]; ++p) {
        const Piece& piece = pieces[p];
        DeviceOp& op = batch.device[piece.op];
        if (stopping_.load(std::memory_order_relaxed)) {
          op.Fail(absl::CancelledError(absl::StrCat(name_, ": engine shutting down")));
        }
        if (!op.status.ok()) continue;
        absl::Status status = device_->CopyToHostAsync(
            slot(s) + piece.slot_offset, op.local + piece.offset, piece.length, lane(s));
        if (!status.ok()) {
          op.Fail(std::move(status));
        } else {
          copying[s].push_back(piece.op);
        }
      }
      ++copied;
    } else if (posted < copied && (posted + 1 < copied || posted == completed || copied == n)) {
      // The newest copy is left running while an older fill can be collected instead.
      size_t s = posted % slots_;
      FinishCopies(batch, s, copying[s]);
      net[s] = Post(batch, pieces, fills[posted], fills[posted + 1], s);
      ++posted;
    } else {
      size_t s = completed % slots_;
      Collect(batch, pieces, *net[s]);
      net[s].reset();
      ++completed;
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<TransferEngine>> NewStagingEngine(
    std::unique_ptr<TransferEngine> inner, const EngineOptions& options) {
  if (options.bounce_bytes < 2 * kMinSlotBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("bounce_bytes ", options.bounce_bytes, " is below 8 KiB"));
  }
  size_t slots = std::min<size_t>(kMaxSlots, options.bounce_bytes / kMinSlotBytes);
  size_t slot_bytes = options.bounce_bytes / slots / kMinSlotBytes * kMinSlotBytes;
  // Each slot's device copies are waited for, and their failures blamed, by lane: two slots
  // on one lane would each see the other's copies (and errors) as their own.
  if (options.device_memory->lanes() < static_cast<int>(slots)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device_memory offers ", options.device_memory->lanes(), " copy lanes; staging through ",
        slots, " bounce slots needs one lane per slot"));
  }
  auto engine = std::make_unique<StagingEngine>(std::move(inner), options.device_memory,
                                                options.name, static_cast<int>(slots), slot_bytes);
  if (absl::Status status = engine->Start(); !status.ok()) return status;
  return std::unique_ptr<TransferEngine>(std::move(engine));
}

}  // namespace tierkv::transfer::internal
