#include "cache_manager/block_index.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/status.h"

namespace tierkv {
namespace {

constexpr size_t kMaxKnownModels = 64;
// SSD reads in flight for one promotion.
constexpr size_t kPromotionThreads = 4;

std::string ShortKey(const BlockKey& key) { return ToHex(key).substr(0, 16); }

absl::StatusOr<BlockKey> ParseKey(const std::string& bytes, const char* what, size_t index) {
  auto key = BlockKeyFromBytes(bytes);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "[", index, "]: ", key.status().message()));
  }
  return key;
}

absl::StatusOr<std::vector<BlockKey>> ParseKeys(const std::vector<std::string>& keys,
                                                const char* what) {
  std::vector<BlockKey> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    auto key = ParseKey(keys[i], what, i);
    if (!key.ok()) return key.status();
    out.push_back(*key);
  }
  return out;
}

std::string TimeString(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

}  // namespace

std::string_view InspectStateName(InspectState state) {
  switch (state) {
    case InspectState::kFound:
      return "found";
    case InspectState::kNeverStored:
      return "never stored";
    case InspectState::kEvicted:
      return "evicted";
    case InspectState::kUncommitted:
      return "uncommitted";
    case InspectState::kFingerprintMismatch:
      return "fingerprint mismatch";
    case InspectState::kUnreachable:
      return "unreachable";
    case InspectState::kChecksumFailure:
      return "checksum failure";
  }
  return "unknown";
}

// Slabs of committed blocks (see CommittedBlockDelete in the header).
struct BlockSlab {
  // At most this many blocks a slab: a slab lives while any of its blocks does, so this
  // bounds the dead slots one surviving block can keep (a chain's tail is evicted before
  // its head); a Lookup probes the table once per slab it crosses.
  static constexpr uint32_t kMaxBlocks = 256;
  static constexpr size_t kHeader = 64;

  // Lookups that found the blocks in slots [first, end) and have not written their use
  // statistics into them (see CommittedBlock): `count` of them, each with the same
  // admission epoch; the latest at `now`, numbering the blocks' recency from `seq_base`.
  // Only live blocks, none of them in an eviction order.
  struct Pending {
    uint64_t count = 0;  // 0: nothing pending.
    uint64_t seq_base = 0;
    uint64_t uses_epoch = 0;
    absl::Time now;
    uint32_t first = 0;
    uint32_t end = 0;
    bool count_uses = false;
  };

  uint32_t live = 0;
  uint32_t size = 0;
  Pending pending;

  CommittedBlock* slot(uint32_t i) {
    return reinterpret_cast<CommittedBlock*>(reinterpret_cast<char*>(this) + kHeader) + i;
  }
  const CommittedBlock* slot(uint32_t i) const { return const_cast<BlockSlab*>(this)->slot(i); }
  uint32_t SlotOf(const CommittedBlock* block) const {
    return static_cast<uint32_t>(block - slot(0));
  }
  // Writes what is pending into the blocks.
  void ApplyPending() {
    if (pending.count == 0) return;
    for (uint32_t i = pending.first; i < pending.end; ++i) {
      CommittedBlock& b = *slot(i);
      b.NoteFound(pending.count, pending.now, pending.count_uses, pending.uses_epoch);
      b.touch_seq_ = pending.seq_base + (i - pending.first);
      b.in_pending_run_ = false;
    }
    pending.count = 0;
  }
  static BlockSlab* Create(uint32_t n) {
    static_assert(kHeader % alignof(CommittedBlock) == 0);
    static_assert(sizeof(BlockSlab) <= kHeader);
    const size_t bytes = kHeader + size_t{n} * sizeof(CommittedBlock);
    void* memory = ::operator new(bytes, std::align_val_t{alignof(CommittedBlock)});
    std::memset(memory, 0, bytes);  // Unused slots read as zero keys.
    auto* slab = new (memory) BlockSlab;
    slab->size = n;
    return slab;
  }
  static void Destroy(BlockSlab* slab) {
    slab->~BlockSlab();
    ::operator delete(static_cast<void*>(slab), std::align_val_t{alignof(CommittedBlock)});
  }
};

void CommittedBlock::ApplySlabRun() const { slab->ApplyPending(); }

std::vector<size_t> CommittedBlock::UseStatOffsetsForTest() {
  CommittedBlock b;
  auto at = [&](const void* field) {
    return static_cast<size_t>(static_cast<const char*>(field) - reinterpret_cast<char*>(&b));
  };
  return {at(&b.touch_seq_), at(&b.hits_), at(&b.last_access_), at(&b.no_demote_),
          at(&b.uses_)};
}

void CommittedBlockDelete::operator()(CommittedBlock* block) const {
  BlockSlab* slab = block->slab;
  block->Settle();  // A pending run holds live blocks only.
  block->~CommittedBlock();
  // A Lookup that expects a chain's next block in this slot reads its first line: zero
  // bytes there are a key no block of this slot has now and no tier flag (see LookupWalk).
  std::memset(static_cast<void*>(block), 0, 64);
  if (--slab->live == 0) BlockSlab::Destroy(slab);
}

namespace {

// Hands out `blocks` new committed blocks in consecutive slots, slab after slab.
class SlabCursor {
 public:
  explicit SlabCursor(size_t blocks) : left_(blocks) {}
  CommittedBlockPtr New() {
    if (slab_ == nullptr || next_ == slab_->size) {
      slab_ = BlockSlab::Create(
          static_cast<uint32_t>(std::clamp<size_t>(left_, 1, BlockSlab::kMaxBlocks)));
      next_ = 0;
    }
    if (left_ > 0) --left_;
    CommittedBlock* block = new (slab_->slot(next_)) CommittedBlock();
    block->slab = slab_;
    block->slab_after = slab_->size - next_ - 1;
    ++next_;
    ++slab_->live;
    return CommittedBlockPtr(block);
  }

 private:
  size_t left_;
  BlockSlab* slab_ = nullptr;
  uint32_t next_ = 0;
};

}  // namespace

BlockIndex::BlockIndex(const BlockIndexOptions& options, HostPool* pool, Clock* clock,
                       EventLog* events, SsdTier* ssd, DeviceTier* gpu)
    : options_(options), pool_(pool), clock_(clock), events_(events), ssd_(ssd), gpu_(gpu) {
  if (options_.admission != BlockIndexOptions::Admission::kAll) {
    admission_ = std::make_unique<AdmissionController>(
        options_.admission == BlockIndexOptions::Admission::kSecondUse
            ? AdmissionController::Mode::kSecondUse
            : AdmissionController::Mode::kAuto,
        pool_->capacity_bytes() / pool_->page_bytes(), options_.admission_sketch_width);
  }
}

BlockIndex::~BlockIndex() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, block_ptr] : blocks_) {
    CommittedBlock& block = *block_ptr;
    if (block.in_host) pool_->Free(block.space);
    if (block.in_gpu) gpu_->pool().Free(block.gpu_space);
  }
  for (auto& [key, block] : pending_) (block.on_gpu ? gpu_->pool() : *pool_).Free(block.space);
}

absl::Status BlockIndex::CheckLeaseTtl(absl::Duration ttl, const char* what) const {
  if (ttl < absl::ZeroDuration() || ttl > options_.max_lease_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", absl::FormatDuration(ttl),
                                                   " is outside (0, ",
                                                   absl::FormatDuration(options_.max_lease_ttl),
                                                   "]; ask for 0 to take the default"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Recency, readers and eviction orders.

void BlockIndex::Unlist(CommittedBlock& b) {
  if (b.children == 0) leaves_.erase(b.touch_seq());
  if (b.in_host && b.host_children == 0) host_leaves_.erase(b.touch_seq());
  if (b.ssd && (b.in_host || b.in_gpu || b.children == 0)) ssd_order_.erase(b.touch_seq());
  if (b.in_gpu) gpu_order_.erase(b.touch_seq());
  b.listed = false;
}

void BlockIndex::Relist(CommittedBlock& b) {
  b.listed = false;
  if (b.children == 0) {
    leaves_.emplace(b.touch_seq(), &b);
    b.listed = true;
  }
  if (b.in_host && b.host_children == 0) {
    host_leaves_.emplace(b.touch_seq(), &b);
    b.listed = true;
  }
  if (b.ssd && (b.in_host || b.in_gpu || b.children == 0)) {
    ssd_order_.emplace(b.touch_seq(), &b);
    b.listed = true;
  }
  if (b.in_gpu) {
    gpu_order_.emplace(b.touch_seq(), &b);
    b.listed = true;
  }
}

uint32_t BlockIndex::FingerprintId(const Digest& fingerprint) {
  auto [it, inserted] =
      fingerprint_ids_.try_emplace(fingerprint, static_cast<uint32_t>(fingerprint_ids_.size()));
  return it->second;
}

namespace {

// CommittedBlock::host_offset for a host copy in `space`.
uint64_t HostOffsetOf(const PoolAllocation& space) {
  const auto& extents = space.extents;
  return extents.size() == 1 ? extents[0].offset
         : extents.empty()   ? 0
                             : CommittedBlock::kSplitHostCopy;
}

}  // namespace

void BlockIndex::SyncHostOffset(CommittedBlock& block) {
  block.host_offset = HostOffsetOf(block.space);
}

bool BlockIndex::AdmitNew(const BlockKey& key, uint64_t new_blocks) {
  absl::MutexLock admission_lock(&admission_mu_);
  return admission_->Admit(key, new_blocks);
}

void BlockIndex::Touch(CommittedBlock& block) {
  block.Settle();
  Unlist(block);
  block.touch_seq_ = next_seq_++;
  Relist(block);
}

CommittedBlock* BlockIndex::FindParent(const CommittedBlock& block) {
  if (!block.parent) return nullptr;
  auto it = blocks_.find(*block.parent);
  return it == blocks_.end() ? nullptr : it->second.get();
}

void BlockIndex::AddReader(CommittedBlock& block) {
  const bool was = IsProtected(block);
  ++block.readers;
  UpdateProtection(block, was);
}

void BlockIndex::RemoveReader(const BlockKey& key) {
  auto it = blocks_.find(key);
  // Blocks with readers are never evicted (a corrupt one is removed with its readers'
  // references), so the block is still there.
  if (it == blocks_.end() || it->second->readers == 0) return;
  const bool was = IsProtected(*it->second);
  --it->second->readers;
  UpdateProtection(*it->second, was);
}

void BlockIndex::UpdateProtection(CommittedBlock& block, bool was_protected) {
  const bool now = IsProtected(block);
  if (now == was_protected) return;
  if (block.in_host) {
    if (now) {
      protected_host_bytes_ += block.space.reserved_bytes;
    } else {
      protected_host_bytes_ -= block.space.reserved_bytes;
    }
  }
  AdjustKept(&block, now ? 1 : -1);
}

void BlockIndex::AdjustKept(CommittedBlock* block, int delta) {
  // Walk up while a block switches between kept and not kept; its parent's count changes by
  // the same one. Stops at the first block whose state does not switch.
  while (block != nullptr) {
    const uint32_t before = block->kept;
    block->kept += delta;
    const bool switched = (before == 0) != (block->kept == 0);
    if (!switched) return;
    if (delta > 0) {
      kept_bytes_ += block->space.reserved_bytes;
    } else {
      kept_bytes_ -= block->space.reserved_bytes;
    }
    // The parent gains or loses one kept child.
    delta = delta > 0 ? 1 : -1;
    block = FindParent(*block);
  }
}

void BlockIndex::DropHostCopy(CommittedBlock& block) {
  CommittedBlock* parent = FindParent(block);
  Unlist(block);
  if (parent != nullptr) Unlist(*parent);
  if (block.kept > 0) kept_bytes_ -= block.space.reserved_bytes;
  if (IsProtected(block)) protected_host_bytes_ -= block.space.reserved_bytes;
  committed_reserved_ -= block.space.reserved_bytes;
  pool_->Free(block.space);
  block.space = PoolAllocation();
  SyncHostOffset(block);
  block.in_host = false;
  --host_blocks_;
  host_bytes_ -= block.size;
  if (parent != nullptr) {
    --parent->host_children;
    Relist(*parent);
  }
  Relist(block);
}

void BlockIndex::SetHostCopy(CommittedBlock& block, PoolAllocation space) {
  if (block.in_host) {  // Never two host copies of one block.
    pool_->Free(space);
    return;
  }
  CommittedBlock* parent = FindParent(block);
  Unlist(block);
  if (parent != nullptr) Unlist(*parent);
  block.space = std::move(space);
  SyncHostOffset(block);
  block.in_host = true;
  ++host_blocks_;
  host_bytes_ += block.size;
  committed_reserved_ += block.space.reserved_bytes;
  if (block.kept > 0) kept_bytes_ += block.space.reserved_bytes;
  if (IsProtected(block)) protected_host_bytes_ += block.space.reserved_bytes;
  if (parent != nullptr) {
    ++parent->host_children;
    Relist(*parent);
  }
  Relist(block);
}

SsdRecord BlockIndex::RecordOf(const CommittedBlock& block, const SsdLocation& location) const {
  SsdRecord r;
  r.key = block.key;
  r.parent = block.parent;
  r.size = block.size;
  r.codec = block.codec;
  r.checksum = block.checksum;
  r.fingerprint = block.fingerprint;
  r.last_use_unix_ms = absl::ToUnixMillis(block.last_access());
  r.location = location;
  return r;
}

void BlockIndex::DropSsdCopy(CommittedBlock& block) {
  if (!block.ssd) return;
  const SsdRecord record = RecordOf(block, *block.ssd);
  // A catalog delete without sync: microseconds, and the tier reuses the space only once
  // the deletion is durable.
  absl::Status removed = ssd_->Remove(std::span<const SsdRecord>(&record, 1));
  if (!removed.ok()) ++counters_.ssd_write_failures;
  Unlist(block);
  block.ssd.reset();
  --ssd_blocks_;
  ssd_bytes_ -= block.size;
  Relist(block);
}

absl::StatusOr<SsdLocation> BlockIndex::ReserveSsd(uint64_t size, bool drop_host_copies_ssd) {
  for (;;) {
    auto location = ssd_->Reserve(size);
    if (location.ok() || location.status().code() != absl::StatusCode::kResourceExhausted) {
      return location;
    }
    // Coldest SSD copy that may go: one also in host or GPU memory (the block stays
    // cached), or an unprotected leaf (the block leaves the cache).
    CommittedBlock* victim = nullptr;
    for (auto& [seq, b] : ssd_order_) {
      const bool in_memory = b->in_host || b->in_gpu;
      if (!b->moving && ((in_memory && drop_host_copies_ssd) || (!in_memory && b->kept == 0))) {
        victim = b;
        break;
      }
    }
    if (victim == nullptr) return location.status();
    ++counters_.ssd_evictions;
    if (victim->in_host || victim->in_gpu) {
      DropSsdCopy(*victim);
    } else {
      RemoveBlock(*victim, "ssd capacity", false);
    }
  }
}

bool BlockIndex::Admit(const CommittedBlock& block) const {
  // A candidate with children has them all on SSD only: keep the chain whole.
  return block.hits() >= options_.ssd_admit_min_hits || block.children > 0;
}

bool BlockIndex::AllHostChildrenMoving(const CommittedBlock& block) {
  auto kids = children_.find(block.key);
  if (kids == children_.end()) return true;
  for (const BlockKey& k : kids->second) {
    const CommittedBlock& child = *blocks_.at(k);
    if (child.in_host && !child.moving) return false;
  }
  return true;
}

bool BlockIndex::MakeHostRoom(uint64_t bytes) {
  constexpr int kMaxRounds = 64;
  for (int round = 0; round < kMaxRounds; ++round) {
    if (pool_->free_bytes() >= bytes) return true;
    std::vector<Demotion> demotions;
    uint64_t planned = 0;
    auto plan = [&](CommittedBlock& b) -> bool {
      if (ssd_ == nullptr || b.no_demote() || IsProtected(b) || b.moving || !Admit(b)) return false;
      auto location = ReserveSsd(b.size);
      if (!location.ok()) return false;
      b.moving = true;
      demotions.push_back(Demotion{b.key, *location});
      planned += b.space.reserved_bytes;
      return true;
    };
    // Coldest host leaves first. Restart the scan after every change: a drop or eviction
    // can make a parent a host leaf at an older position, and any change may invalidate
    // the iterator.
    bool progress = true;
    while (progress && pool_->free_bytes() + planned < bytes) {
      progress = false;
      // Reserving SSD space may evict SSD copies, which re-lists blocks and invalidates
      // iterators: after every plan() the scan finds its place again by sequence number.
      for (auto it = host_leaves_.begin(); it != host_leaves_.end();) {
        CommittedBlock* b = it->second;
        const uint64_t seq = it->first;
        if (IsProtected(*b) || b->moving) {
          ++it;
          continue;
        }
        if (b->ssd || b->in_gpu) {
          ++counters_.host_drops;
          DropHostCopy(*b);
          progress = true;
          break;
        }
        // `b` stays valid through plan(): reserving SSD space removes only SSD-only blocks.
        const bool planned_b = plan(*b);
        if (planned_b) {
          progress = true;
          // Parents whose host children all go down in this batch go with them, so that a
          // long chain moves in one write rather than one level per round.
          for (CommittedBlock* p = FindParent(*b);
               p != nullptr && pool_->free_bytes() + planned < bytes && p->in_host &&
               !p->ssd && AllHostChildrenMoving(*p) && plan(*p);
               p = FindParent(*p)) {
          }
        }
        it = host_leaves_.upper_bound(seq);
        if (planned_b) {
          if (pool_->free_bytes() + planned >= bytes) break;
          continue;
        }
        // A parent whose children are all in GPU memory only (no SSD to demote it to): the
        // chain below it goes first, GPU copies included, so that it can leave too.
        if (b->children > 0 && b->kept == 0 && ssd_ == nullptr && EvictGpuOnlySubtree(*b)) {
          progress = true;
          break;
        }
        // Kept (by a protected descendant) or with children on SSD only: it cannot leave.
        if (b->children > 0 || b->kept > 0) continue;
        if (ssd_ != nullptr) ++counters_.admissions_refused;
        RemoveBlock(*b, "capacity", false);
        progress = true;
        break;
      }
    }
    if (ssd_ != nullptr && pool_->free_bytes() + planned < bytes) {
      // The host leaves are all protected (a chain being extended holds its tail, a lease
      // holds a prefix): their unprotected ancestors may still go to SSD, coldest first,
      // and the chains stay whole there.
      std::vector<CommittedBlock*> cold;
      for (auto& [key, b_ptr] : blocks_) {
        CommittedBlock& b = *b_ptr;
        if (b.in_host && !b.moving && !IsProtected(b)) cold.push_back(&b);
      }
      std::sort(cold.begin(), cold.end(), [](const CommittedBlock* x, const CommittedBlock* y) {
        return x->touch_seq() < y->touch_seq();
      });
      // Pointers stay valid: dropping host copies and reserving SSD space remove no block
      // that is in host memory.
      for (CommittedBlock* b : cold) {
        if (pool_->free_bytes() + planned >= bytes) break;
        if (b->ssd || b->in_gpu) {
          ++counters_.host_drops;
          DropHostCopy(*b);
        } else {
          plan(*b);
        }
      }
    }
    if (demotions.empty()) return pool_->free_bytes() >= bytes;
    RunDemotions(demotions);
  }
  return pool_->free_bytes() >= bytes;
}

namespace {

// A pool allocation's extents as spans of the pool's memory (T: const or mutable bytes).
template <typename T>
std::vector<std::span<T>> Pieces(const HostPool& pool, const PoolAllocation& space) {
  std::vector<std::span<T>> pieces;
  pieces.reserve(space.extents.size());
  for (const PoolExtent& e : space.extents) pieces.emplace_back(pool.base() + e.offset, e.length);
  return pieces;
}

}  // namespace

void BlockIndex::RunDemotions(const std::vector<Demotion>& demotions) {
  std::vector<SsdTier::WriteItem> items;
  items.reserve(demotions.size());
  for (const Demotion& d : demotions) {
    const CommittedBlock& block = *blocks_.at(d.key);
    items.push_back(SsdTier::WriteItem{RecordOf(block, d.location), Pieces<const uint8_t>(*pool_, block.space)});
  }
  // The blocks stay readable in host memory meanwhile; `moving` keeps them from being
  // dropped, evicted or moved by anyone else.
  mu_.Unlock();
  std::vector<absl::Status> written = ssd_->Write(items);
  mu_.Lock();
  for (size_t i = 0; i < demotions.size(); ++i) {
    CommittedBlock& block = *blocks_.at(demotions[i].key);
    block.moving = false;
    if (!written[i].ok()) {
      ssd_->Unreserve(demotions[i].location);
      block.Settle();
      block.no_demote_ = true;
      ++counters_.ssd_write_failures;
      continue;
    }
    Unlist(block);
    block.ssd = demotions[i].location;
    ++ssd_blocks_;
    ssd_bytes_ += block.size;
    Relist(block);
    ++counters_.demotions;
    Publish(EventType::kMoved, block, "demoted", kTierSsd);
    // Leased or pinned while it was written: it keeps its host copy as well.
    if (!IsProtected(block)) DropHostCopy(block);
  }
  moved_.SignalAll();
}

void BlockIndex::DropGpuCopy(CommittedBlock& block) {
  Unlist(block);
  gpu_->pool().Free(block.gpu_space);
  block.gpu_space = PoolAllocation();
  block.in_gpu = false;
  --gpu_blocks_;
  gpu_bytes_ -= block.size;
  Relist(block);
}

bool BlockIndex::DemoteFromGpu(const BlockKey& key) {
  CommittedBlock* block = blocks_.at(key).get();
  // `moving` keeps others from dropping or moving it while the lock is released, the
  // reader hold keeps it (and its chain) in the cache.
  block->moving = true;
  AddReader(*block);
  const uint64_t size = block->size;
  const bool room = MakeHostRoom(pool_->PagesFor(size) * pool_->page_bytes());
  absl::StatusOr<PoolAllocation> space =
      room ? pool_->Allocate(size) : absl::ResourceExhaustedError("host tier full");
  block = blocks_.at(key).get();  // Held: still there.
  absl::Status copied = space.status();
  if (space.ok()) {
    const PoolAllocation source = block->gpu_space;
    mu_.Unlock();
    copied = gpu_->CopyToHost(source, Pieces<uint8_t>(*pool_, *space));
    mu_.Lock();
    block = blocks_.at(key).get();
  }
  block->moving = false;
  bool demoted = false;
  if (space.ok() && !copied.ok()) {
    pool_->Free(*space);
    ++counters_.gpu_copy_failures;
  } else if (space.ok()) {
    SetHostCopy(*block, *std::move(space));
    ++counters_.gpu_demotions;
    Publish(EventType::kMoved, *block, "demoted", kTierHost);
    demoted = true;
  }
  RemoveReader(key);
  // Leased or pinned meanwhile: a reader may use the GPU copy, so it stays as well.
  if (demoted && block->in_gpu && !IsProtected(*block)) DropGpuCopy(*block);
  moved_.SignalAll();
  return demoted;
}

bool BlockIndex::EvictGpuOnlySubtree(CommittedBlock& block) {
  std::vector<BlockKey> subtree;
  CollectSubtree(block.key, subtree);
  // Every descendant must be in GPU memory only and free to go (block.kept == 0 already
  // says none is protected).
  for (size_t i = 1; i < subtree.size(); ++i) {
    const CommittedBlock& d = *blocks_.at(subtree[i]);
    if (d.in_host || d.ssd || d.moving || IsProtected(d) || d.kept > 0) return false;
  }
  if (subtree.size() < 2) return false;
  // Deepest first: each is a leaf when it goes.
  for (size_t i = subtree.size() - 1; i >= 1; --i) {
    RemoveBlock(*blocks_.at(subtree[i]), "capacity", false);
  }
  return true;
}

bool BlockIndex::MakeGpuRoom(uint64_t bytes) {
  HostPool& gpu_pool = gpu_->pool();
  // What could leave at most (every unprotected GPU copy): when that is not enough, change
  // nothing.
  uint64_t could_free = 0;
  for (auto& [seq, b] : gpu_order_) {
    if (!b->moving && !IsProtected(*b)) could_free += b->gpu_space.reserved_bytes;
  }
  if (gpu_pool.free_bytes() + could_free < bytes) return false;
  // Blocks that could not be demoted this time (host memory full, a failed copy); cleared
  // when a block leaves the cache, which can make its parent a leaf.
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> stuck;
  while (gpu_pool.free_bytes() < bytes) {
    CommittedBlock* victim = nullptr;
    for (auto& [seq, b] : gpu_order_) {
      if (!b->moving && !IsProtected(*b) && !stuck.contains(b->key)) {
        victim = b;
        break;
      }
    }
    if (victim == nullptr) return false;
    if (victim->in_host || victim->ssd) {
      ++counters_.gpu_drops;
      DropGpuCopy(*victim);
      continue;
    }
    const BlockKey key = victim->key;
    if (DemoteFromGpu(key)) continue;
    stuck.insert(key);
    // Host memory cannot take it: a leaf nobody keeps leaves the cache, as it would from
    // the host tier. (The lock was released: find it again.)
    auto it = blocks_.find(key);
    if (it == blocks_.end()) continue;
    CommittedBlock& b = *it->second;
    if (b.in_gpu && !b.in_host && !b.ssd && !b.moving && b.children == 0 && b.kept == 0) {
      RemoveBlock(b, "capacity", false);
      stuck.clear();
    }
  }
  return true;
}

BlockIndex::FlushResult BlockIndex::FlushToSsd(size_t batch) {
  FlushResult result;
  if (ssd_ == nullptr) return result;
  absl::MutexLock lock(&mu_);
  if (gpu_ != nullptr) {
    // GPU memory does not survive the process: GPU-only blocks come down to host memory
    // first (hottest first), making room there by demoting host blocks to SSD.
    std::vector<std::pair<uint64_t, BlockKey>> gpu_only;
    for (auto& [key, b_ptr] : blocks_) {
      if (b_ptr->in_gpu && !b_ptr->in_host && !b_ptr->ssd) gpu_only.emplace_back(b_ptr->touch_seq(), key);
    }
    std::sort(gpu_only.begin(), gpu_only.end(),
              [](const auto& x, const auto& y) { return x.first > y.first; });
    for (const auto& [seq, key] : gpu_only) {
      auto it = blocks_.find(key);
      if (it == blocks_.end() || it->second->moving || it->second->in_host) continue;
      DemoteFromGpu(key);
    }
  }
  // The hottest host-only blocks first: if the SSD fills up, the coldest stay behind. One
  // scan and sort; blocks are found again by key since each batch releases the lock.
  std::vector<std::pair<uint64_t, BlockKey>> todo;
  for (auto& [key, b_ptr] : blocks_) {
    CommittedBlock& b = *b_ptr;
    if (b.in_host && !b.ssd) todo.emplace_back(b.touch_seq(), key);
  }
  std::sort(todo.begin(), todo.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  for (size_t next = 0; next < todo.size();) {
    std::vector<Demotion> demotions;
    for (; next < todo.size() && demotions.size() < batch; ++next) {
      auto it = blocks_.find(todo[next].second);
      if (it == blocks_.end()) continue;
      CommittedBlock& b = *it->second;
      if (!b.in_host || b.ssd || b.moving) continue;
      // Room comes only from blocks that are on SSD alone (colder than anything in host
      // memory); the SSD copies of host blocks stay, so the flush never trades a hotter
      // block's copy for a colder one's.
      auto location = ReserveSsd(b.size, /*drop_host_copies_ssd=*/false);
      if (!location.ok()) continue;
      b.moving = true;
      demotions.push_back(Demotion{b.key, *location});
    }
    if (demotions.empty()) continue;
    RunDemotions(demotions);
    for (const Demotion& d : demotions) {
      auto it = blocks_.find(d.key);
      if (it != blocks_.end() && it->second->ssd) {
        ++result.written;
        result.bytes += it->second->size;
      }
    }
  }
  for (auto& [key, b_ptr] : blocks_) {
    CommittedBlock& b = *b_ptr;
    result.left += b.in_host && !b.ssd;
  }
  return result;
}

void BlockIndex::WaitForMove(const BlockKey& key) {
  for (;;) {
    auto it = blocks_.find(key);
    if (it == blocks_.end() || !it->second->moving) return;
    moved_.Wait(&mu_);
  }
}

void BlockIndex::Promote(const std::vector<BlockKey>& keys) {
  std::vector<CommittedBlock*> blocks;
  uint64_t bytes = 0;
  for (const BlockKey& key : keys) {
    CommittedBlock& block = *blocks_.at(key);
    block.moving = true;
    AddReader(block);  // Keeps it (and its ancestors) while the lock is released.
    blocks.push_back(&block);
    bytes += pool_->PagesFor(block.size) * pool_->page_bytes();
  }
  MakeHostRoom(bytes);
  // Pointers stay valid: held blocks are not removed while the lock was released.
  std::vector<PoolAllocation> spaces;
  for (CommittedBlock* block : blocks) {
    auto space = pool_->Allocate(block->size);
    if (!space.ok()) break;
    spaces.push_back(*std::move(space));
  }
  for (size_t i = spaces.size(); i < blocks.size(); ++i) {
    blocks[i]->moving = false;
    RemoveReader(blocks[i]->key);
  }
  if (spaces.size() < blocks.size()) moved_.SignalAll();
  if (spaces.empty()) {
    moved_.SignalAll();
    return;
  }
  // A GPU copy is the faster source; blocks without one come from SSD.
  std::vector<SsdRecord> records(spaces.size());
  std::vector<PoolAllocation> gpu_sources(spaces.size());
  std::vector<bool> from_gpu(spaces.size());
  for (size_t i = 0; i < spaces.size(); ++i) {
    from_gpu[i] = blocks[i]->in_gpu;
    if (from_gpu[i]) {
      gpu_sources[i] = blocks[i]->gpu_space;
    } else {
      records[i] = RecordOf(*blocks[i], *blocks[i]->ssd);
    }
  }
  mu_.Unlock();
  // Several reads in flight (one thread reads at about half the disk's speed). The chain
  // ends at the first block that fails: what comes after it is not used.
  std::vector<absl::Status> read(spaces.size(), absl::CancelledError());
  std::atomic<size_t> next{0};
  std::atomic<size_t> first_failure{spaces.size()};
  auto reader = [&] {
    for (size_t i; (i = next.fetch_add(1)) < spaces.size();) {
      if (i > first_failure.load()) continue;
      auto pieces = Pieces<uint8_t>(*pool_, spaces[i]);
      read[i] = from_gpu[i] ? gpu_->CopyToHost(gpu_sources[i], pieces)
                            : ssd_->Read(records[i], pieces);
      if (!read[i].ok()) {
        size_t f = first_failure.load();
        while (i < f && !first_failure.compare_exchange_weak(f, i)) {
        }
      }
    }
  };
  const size_t threads = std::min<size_t>(kPromotionThreads, spaces.size());
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(reader);
  reader();
  for (auto& t : helpers) t.join();
  for (size_t i = first_failure.load() + 1; i < read.size(); ++i) read[i] = absl::CancelledError();
  mu_.Lock();
  std::vector<SsdRecord> touched;
  for (size_t i = 0; i < spaces.size(); ++i) {
    CommittedBlock& block = *blocks[i];
    block.moving = false;
    if (read[i].code() == absl::StatusCode::kCancelled) {
      pool_->Free(spaces[i]);
      RemoveReader(block.key);
      continue;
    }
    if (!read[i].ok() && from_gpu[i]) {
      // A device error, not bad bytes: the GPU copy was verified at commit and stays.
      pool_->Free(spaces[i]);
      ++counters_.gpu_copy_failures;
      RemoveReader(block.key);
      continue;
    }
    if (!read[i].ok()) {
      pool_->Free(spaces[i]);
      ++counters_.ssd_read_failures;
      RemoveCorrupt(block, std::string(read[i].message()));
      continue;
    }
    SetHostCopy(block, std::move(spaces[i]));
    if (from_gpu[i]) {
      ++counters_.gpu_to_host;
      Publish(EventType::kMoved, block, "copied from gpu", kTierHost);
    } else {
      ++counters_.promotions;
      ++counters_.ssd_hits;
      Publish(EventType::kMoved, block, "promoted", kTierHost);
      touched.push_back(records[i]);
    }
    RemoveReader(block.key);
  }
  if (!touched.empty()) {
    const int64_t now_ms = absl::ToUnixMillis(clock_->Now());
    for (SsdRecord& r : touched) r.last_use_unix_ms = now_ms;
    (void)ssd_->Touch(touched);  // Only an eviction hint after a restart.
  }
  moved_.SignalAll();
}

void BlockIndex::RemoveCorrupt(CommittedBlock& block, const std::string& detail) {
  RemoveBlock(block, absl::StrCat("checksum failure on SSD read: ", detail), true);
}

void BlockIndex::RemoveBlock(CommittedBlock& block, const std::string& reason,
                             bool checksum_failure) {
  const BlockKey key = block.key;
  if (block.readers > 0) {
    // Only a block leaving because its SSD copy is corrupt can have readers here (this
    // thread's promotion hold, allocations extending it): forget their references so that
    // a later block under the same key is not released by them.
    for (auto& [id, allocation] : allocations_) {
      auto& held = allocation.held_parents;
      held.erase(std::remove(held.begin(), held.end(), key), held.end());
    }
    for (auto& [id, lease] : leases_) {
      auto& leased = lease.keys;
      leased.erase(std::remove(leased.begin(), leased.end(), key), leased.end());
    }
    for (std::vector<BlockKey>* held : in_flight_holds_) {
      held->erase(std::remove(held->begin(), held->end(), key), held->end());
    }
  }
  CommittedBlock* parent = FindParent(block);
  Unlist(block);
  if (parent != nullptr) Unlist(*parent);
  if (block.in_host && IsProtected(block)) protected_host_bytes_ -= block.space.reserved_bytes;
  if (block.kept > 0) {
    kept_bytes_ -= block.space.reserved_bytes;
    if (parent != nullptr) AdjustKept(parent, -1);
  }
  by_commit_.erase(block.commit_seq);
  if (block.parent) {
    auto siblings = children_.find(*block.parent);
    if (siblings != children_.end()) {
      auto& v = siblings->second;
      v.erase(std::remove(v.begin(), v.end(), key), v.end());
      if (v.empty()) children_.erase(siblings);
    }
  }
  if (parent != nullptr) {
    --parent->children;
    if (block.in_host) --parent->host_children;
    Relist(*parent);
  }
  if (block.pinned) --pinned_blocks_;
  committed_bytes_ -= block.size;
  ++counters_.evictions;
  if (checksum_failure) {
    ++counters_.dropped_corrupt;
  } else if (reason == "capacity") {
    ++counters_.evicted_capacity;
  } else if (reason == "requested") {
    ++counters_.evicted_requested;
  } else {
    ++counters_.evicted_ssd_capacity;
  }
  Publish(EventType::kEvicted, block, reason,
          block.in_host ? kTierHost : (block.in_gpu ? kTierGpu : kTierSsd));
  if (block.in_gpu) {
    gpu_->pool().Free(block.gpu_space);
    --gpu_blocks_;
    gpu_bytes_ -= block.size;
    ++counters_.gpu_evictions;
  }
  if (block.in_host) {
    committed_reserved_ -= block.space.reserved_bytes;
    --host_blocks_;
    host_bytes_ -= block.size;
    pool_->Free(block.space);
  }
  if (block.ssd) {
    const SsdRecord record = RecordOf(block, *block.ssd);
    if (!ssd_->Remove(std::span<const SsdRecord>(&record, 1)).ok()) ++counters_.ssd_write_failures;
    --ssd_blocks_;
    ssd_bytes_ -= block.size;
  }
  if (admission_ != nullptr && block.uses().count > 0) {
    // Its uses while cached go into the sketch now that the key is new again.
    absl::MutexLock admission_lock(&admission_mu_);
    admission_->OnLeave(key, block.uses().AgedTo(admission_->epoch()));
  }
  probe_.Erase(key);
  blocks_.erase(key);
  RememberEvicted(key, reason, checksum_failure);
}

void BlockIndex::RememberEvicted(const BlockKey& key, const std::string& reason,
                                 bool checksum_failure) {
  if (options_.eviction_memory == 0) return;
  // Each remembered eviction has its own sequence number, so that dropping the oldest
  // entry of the order never forgets a newer eviction of the same key.
  const uint64_t seq = next_seq_++;
  evicted_.insert_or_assign(key, EvictedRecord{clock_->Now(), reason, checksum_failure, seq});
  evicted_order_.emplace_back(key, seq);
  while (evicted_order_.size() > options_.eviction_memory) {
    auto [old_key, old_seq] = evicted_order_.front();
    evicted_order_.pop_front();
    auto it = evicted_.find(old_key);
    if (it != evicted_.end() && it->second.seq == old_seq) evicted_.erase(it);
  }
}

void BlockIndex::CollectSubtree(const BlockKey& key, std::vector<BlockKey>& out) {
  size_t first = out.size();
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> seen = {key};
  out.push_back(key);
  for (size_t i = first; i < out.size(); ++i) {
    auto kids = children_.find(out[i]);
    if (kids == children_.end()) continue;
    for (const BlockKey& child : kids->second) {
      if (seen.insert(child).second) out.push_back(child);  // Commit refuses cycles; be safe.
    }
  }
}

void BlockIndex::Publish(EventType type, const CommittedBlock& block, const std::string& reason,
                         uint32_t tier) {
  CacheEvent event;
  event.type = type;
  event.key = block.key;
  event.parent = block.parent;
  event.size = block.size;
  event.time = clock_->Now();
  event.reason = reason;
  event.tier = tier;
  events_->Append(std::move(event));
}

// ---------------------------------------------------------------------------------------
// Lookup and leases.

absl::StatusOr<LookupResult> BlockIndex::Lookup(
    const std::vector<std::string_view>& keys, const std::optional<Digest>& fingerprint,
    const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
    absl::FunctionRef<void(const CommittedBlock&)> emit, bool accept_gpu) {
  if (keys.size() > kMaxLookupKeys) {
    return absl::InvalidArgumentError(
        absl::StrCat("Lookup of ", keys.size(), " keys; at most ", kMaxLookupKeys));
  }
  TIERKV_RETURN_IF_ERROR(CheckLeaseTtl(lease_ttl, "read lease"));
  // Validate every key before touching anything: bad input changes nothing.
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].size() != kDigestBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys[", i, "]: a block key is 32 bytes; got ", keys[i].size()));
    }
  }
  std::string packed;
  packed.reserve(keys.size() * kDigestBytes);
  for (std::string_view key : keys) packed.append(key);
  return LookupPacked(packed, fingerprint, accept_codecs, lease, lease_ttl, emit, accept_gpu);
}

namespace {

// Key i of a packed key list.
BlockKey PackedKey(const char* packed, size_t i) {
  BlockKey key;
  std::memcpy(key.data(), packed + i * kDigestBytes, kDigestBytes);
  return key;
}

// Lookup's software pipeline over the keys: the probe table slot of key i + kProbeAhead is
// prefetched, key i + kBlockAhead is probed (its slot is in cache by then) and its block
// prefetched, key i is handled. A long chain's blocks are scattered over the heap:
// without this, each key waits for two cache misses in turn.
constexpr size_t kProbeAhead = 32;
constexpr size_t kBlockAhead = 16;

// The fields of the state word, as bits of it.
constexpr uint64_t kStateFingerprint = 0xffffffffu;
constexpr int kStateCodecShift = 32;
constexpr int kStateInHostShift = 40;
constexpr int kStateInGpuShift = 56;
constexpr uint64_t kStateCodec = uint64_t{0xff} << kStateCodecShift;
constexpr uint64_t kStateInHost = uint64_t{0xff} << kStateInHostShift;
constexpr uint64_t kStateInGpu = uint64_t{0xff} << kStateInGpuShift;

uint64_t StateWord(const CommittedBlock* block) {
  uint64_t word;
  std::memcpy(&word, reinterpret_cast<const char*>(block) + CommittedBlock::kStateWordAt,
              sizeof(word));
  return word;
}

// Whether a slab slot's first line shows a block in host or GPU memory, read as raw bytes
// (the slot's block may be gone, its line zeroed): in_host or in_gpu of its state word.
bool SlotHoldsTierFlag(const CommittedBlock* slot) {
  return (StateWord(slot) & (kStateInHost | kStateInGpu)) != 0;
}

// The two cache lines of a committed block (aligned to a line; see its field order) that a
// Lookup touches: the first it reads (key, fingerprint number, codec, tier flags and what
// the answer carries), the second it updates (recency, counters).
void PrefetchBlock(const CommittedBlock* block) {
  const char* p = reinterpret_cast<const char*>(block);
  static_assert(sizeof(CommittedBlock) >= 2 * 64);
  __builtin_prefetch(p, 0, 3);
  __builtin_prefetch(p + 64, 1, 3);
}

}  // namespace

absl::StatusOr<LookupResult> BlockIndex::LookupPacked(
    std::string_view packed_keys, const std::optional<Digest>& fingerprint,
    const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
    absl::FunctionRef<void(const CommittedBlock&)> emit, bool accept_gpu) {
  return LookupPackedBatches(
      packed_keys, fingerprint, accept_codecs, lease, lease_ttl,
      [&](BlockBatch blocks) {
        for (const CommittedBlock* b : blocks) emit(*b);
      },
      accept_gpu);
}

BlockIndex::SampledFound& BlockIndex::ThreadSampledFound() {
  thread_local SampledFound sampled_found;  // Kept between calls: no allocation.
  return sampled_found;
}

std::vector<std::pair<size_t, uint32_t>> BlockIndex::SampledOfLastLookupForTest() {
  const SampledFound& s = ThreadSampledFound();
  std::vector<std::pair<size_t, uint32_t>> out;
  for (size_t i = 0; i < s.count; ++i) out.emplace_back(s.uses[i].index, s.uses[i].pending);
  return out;
}

absl::StatusOr<LookupResult> BlockIndex::LookupPackedBatches(
    std::string_view packed_keys, const std::optional<Digest>& fingerprint,
    const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
    absl::FunctionRef<void(BlockBatch)> emit_blocks, bool accept_gpu, LookupRecordSink* sink) {
  SampledFound& sampled_found = ThreadSampledFound();
  absl::StatusOr<LookupResult> result =
      LookupWalk(packed_keys, fingerprint, accept_codecs, lease, lease_ttl, emit_blocks,
                 accept_gpu, &sampled_found, sink);
  // Every key of the request counts as asked for, found or not (the found ones in their
  // blocks, counted by the walk); the miniatures also learn how many were missed. Outside
  // the index lock.
  if (result.ok() && admission_ != nullptr) {
    absl::MutexLock admission_lock(&admission_mu_);
    admission_->OnLookup(packed_keys, result->found,
                         std::span(sampled_found.uses.data(), sampled_found.count));
  }
  return result;
}

absl::StatusOr<LookupResult> BlockIndex::LookupWalk(
    std::string_view packed_keys, const std::optional<Digest>& fingerprint,
    const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
    absl::FunctionRef<void(BlockBatch)> emit_blocks, bool accept_gpu,
    SampledFound* sampled_found, LookupRecordSink* sink) {
  sampled_found->count = 0;
  if (packed_keys.size() % kDigestBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keys is ", packed_keys.size(), " bytes, not a whole number of ", kDigestBytes,
        "-byte block keys"));
  }
  const size_t n = packed_keys.size() / kDigestBytes;
  if (n > kMaxLookupKeys) {
    return absl::InvalidArgumentError(
        absl::StrCat("Lookup of ", n, " keys; at most ", kMaxLookupKeys));
  }
  TIERKV_RETURN_IF_ERROR(CheckLeaseTtl(lease_ttl, "read lease"));
  const char* const packed = packed_keys.data();
  const bool raw_only = accept_codecs.empty();
  auto codec_ok = [&](uint32_t codec) {
    if (raw_only) return codec == kCodecRaw;
    return std::find(accept_codecs.begin(), accept_codecs.end(), codec) !=
           accept_codecs.end();
  };
  constexpr size_t kRing = 32;  // A power of two above kBlockAhead.
  static_assert(kRing > kBlockAhead && (kRing & (kRing - 1)) == 0);
  absl::MutexLock lock(&mu_);
  ++counters_.lookups;
  // Blocks carry a number for their fingerprint: one the index never saw matches none.
  uint32_t want_fingerprint = 0;
  if (fingerprint) {
    auto id = fingerprint_ids_.find(*fingerprint);
    want_fingerprint = id != fingerprint_ids_.end() ? id->second : UINT32_MAX;
  }
  // The block whose tag matches key i (not yet compared with the key), prefetched.
  auto probe = [&](size_t i) -> CommittedBlock* {
    CommittedBlock* block = probe_.Candidate(PackedKey(packed, i));
    if (block != nullptr) PrefetchBlock(block);
    return block;
  };
  // Walk the chain and answer for each block of the prefix as soon as it is known to be in
  // host memory (or the GPU tier, for a caller that shares it): one pass over the blocks'
  // lines. SSD-only blocks in the prefix stop the answering: the walk goes on to collect
  // them and the host blocks after them, they are promoted to host memory (the lock is
  // released for the reads, with the blocks answered for so far and the collected ones
  // held), and the walk resumes after the last block answered for.
  constexpr int kMaxPromotionRounds = 4;
  const absl::Time now = clock_->Now();
  LookupResult result;
  std::vector<BlockKey> leased;
  // Found blocks count their uses for the admission sketch themselves (admission.h).
  const bool count_uses = admission_ != nullptr;
  const uint64_t uses_epoch = count_uses ? admission_->epoch() : 0;
  if (count_uses && sampled_found->uses.size() < n + 1) sampled_found->uses.resize(n + 1);
  AdmissionController::SampledUse* const sampled = sampled_found->uses.data();
  size_t sampled_count = 0;
  // What a block's state word (CommittedBlock::kStateWordAt) must show for the block to be
  // answered at once: in host memory, with the fingerprint asked for, and the codec when
  // one is accepted (the only codec or raw); anything else takes the checks one by one.
  // A guessed slot that passes shows its tier flag.
  const bool one_codec = raw_only || (accept_codecs.size() == 1 && accept_codecs[0] <= 0xff);
  uint64_t state_mask = kStateInHost;
  uint64_t state_want = uint64_t{1} << kStateInHostShift;
  if (fingerprint) {
    state_mask |= kStateFingerprint;
    state_want |= want_fingerprint;
  }
  if (one_codec) {
    state_mask |= kStateCodec;
    state_want |= uint64_t{raw_only ? kCodecRaw : accept_codecs[0]} << kStateCodecShift;
  }
  size_t done = 0;  // Keys [0, done) are answered for.
  uint64_t gpu_hits = 0;
  // Answered blocks go to `emit_blocks` a batch at a time, while their lines are still near.
  constexpr size_t kBatch = kLookupBatch;
  const CommittedBlock* batch[kBatch];
  size_t batched = 0;
  auto flush = [&] {
    if (batched > 0) emit_blocks(BlockBatch(batch, batched));
    batched = 0;
  };
  auto answer = [&](CommittedBlock& block, size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    block.Settle();
    block.NoteFound(1, now, count_uses, uses_epoch);
    if (count_uses) {
      // Without a branch (one key in 16 is sampled, at random): every key writes the slot.
      sampled[sampled_count] = {static_cast<uint32_t>(i), block.uses_.count};
      sampled_count += AdmissionController::Sampled(block.key);
    }
    if (!block.listed) {
      // In no eviction order (inside a chain, in host memory only): Touch's Unlist and
      // Relist would do nothing but this.
      block.touch_seq_ = next_seq_++;
    } else {
      Touch(block);
    }
    if (lease) {
      AddReader(block);
      leased.push_back(block.key);
    }
    gpu_hits += accept_gpu && block.in_gpu;
    batch[batched++] = &block;
    if (batched == kBatch) flush();
  };
  // Blocks in slab runs go through AnswerRun, unless leases or codecs it does not check
  // are asked for.
  const bool fast_runs = !lease && one_codec;
  RunWalk walk{.packed = packed,
               .n = n,
               .run_end = 0,
               .state_mask = state_mask,
               .state_want = state_want,
               .accept_gpu = accept_gpu ? 1u : 0u,
               .now = now,
               .count_uses = count_uses,
               .uses_epoch = uses_epoch,
               .sampled = sampled,
               .sampled_count = 0,
               .batch = batch,
               .batched = 0,
               .emit_blocks = emit_blocks,
               .gpu_hits = 0,
               // A block the caller takes from the GPU tier gets another record.
               .sink = accept_gpu ? nullptr : sink};
  for (int round = 0;; ++round) {
    std::vector<BlockKey> to_promote;
    absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> promoting;  // The same keys.
    std::vector<BlockKey> keep;
    // Promote no more than host memory can hold besides what must stay there.
    const uint64_t staying = ssd_ != nullptr ? protected_host_bytes_ : kept_bytes_;
    uint64_t promote_budget = pool_->capacity_bytes() - std::min(staying, pool_->capacity_bytes());
    bool waited = false;
    CommittedBlock* ring[kRing];
    bool ring_guessed[kRing];  // Whether ring[k] is a guess (else the table's candidate).
    const size_t first = done;
    // The slab run the walk is in: key k < run_end is expected in the slot
    // run_block + (k - run_key) (blocks of one Commit sit in chain order). A guess is
    // prefetched instead of probed, and checked like a probe's candidate: by its key.
    CommittedBlock* run_block = nullptr;
    size_t run_key = 0;
    size_t run_end = 0;
    for (size_t i = first; i < std::min(n, first + kProbeAhead); ++i) {
      probe_.Prefetch(PackedKey(packed, i));
    }
    for (size_t i = first; i < std::min(n, first + kBlockAhead); ++i) {
      ring[i & (kRing - 1)] = probe(i);
      ring_guessed[i & (kRing - 1)] = false;
    }
    for (size_t i = first; i < n; ++i) {
      if (fast_runs && i + kBlockAhead < run_end && to_promote.empty()) {
        // Inside a slab run, its blocks are answered in a loop of their own while they can
        // be (AnswerRun); the first one it leaves takes the way below.
        if (walk.sink != nullptr) flush();  // Its records come before the run's.
        walk.run_end = run_end;
        walk.sampled_count = sampled_count;
        walk.batched = batched;
        walk.gpu_hits = gpu_hits;
        const size_t stop = std::min(n, run_end - kBlockAhead);
        const size_t next = AnswerRun(walk, i, stop, run_block + (i - run_key));
        sampled_count = walk.sampled_count;
        batched = walk.batched;
        gpu_hits = walk.gpu_hits;
        done += next - i;
        i = next;
        if (i == n) break;
        // The keys the pipeline has reached lie in the run.
        for (size_t k = i; k < std::min(n, i + kBlockAhead); ++k) {
          ring[k & (kRing - 1)] = run_block + (k - run_key);
          ring_guessed[k & (kRing - 1)] = true;
        }
      }
      if (i + kProbeAhead < n && i + kProbeAhead >= run_end) {
        probe_.Prefetch(PackedKey(packed, i + kProbeAhead));
      }
      if (const size_t k = i + kBlockAhead; k < n) {
        if (k < run_end) {
          CommittedBlock* guess = run_block + (k - run_key);
          PrefetchBlock(guess);
          ring[k & (kRing - 1)] = guess;
          ring_guessed[k & (kRing - 1)] = true;
        } else {
          ring[k & (kRing - 1)] = probe(k);
          ring_guessed[k & (kRing - 1)] = false;
        }
      }
      CommittedBlock* found_block = ring[i & (kRing - 1)];
      if (found_block == nullptr) break;
      // The key is the block's first bytes; a guessed slot's first line is read as raw
      // storage, since its block may be gone: then it is all zero, a key a request may
      // well send, so a guess also needs a tier flag set (blocks on SSD alone have none
      // and take the table's answer).
      const bool guessed = ring_guessed[i & (kRing - 1)];
      const bool key_matches = std::memcmp(reinterpret_cast<const char*>(found_block),
                                           packed + i * kDigestBytes, kDigestBytes) == 0;
      // The common case takes one check of the state word (a right guess stays in its run).
      const bool at_once = key_matches && (StateWord(found_block) & state_mask) == state_want &&
                           to_promote.empty() && (one_codec || codec_ok(found_block->codec));
      if (at_once) {
        if (!guessed) {
          run_block = found_block;
          run_key = i;
          run_end = i + 1 + found_block->slab_after;
        }
      } else {
        if (!key_matches || (guessed && !SlotHoldsTierFlag(found_block))) {
          // Another key with the same first 8 bytes came first, or the guessed slot holds
          // another block (or none).
          found_block = probe_.Find(PackedKey(packed, i));
          if (found_block == nullptr) break;
        }
        run_block = found_block;
        run_key = i;
        run_end = i + 1 + found_block->slab_after;
        if (fingerprint && found_block->fingerprint_id != want_fingerprint) break;
        if (!codec_ok(found_block->codec)) break;
        if (!found_block->in_host && !(accept_gpu && found_block->in_gpu)) {
          const BlockKey key = found_block->key;
          if (round >= kMaxPromotionRounds) break;
          if (!promoting.insert(key).second) {
            break;  // The same key twice: no chain repeats a key; the prefix ends here.
          }
          if (found_block->moving) {
            if (!to_promote.empty()) break;  // Promote what comes before it first.
            flush();  // The answered blocks' state as of now: the wait releases the lock.
            // The answered blocks stay (as after a promotion) while the lock is released.
            std::vector<BlockKey> answered;
            answered.reserve(done);
            for (size_t k = 0; k < done; ++k) answered.push_back(PackedKey(packed, k));
            for (const BlockKey& k : answered) AddReader(*blocks_.at(k));
            WaitForMove(key);
            for (const BlockKey& k : answered) RemoveReader(k);
            waited = true;
            break;
          }
          const uint64_t bytes = pool_->PagesFor(found_block->size) * pool_->page_bytes();
          if (bytes > promote_budget) break;
          promote_budget -= bytes;
          to_promote.push_back(key);
          continue;
        }
        if (!to_promote.empty()) {
          // Walk on to collect the chain's SSD-only blocks.
          keep.push_back(found_block->key);
          continue;
        }
      }
      answer(*found_block, i);
      ++done;
    }
    flush();  // Before the lock is released, and at the end.
    if (waited) continue;
    if (to_promote.empty()) break;
    // The blocks answered for and the chain's blocks already in host memory stay there
    // while the rest comes up.
    for (size_t i = 0; i < done; ++i) keep.push_back(PackedKey(packed, i));
    for (const BlockKey& key : keep) AddReader(*blocks_.at(key));
    Promote(to_promote);
    for (const BlockKey& key : keep) RemoveReader(key);
  }
  result.found = done;
  sampled_found->count = sampled_count;
  counters_.gpu_hits += gpu_hits;
  counters_.hits += result.found;
  counters_.misses += n - result.found;
  if (lease && !leased.empty()) {
    result.lease_id = next_lease_id_++;
    result.lease_expires =
        now + (lease_ttl == absl::ZeroDuration() ? options_.read_lease_ttl : lease_ttl);
    leases_.emplace(result.lease_id, Lease{result.lease_expires, std::move(leased)});
  }
  return result;
}

size_t BlockIndex::AnswerRun(RunWalk& walk, size_t i, size_t stop, CommittedBlock* block) {
  // In locals, which the stores into blocks cannot alias.
  const char* const packed = walk.packed;
  const size_t n = walk.n;
  const size_t run_end = walk.run_end;
  const uint64_t mask = walk.state_mask;
  const uint64_t want = walk.state_want;
  const uint64_t accept_gpu = walk.accept_gpu;
  const absl::Time now = walk.now;
  const bool count_uses = walk.count_uses;
  const uint64_t uses_epoch = walk.uses_epoch;
  AdmissionController::SampledUse* const sampled = walk.sampled;
  size_t sampled_count = walk.sampled_count;
  const CommittedBlock** const batch = walk.batch;
  size_t batched = walk.batched;
  uint64_t gpu_hits = walk.gpu_hits;
  const uint64_t seq_begin = next_seq_;
  uint64_t seq = seq_begin;
  LookupRecordSink* const sink = walk.sink;
  char* const records = sink != nullptr ? sink->records : nullptr;
  const size_t record_capacity = sink != nullptr ? sink->capacity : 0;
  size_t record_count = sink != nullptr ? sink->count : 0;
  const uint8_t host_tier = sink != nullptr ? sink->host_tier : 0;
  // Every slot up to the run's end is in this slab. With a sink the blocks' use statistics
  // are left pending in it (see CommittedBlock); otherwise they are written here, after
  // what is pending.
  BlockSlab& slab = *block->slab;
  const uint32_t first_slot = slab.SlotOf(block);
  const BlockSlab::Pending before = slab.pending;
  if (sink == nullptr) slab.ApplyPending();
  stop = std::min<size_t>(stop, i + (slab.size - first_slot));  // The run is in the slab.

  const size_t begin = i;
  // The sampled blocks answered through the sink (at most a slab's worth: the loop stays in
  // one slab), in the order of their entries in `sampled`.
  const CommittedBlock* sampled_blocks[BlockSlab::kMaxBlocks];
  size_t sampled_in_run = 0;
  for (; i < stop; ++i, ++block) {
    if (sink != nullptr) {
      __builtin_prefetch(block + kBlockAhead, 0, 3);  // The first line is all it reads.
    } else {
      PrefetchBlock(block + kBlockAhead);
    }
    if (i + kProbeAhead >= run_end && i + kProbeAhead < n) {
      probe_.Prefetch(PackedKey(packed, i + kProbeAhead));
    }
    if (std::memcmp(block, packed + i * kDigestBytes, kDigestBytes) != 0) break;
    const uint64_t state = StateWord(block);
    if ((state & mask) != want || block->listed) break;
    if (sink != nullptr &&
        (block->host_offset == CommittedBlock::kSplitHostCopy || record_count == record_capacity)) {
      break;  // Its record is the encoder's to write (or to make room for).
    }
    gpu_hits += (state >> kStateInGpuShift) & accept_gpu;
    if (sink != nullptr) {
      if (count_uses && AdmissionController::Sampled(block->key)) {
        // Its uses are read after the loop, from the second line fetched meanwhile.
        __builtin_prefetch(reinterpret_cast<const char*>(block) + 64, 0, 3);
        sampled_blocks[sampled_in_run++] = block;
        sampled[sampled_count++] = {static_cast<uint32_t>(i), 0};
      }
      LookupRecordSink::WriteOnePiece(records + record_count * 32, block->checksum,
                                      block->host_offset, block->size, block->codec,
                                      host_tier);
      ++record_count;
      continue;
    }
    // What LookupWalk's answer does for a block in no eviction order, without a lease.
    block->NoteFound(1, now, count_uses, uses_epoch);
    if (count_uses) {
      sampled[sampled_count] = {static_cast<uint32_t>(i), block->uses_.count};
      sampled_count += AdmissionController::Sampled(block->key);
    }
    block->touch_seq_ = seq++;
    batch[batched++] = block;
    if (batched == kLookupBatch) {
      walk.emit_blocks(BlockBatch(batch, batched));
      batched = 0;
    }
  }
  // Each sampled block's uses as they are once this Lookup's is counted: what the slab
  // held for it, then this one.
  for (size_t k = 0; k < sampled_in_run; ++k) {
    const CommittedBlock* b = sampled_blocks[k];
    BlockUses uses = b->uses_;
    const uint32_t slot = slab.SlotOf(b);
    if (before.count != 0 && before.count_uses && slot >= before.first && slot < before.end) {
      uses.AddTimes(before.uses_epoch, before.count);
    }
    uses.Add(uses_epoch);
    sampled[sampled_count - sampled_in_run + k].pending = uses.count;
  }
  if (sink != nullptr && i > begin) {
    // This Lookup's uses of slots [first_slot, end) go into the slab. What is pending for
    // another run, or from another admission epoch, is written into its blocks first.
    const uint32_t end = first_slot + static_cast<uint32_t>(i - begin);
    BlockSlab::Pending& p = slab.pending;
    if (p.count != 0 && (p.first != first_slot || p.end != end || p.count_uses != count_uses ||
                         p.uses_epoch != uses_epoch)) {
      slab.ApplyPending();
    }
    if (p.count == 0) {
      p.first = first_slot;
      p.end = end;
      p.count_uses = count_uses;
      p.uses_epoch = uses_epoch;
      for (uint32_t k = first_slot; k < end; ++k) slab.slot(k)->in_pending_run_ = true;
    }
    ++p.count;
    p.seq_base = seq_begin;
    p.now = now;
    seq = seq_begin + (i - begin);
  }
  next_seq_ = seq;
  if (sink != nullptr) sink->count = record_count;
  walk.sampled_count = sampled_count;
  walk.batched = batched;
  walk.gpu_hits = gpu_hits;
  return i;
}

absl::Status BlockIndex::ReleaseLease(uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no read lease ", lease_id, ": it was released already, expired, or never granted"));
  }
  for (const BlockKey& key : it->second.keys) RemoveReader(key);
  leases_.erase(it);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Writes: Allocate, Write, Commit, Abort.

absl::StatusOr<AllocateResult> BlockIndex::Allocate(const ModelSpec& model,
                                                    const std::vector<AllocateBlockSpec>& blocks,
                                                    absl::Duration lease_ttl, bool prefer_gpu) {
  TIERKV_RETURN_IF_ERROR(model.Validate());
  TIERKV_RETURN_IF_ERROR(CheckLeaseTtl(lease_ttl, "write lease"));
  if (blocks.empty()) return absl::InvalidArgumentError("Allocate of no blocks");
  if (blocks.size() > kMaxBlocksPerAllocation) {
    return absl::InvalidArgumentError(absl::StrCat("Allocate of ", blocks.size(),
                                                   " blocks; at most ",
                                                   kMaxBlocksPerAllocation));
  }
  struct Parsed {
    BlockKey key;
    std::optional<BlockKey> parent;
  };
  std::vector<Parsed> parsed(blocks.size());
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> seen;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const AllocateBlockSpec& b = blocks[i];
    TIERKV_ASSIGN_OR_RETURN(parsed[i].key, ParseKey(b.key, "blocks.key", i));
    if (!b.parent_key.empty()) {
      TIERKV_ASSIGN_OR_RETURN(parsed[i].parent, ParseKey(b.parent_key, "blocks.parent_key", i));
      if (*parsed[i].parent == parsed[i].key) {
        return absl::InvalidArgumentError(
            absl::StrCat("blocks[", i, "]: a block cannot be its own parent"));
      }
    }
    if (b.size == 0 || b.size > kMaxBlockBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "]: size ", b.size, " is outside [1, ", kMaxBlockBytes, "] bytes"));
    }
    if (b.codec > kMaxCodec) {
      return absl::InvalidArgumentError(
          absl::StrCat("blocks[", i, "]: unknown codec ", b.codec));
    }
    if (!seen.insert(parsed[i].key).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("blocks[", i, "]: key ", ShortKey(parsed[i].key), "... is listed twice"));
    }
  }
  const Digest fingerprint = ModelFingerprint(model);
  const absl::Time now = clock_->Now();

  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(
        "node is draining and takes no new blocks; write to another node or undrain it");
  }
  // The chains the new blocks extend must survive while they are written: evicting a parent
  // would make its child unreachable the moment it is committed. Hold them like readers
  // (before making room, which could otherwise evict them).
  std::vector<BlockKey> held;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!parsed[i].parent) continue;
    auto parent = blocks_.find(*parsed[i].parent);
    if (parent == blocks_.end() ||
        std::find(held.begin(), held.end(), parent->first) != held.end()) {
      continue;
    }
    AddReader(*parent->second);
    held.push_back(parent->first);
  }
  // Making room may release the lock; a block removed meanwhile (a corrupt SSD copy) takes
  // its key out of `held` so that no later block under that key loses a reader to us.
  in_flight_holds_.push_back(&held);
  absl::Cleanup unregister_held = [&] {
    in_flight_holds_.erase(std::find(in_flight_holds_.begin(), in_flight_holds_.end(), &held));
  };
  auto release_held = [&] {
    for (const BlockKey& key : held) RemoveReader(key);
  };
  AllocateResult result;
  result.blocks.resize(blocks.size());
  // Pages of `pool` the blocks not committed or pending yet need; sets their states.
  auto take_states = [&](const HostPool& pool) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t pages = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      result.blocks[i].key = parsed[i].key;
      if (blocks_.contains(parsed[i].key)) {
        result.blocks[i].state = AllocateState::kAlreadyCommitted;
      } else if (pending_.contains(parsed[i].key)) {
        result.blocks[i].state = AllocateState::kInProgress;
      } else {
        result.blocks[i].state = AllocateState::kAllocated;
        pages += pool.PagesFor(blocks[i].size);
      }
    }
    return pages;
  };
  // Making room may release the lock (demotions write to SSD or copy from the GPU), so the
  // blocks' states are taken again after it; the reservation below follows a check under
  // the same hold.
  constexpr int kMaxRoomRounds = 8;
  bool on_gpu = false;
  if (prefer_gpu && gpu_ != nullptr && !options_.ssd_write_through) {
    // The GPU tier when all of the new blocks fit there (after making room); the host tier
    // otherwise. Admission does not apply: GPU blocks reach host memory only by demotion.
    HostPool& gpu_pool = gpu_->pool();
    for (int round = 0; round < kMaxRoomRounds; ++round) {
      const uint64_t gpu_bytes = take_states(gpu_pool) * gpu_pool.page_bytes();
      if (gpu_bytes == 0 || gpu_bytes > gpu_pool.capacity_bytes()) break;
      if (gpu_pool.free_bytes() >= gpu_bytes) {
        on_gpu = true;
        break;
      }
      if (!MakeGpuRoom(gpu_bytes)) break;
    }
    if (!on_gpu && take_states(gpu_pool) > 0) ++counters_.gpu_fallbacks;
  }
  uint64_t bytes_needed = 0;
  for (int round = 0; !on_gpu; ++round) {
    uint64_t pages_needed = take_states(*pool_);
    if (admission_ != nullptr && pool_->free_bytes() < pages_needed * pool_->page_bytes()) {
      // The tier is full: the admission rule decides (blocks asked for twice lately, or all
      // blocks of a request bringing few enough new ones), and a block whose parent in
      // this request stays out stays out too (its chain would be cut).
      uint64_t new_blocks = 0;
      for (const auto& b : result.blocks) new_blocks += b.state == AllocateState::kAllocated;
      absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> refused;
      for (size_t i = 0; i < blocks.size(); ++i) {
        if (result.blocks[i].state != AllocateState::kAllocated) continue;
        const bool parent_refused = parsed[i].parent && refused.contains(*parsed[i].parent);
        if (parent_refused || !AdmitNew(parsed[i].key, new_blocks)) {
          result.blocks[i].state = AllocateState::kNotAdmitted;
          refused.insert(parsed[i].key);
          pages_needed -= pool_->PagesFor(blocks[i].size);
        }
      }
    }
    bytes_needed = pages_needed * pool_->page_bytes();
    if (bytes_needed == 0) {
      for (const auto& b : result.blocks) {
        counters_.admissions_not_admitted += b.state == AllocateState::kNotAdmitted;
      }
      release_held();
      return result;
    }
    if (bytes_needed > pool_->capacity_bytes()) {
      release_held();
      ++counters_.allocation_failures;
      return absl::ResourceExhaustedError(absl::StrCat(
          "Allocate needs ", bytes_needed, " bytes but the host tier holds only ",
          pool_->capacity_bytes(), "; split the request or raise --host-capacity"));
    }
    if (pool_->free_bytes() >= bytes_needed) break;
    // Without an SSD tier only unkept leaves (and their chains) can leave host memory; with
    // one, any unprotected block can go down.
    const uint64_t staying = ssd_ != nullptr ? protected_host_bytes_ : kept_bytes_;
    const uint64_t evictable = committed_reserved_ - staying;
    if (round == kMaxRoomRounds || pool_->free_bytes() + evictable < bytes_needed ||
        !MakeHostRoom(bytes_needed)) {
      release_held();
      ++counters_.allocation_failures;
      return absl::ResourceExhaustedError(absl::StrCat(
          "Allocate needs ", bytes_needed, " bytes; ", pool_->free_bytes(), " are free and ",
          evictable,
          " evictable (the rest is pinned, leased, being written or moved); retry later, "
          "release leases or unpin blocks"));
    }
  }
  // Keep only the holds on parents of blocks this allocation writes.
  std::vector<BlockKey> needed_parents;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (result.blocks[i].state != AllocateState::kAllocated || !parsed[i].parent) continue;
    if (std::find(held.begin(), held.end(), *parsed[i].parent) != held.end() &&
        std::find(needed_parents.begin(), needed_parents.end(), *parsed[i].parent) ==
            needed_parents.end()) {
      needed_parents.push_back(*parsed[i].parent);
    }
  }
  for (const BlockKey& key : held) {
    if (std::find(needed_parents.begin(), needed_parents.end(), key) == needed_parents.end()) {
      RemoveReader(key);
    }
  }
  held = std::move(needed_parents);
  for (const auto& b : result.blocks) {
    counters_.admissions_not_admitted += b.state == AllocateState::kNotAdmitted;
  }
  const uint64_t id = next_allocation_id_++;
  Allocation& allocation = allocations_[id];
  allocation.fingerprint = fingerprint;
  allocation.held_parents = std::move(held);
  allocation.expires =
      now + (lease_ttl == absl::ZeroDuration() ? options_.write_lease_ttl : lease_ttl);
  HostPool& target = on_gpu ? gpu_->pool() : *pool_;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (result.blocks[i].state != AllocateState::kAllocated) continue;
    auto space = target.Allocate(blocks[i].size);
    if (!space.ok()) {
      // Unreachable while the pool's free bytes were checked above; fail safe regardless.
      ++counters_.allocation_failures;
      for (const BlockKey& key : allocation.keys) DropPending(key);
      EndAllocation(id);
      return space.status();
    }
    if (admission_ != nullptr && !on_gpu) {
      absl::MutexLock admission_lock(&admission_mu_);
      admission_->NoteBlockPages(pool_->PagesFor(blocks[i].size));
    }
    PendingBlock& p = pending_[parsed[i].key];
    p.key = parsed[i].key;
    p.parent = parsed[i].parent;
    p.size = blocks[i].size;
    p.codec = blocks[i].codec == 0 ? kCodecRaw : blocks[i].codec;
    p.space = *space;
    p.on_gpu = on_gpu;
    p.allocation_id = id;
    allocation.keys.insert(p.key);
    result.blocks[i].space = *space;
    result.blocks[i].on_gpu = on_gpu;
  }
  if (known_models_.size() < kMaxKnownModels) known_models_.emplace(fingerprint, model);
  result.allocation_id = id;
  result.lease_expires = allocation.expires;
  return result;
}

absl::StatusOr<BlockIndex::Allocation*> BlockIndex::FindAllocation(uint64_t id) {
  auto it = allocations_.find(id);
  if (it != allocations_.end() && it->second.expires <= clock_->Now()) {
    ExpireAllocation(id);
    it = allocations_.end();
  }
  if (it == allocations_.end()) {
    auto expired = expired_allocations_.find(id);
    if (expired != expired_allocations_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "write lease of allocation ", id, " expired at ", TimeString(expired->second),
          " and its space was reclaimed; Allocate again (and ask for a longer lease_ttl_ms)"));
    }
    return absl::NotFoundError(absl::StrCat(
        "no allocation ", id, ": it was never granted, or it was committed or aborted"));
  }
  return &it->second;
}

void BlockIndex::DropPending(const BlockKey& key) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;
  if (it->second.writers > 0) {
    // A copy into this space is running outside the lock; it frees the space when done.
    it->second.doomed = true;
    return;
  }
  (it->second.on_gpu ? gpu_->pool() : *pool_).Free(it->second.space);
  pending_.erase(it);
}

void BlockIndex::ExpireAllocation(uint64_t id) {
  auto it = allocations_.find(id);
  if (it == allocations_.end()) return;
  for (const BlockKey& key : it->second.keys) DropPending(key);
  expired_allocations_[id] = it->second.expires;
  expired_order_.push_back(id);
  while (expired_order_.size() > options_.expired_allocation_memory) {
    expired_allocations_.erase(expired_order_.front());
    expired_order_.pop_front();
  }
  EndAllocation(id);
  ++counters_.expired_allocations;
}

void BlockIndex::FinishAllocationIfEmpty(uint64_t id) {
  auto it = allocations_.find(id);
  if (it != allocations_.end() && it->second.keys.empty()) EndAllocation(id);
}

void BlockIndex::EndAllocation(uint64_t id) {
  auto it = allocations_.find(id);
  if (it == allocations_.end()) return;
  for (const BlockKey& key : it->second.held_parents) RemoveReader(key);
  allocations_.erase(it);
}

absl::Status BlockIndex::Write(uint64_t allocation_id, const std::string& raw_key,
                               uint64_t offset, std::string_view data) {
  TIERKV_ASSIGN_OR_RETURN(BlockKey key, ParseKey(raw_key, "key", 0));
  PoolAllocation space;
  {
    absl::MutexLock lock(&mu_);
    TIERKV_ASSIGN_OR_RETURN(Allocation * allocation, FindAllocation(allocation_id));
    if (!allocation->keys.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "key ", ShortKey(key), "... is not an uncommitted block of allocation ",
          allocation_id));
    }
    PendingBlock& p = pending_.at(key);
    if (offset > p.size || data.size() > p.size - offset) {
      return absl::OutOfRangeError(absl::StrCat(
          "write of ", data.size(), " bytes at offset ", offset, " runs past the block's ",
          "declared size of ", p.size, " bytes; nothing was written"));
    }
    if (p.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("block ", ShortKey(key), "... is being committed; it cannot change"));
    }
    if (p.on_gpu) {
      return absl::FailedPreconditionError(absl::StrCat(
          "block ", ShortKey(key), "... was allocated in the GPU tier, which only a writer "
          "sharing the node's GPU can fill (in place); Allocate without the GPU tier to Put"));
    }
    ++p.writers;
    space = p.space;
  }
  pool_->Write(space, offset, data.data(), data.size());
  absl::MutexLock lock(&mu_);
  // The entry outlives the copy: DropPending defers while writers > 0, and Commit refuses
  // blocks with writers.
  PendingBlock& p = pending_.at(key);
  if (--p.writers == 0 && p.doomed) {
    DropPending(key);
    return absl::FailedPreconditionError(absl::StrCat(
        "block ", ShortKey(key), "... was aborted or its lease expired during the write"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> BlockIndex::Commit(
    uint64_t allocation_id, const std::vector<std::pair<std::string, uint64_t>>& blocks) {
  if (blocks.empty()) return absl::InvalidArgumentError("Commit of no blocks");
  std::vector<BlockKey> keys;
  keys.reserve(blocks.size());
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> seen;
  for (size_t i = 0; i < blocks.size(); ++i) {
    TIERKV_ASSIGN_OR_RETURN(BlockKey key, ParseKey(blocks[i].first, "blocks.key", i));
    if (!seen.insert(key).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("blocks[", i, "]: key ", ShortKey(key), "... is listed twice"));
    }
    keys.push_back(key);
  }
  std::vector<PoolAllocation> spaces;
  std::vector<bool> on_gpu;
  const bool write_through = ssd_ != nullptr && options_.ssd_write_through;
  std::vector<SsdTier::WriteItem> ssd_items;
  {
    absl::MutexLock lock(&mu_);
    TIERKV_ASSIGN_OR_RETURN(Allocation * allocation, FindAllocation(allocation_id));
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!allocation->keys.contains(keys[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "blocks[", i, "]: key ", ShortKey(keys[i]),
            "... is not an uncommitted block of allocation ", allocation_id));
      }
      const PendingBlock& p = pending_.at(keys[i]);
      if (p.committing || p.writers > 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "blocks[", i, "]: a ", p.committing ? "commit" : "write", " of block ",
            ShortKey(keys[i]), "... is in progress; commit once it has finished"));
      }
    }
    if (write_through) {
      // SSD space first, so that a full SSD fails the commit before anything changes.
      const absl::Time now = clock_->Now();
      for (size_t i = 0; i < keys.size(); ++i) {
        const PendingBlock& p = pending_.at(keys[i]);
        auto location = ReserveSsd(p.size);
        if (!location.ok()) {
          for (const SsdTier::WriteItem& item : ssd_items) ssd_->Unreserve(item.record.location);
          ++counters_.ssd_write_failures;
          return absl::Status(location.status().code(),
                              absl::StrCat("write-through to the SSD tier: ",
                                           location.status().message(),
                                           "; nothing was committed"));
        }
        SsdRecord r;
        r.key = keys[i];
        r.parent = p.parent;
        r.size = p.size;
        r.codec = p.codec;
        r.checksum = blocks[i].second;
        r.fingerprint = allocation->fingerprint;
        r.last_use_unix_ms = absl::ToUnixMillis(now);
        r.location = *location;
        ssd_items.push_back(SsdTier::WriteItem{r, Pieces<const uint8_t>(*pool_, p.space)});
      }
    }
    for (const BlockKey& key : keys) {
      PendingBlock& p = pending_.at(key);
      p.committing = true;
      ++p.writers;
      spaces.push_back(p.space);
      on_gpu.push_back(p.on_gpu);
    }
  }
  // Checksums of large payloads (and write-through to SSD) run outside the lock; `writers`
  // keeps the space alive. Blocks on the GPU are hashed there, in one batch.
  std::vector<uint64_t> actual(keys.size());
  std::vector<PoolAllocation> gpu_spaces;
  std::vector<size_t> gpu_index;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (on_gpu[i]) {
      gpu_spaces.push_back(spaces[i]);
      gpu_index.push_back(i);
    } else {
      actual[i] = pool_->Checksum(spaces[i]);
    }
  }
  absl::Status gpu_hashed;
  if (!gpu_spaces.empty()) {
    std::vector<uint64_t> sums(gpu_spaces.size());
    gpu_hashed = gpu_->Checksums(gpu_spaces, sums);
    for (size_t j = 0; j < sums.size(); ++j) actual[gpu_index[j]] = sums[j];
  }
  bool sums_match = gpu_hashed.ok();
  for (size_t i = 0; i < keys.size(); ++i) sums_match = sums_match && actual[i] == blocks[i].second;
  std::vector<absl::Status> ssd_written;
  if (write_through && sums_match) ssd_written = ssd_->Write(ssd_items);

  absl::MutexLock lock(&mu_);
  // Undoes the write-through when the commit does not happen.
  auto undo_ssd = [&] {
    std::vector<SsdRecord> written;
    for (size_t i = 0; i < ssd_items.size(); ++i) {
      if (i < ssd_written.size() && ssd_written[i].ok()) {
        written.push_back(ssd_items[i].record);
      } else {
        ssd_->Unreserve(ssd_items[i].record.location);
      }
    }
    if (!written.empty()) (void)ssd_->Remove(written);
  };
  size_t bad = keys.size();
  bool lost = false;
  for (size_t i = 0; i < keys.size(); ++i) {
    PendingBlock& p = pending_.at(keys[i]);
    p.committing = false;
    --p.writers;
    if (p.doomed) lost = true;
    if (bad == keys.size() && actual[i] != blocks[i].second) bad = i;
  }
  if (lost) {
    for (const BlockKey& key : keys) {
      auto it = pending_.find(key);
      if (it != pending_.end() && it->second.doomed && it->second.writers == 0) DropPending(key);
    }
  }
  auto allocation = FindAllocation(allocation_id);
  if (!allocation.ok()) {
    undo_ssd();
    return allocation.status();
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!(*allocation)->keys.contains(keys[i])) {
      undo_ssd();
      return absl::FailedPreconditionError(absl::StrCat(
          "blocks[", i, "]: block ", ShortKey(keys[i]),
          "... was aborted while its commit ran; nothing was committed"));
    }
  }
  for (size_t i = 0; i < ssd_written.size(); ++i) {
    if (ssd_written[i].ok()) continue;
    undo_ssd();
    ++counters_.ssd_write_failures;
    return absl::Status(ssd_written[i].code(),
                        absl::StrCat("blocks[", i, "]: write-through to the SSD tier failed: ",
                                     ssd_written[i].message(),
                                     "; nothing was committed: commit again or abort"));
  }
  if (!gpu_hashed.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "checksums of the blocks written to the GPU tier could not be computed (",
        gpu_hashed.message(), "); nothing was committed: commit again or abort"));
  }
  if (bad != keys.size()) {
    undo_ssd();
    ++counters_.checksum_failures;
    return absl::DataLossError(absl::StrCat(
        "blocks[", bad, "]: checksum of the bytes written to block ", ShortKey(keys[bad]),
        "... is ", absl::Hex(actual[bad], absl::kZeroPad16), ", not the declared ",
        absl::Hex(blocks[bad].second, absl::kZeroPad16),
        "; nothing was committed: rewrite the block and commit again, or abort"));
  }
  if (absl::Status cycle = CheckNoCycle(keys); !cycle.ok()) {
    undo_ssd();
    return cycle;
  }
  const absl::Time now = clock_->Now();
  const Digest fingerprint = (*allocation)->fingerprint;
  size_t creating = 0;
  for (const BlockKey& key : keys) creating += !blocks_.contains(key);
  SlabCursor slots(creating);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto node = pending_.extract(keys[i]);
    PendingBlock& p = node.mapped();
    (*allocation)->keys.erase(keys[i]);
    CommittedBlockPtr& owned = blocks_[keys[i]];
    if (owned == nullptr) {
      owned = slots.New();
      owned->key = keys[i];
      probe_.Insert(owned.get());
    }
    CommittedBlock& block = *owned;
    block.key = keys[i];
    block.parent = p.parent;
    block.size = static_cast<uint32_t>(p.size);  // At most kMaxBlockBytes (Allocate).
    block.checksum = blocks[i].second;
    block.codec = static_cast<uint8_t>(p.codec);
    block.fingerprint = fingerprint;
    block.fingerprint_id = FingerprintId(fingerprint);
    if (p.on_gpu) {
      block.gpu_space = p.space;
      block.in_gpu = true;
      block.in_host = false;
      ++gpu_blocks_;
      gpu_bytes_ += block.size;
    } else {
      block.space = p.space;
      SyncHostOffset(block);
      block.in_host = true;
      ++host_blocks_;
      host_bytes_ += block.size;
      committed_reserved_ += block.space.reserved_bytes;
    }
    if (write_through) {
      block.ssd = ssd_items[i].record.location;
      ++ssd_blocks_;
      ssd_bytes_ += block.size;
    }
    block.committed_at = now;
    block.last_access_ = now;  // A new block: nothing pending in its slab.
    block.commit_seq = next_seq_++;
    block.touch_seq_ = next_seq_++;
    // Children may have been committed before their parent (or kept after it was evicted).
    auto kids = children_.find(block.key);
    uint32_t kept_children = 0;
    if (kids != children_.end()) {
      block.children = kids->second.size();
      for (const BlockKey& child : kids->second) {
        const CommittedBlock& c = *blocks_.at(child);
        kept_children += c.kept > 0;
        block.host_children += c.in_host;
      }
    }
    Relist(block);
    // Kept children make this block kept too.
    if (kept_children > 0) AdjustKept(&block, static_cast<int>(kept_children));
    by_commit_.emplace(block.commit_seq, &block);
    if (block.parent) {
      children_[*block.parent].push_back(block.key);
      if (CommittedBlock* parent = FindParent(block)) {
        Unlist(*parent);
        ++parent->children;
        parent->host_children += block.in_host;
        Relist(*parent);
      }
    }
    committed_bytes_ += block.size;
    evicted_.erase(block.key);
    Publish(EventType::kStored, block, "", block.in_gpu ? kTierGpu : kTierHost);
  }
  counters_.commits += keys.size();
  FinishAllocationIfEmpty(allocation_id);
  return static_cast<uint32_t>(keys.size());
}

absl::Status BlockIndex::CheckNoCycle(const std::vector<BlockKey>& keys) {
  // Each block has at most one parent, so a cycle shows as a walk up the parents that
  // returns to a block of its own walk. Committed blocks can close one only through a
  // committed child of a block being committed (children committed before their parent).
  absl::flat_hash_map<BlockKey, std::optional<BlockKey>, BlockKeyHash, BlockKeyEq> parent_of;
  bool orphans = false;
  for (const BlockKey& key : keys) {
    parent_of[key] = pending_.at(key).parent;
    orphans = orphans || children_.contains(key);
  }
  enum : uint8_t { kOnWalk = 1, kDone = 2 };
  absl::flat_hash_map<BlockKey, uint8_t, BlockKeyHash, BlockKeyEq> state;
  for (const BlockKey& start : keys) {
    std::vector<BlockKey> walk;
    std::optional<BlockKey> cur = start;
    while (cur) {
      auto [it, fresh] = state.try_emplace(*cur, kOnWalk);
      if (!fresh) {
        if (it->second == kOnWalk) {
          return absl::InvalidArgumentError(absl::StrCat(
              "block ", ShortKey(*cur), "... would become its own ancestor: the parent keys "
              "of this commit and of committed blocks form a cycle; nothing was committed"));
        }
        break;
      }
      walk.push_back(*cur);
      if (auto p = parent_of.find(*cur); p != parent_of.end()) {
        cur = p->second;
      } else if (auto b = orphans ? blocks_.find(*cur) : blocks_.end(); b != blocks_.end()) {
        cur = b->second->parent;
      } else {
        cur.reset();
      }
    }
    for (const BlockKey& k : walk) state[k] = kDone;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> BlockIndex::Abort(uint64_t allocation_id,
                                           const std::vector<std::string>& raw_keys) {
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(raw_keys, "keys"));
  absl::MutexLock lock(&mu_);
  TIERKV_ASSIGN_OR_RETURN(Allocation * allocation, FindAllocation(allocation_id));
  if (keys.empty()) keys.assign(allocation->keys.begin(), allocation->keys.end());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!allocation->keys.contains(keys[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys[", i, "]: ", ShortKey(keys[i]), "... is not an uncommitted block of allocation ",
          allocation_id));
    }
  }
  for (const BlockKey& key : keys) {
    allocation->keys.erase(key);
    DropPending(key);
  }
  counters_.aborts += keys.size();
  FinishAllocationIfEmpty(allocation_id);
  return static_cast<uint32_t>(keys.size());
}

// ---------------------------------------------------------------------------------------
// Operator actions.

absl::StatusOr<uint32_t> BlockIndex::SetPinned(const std::vector<std::string>& raw_keys,
                                               bool pinned) {
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(raw_keys, "keys"));
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!blocks_.contains(keys[i])) {
      return absl::NotFoundError(absl::StrCat("keys[", i, "]: block ", ToHex(keys[i]),
                                              " is not committed here; nothing changed"));
    }
  }
  uint32_t changed = 0;
  for (const BlockKey& key : keys) {
    CommittedBlock& block = *blocks_.at(key);
    if (block.pinned == pinned) continue;
    const bool was = IsProtected(block);
    block.pinned = pinned;
    UpdateProtection(block, was);
    pinned_blocks_ += pinned ? 1 : -1;
    ++changed;
  }
  return changed;
}

absl::StatusOr<EvictResult> BlockIndex::Evict(const std::vector<std::string>& raw_keys) {
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(raw_keys, "keys"));
  absl::MutexLock lock(&mu_);
  std::vector<BlockKey> doomed;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!blocks_.contains(keys[i])) {
      return absl::NotFoundError(absl::StrCat("keys[", i, "]: block ", ToHex(keys[i]),
                                              " is not committed here; nothing was evicted"));
    }
    CollectSubtree(keys[i], doomed);
  }
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> unique;
  for (const BlockKey& key : doomed) {
    if (!unique.insert(key).second) continue;
    const CommittedBlock& block = *blocks_.at(key);
    if (block.moving) {
      return absl::UnavailableError(absl::StrCat(
          "block ", ToHex(key), " is being moved between the host and SSD tiers; nothing was "
          "evicted: retry in a moment"));
    }
    if (IsProtected(block)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "block ", ToHex(key), block.pinned ? " is pinned" : " is leased by a reader",
          key == keys[0] ? "" : " (a descendant of a block asked for)",
          "; nothing was evicted: unpin it or wait for the lease to end"));
    }
  }
  EvictResult result;
  // Deepest first, so that every block is a leaf when it goes.
  for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
    auto block = blocks_.find(*it);
    if (block == blocks_.end()) continue;
    result.bytes_freed += block->second->space.reserved_bytes;
    if (block->second->ssd) result.bytes_freed += block->second->ssd->reserved;
    if (block->second->in_gpu) result.bytes_freed += block->second->gpu_space.reserved_bytes;
    ++result.evicted;
    RemoveBlock(*block->second, "requested", false);
  }
  return result;
}

absl::StatusOr<EvictResult> BlockIndex::DropCorrupt(const std::vector<std::string>& raw_keys) {
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(raw_keys, "keys"));
  // The copies a reader may be handed (the GPU copy to readers sharing the GPU, the host
  // copy to everyone else), hashed outside the lock under a reader hold of each block, as
  // Commit hashes outside it: other calls go on meanwhile.
  struct Copies {
    uint64_t checksum = 0;
    std::optional<PoolAllocation> host, gpu;
    bool bad = false;
  };
  std::vector<Copies> copies(keys.size());
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = blocks_.find(keys[i]);
      if (it == blocks_.end()) {
        return absl::NotFoundError(absl::StrCat("keys[", i, "]: block ", ToHex(keys[i]),
                                                " is not committed here; nothing was dropped"));
      }
      if (it->second->moving) {
        return absl::FailedPreconditionError(absl::StrCat(
            "keys[", i, "]: block ", ToHex(keys[i]), " is being moved between tiers; nothing "
            "was dropped: retry in a moment"));
      }
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      CommittedBlock& block = *blocks_.at(keys[i]);
      copies[i].checksum = block.checksum;
      if (block.in_host) copies[i].host = block.space;
      if (block.in_gpu) copies[i].gpu = block.gpu_space;
      AddReader(block);
    }
  }
  absl::Status hashed;
  for (Copies& c : copies) {
    if (c.host) c.bad = pool_->Checksum(*c.host) != c.checksum;
    if (!c.bad && c.gpu && hashed.ok()) {
      std::vector<uint64_t> sums(1);
      hashed = gpu_->Checksums(std::span<const PoolAllocation>(&*c.gpu, 1), sums);
      c.bad = hashed.ok() && sums[0] != c.checksum;
    }
  }
  absl::MutexLock lock(&mu_);
  for (const BlockKey& key : keys) RemoveReader(key);
  TIERKV_RETURN_IF_ERROR(hashed);
  std::vector<BlockKey> doomed;
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> corrupt;
  for (size_t i = 0; i < keys.size(); ++i) {
    // A block that left meanwhile (its own eviction, another report) needs nothing more.
    if (!copies[i].bad || !blocks_.contains(keys[i])) continue;
    corrupt.insert(keys[i]);
    CollectSubtree(keys[i], doomed);
  }
  absl::flat_hash_set<BlockKey, BlockKeyHash, BlockKeyEq> unique;
  for (const BlockKey& key : doomed) {
    if (!unique.insert(key).second) continue;
    const CommittedBlock& block = *blocks_.at(key);
    if (block.moving || block.readers > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "block ", ToHex(key), block.moving ? " is being moved between tiers" : " is leased",
          " (it or an ancestor does not match its checksum); nothing was dropped: retry once "
          "its readers are done"));
    }
  }
  EvictResult result;
  for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
    auto block = blocks_.find(*it);
    if (block == blocks_.end()) continue;
    CommittedBlock& b = *block->second;
    if (b.pinned) {  // Unpinned the way SetPinned does, so the kept counts stay exact.
      b.pinned = false;
      UpdateProtection(b, /*was_protected=*/true);
      --pinned_blocks_;
    }
    result.bytes_freed += b.space.reserved_bytes;
    if (b.ssd) result.bytes_freed += b.ssd->reserved;
    if (b.in_gpu) result.bytes_freed += b.gpu_space.reserved_bytes;
    ++result.evicted;
    // Descendants of a corrupt block are intact but unreachable without it.
    const bool bad = corrupt.contains(*it);
    RemoveBlock(b, bad ? "checksum failure reported by a reader" : "requested", bad);
  }
  return result;
}

// ---------------------------------------------------------------------------------------
// Reads and reports.

absl::StatusOr<BlockIndex::ReadHold> BlockIndex::Hold(
    const std::string& raw_key, absl::FunctionRef<void(const CommittedBlock&)> info) {
  TIERKV_ASSIGN_OR_RETURN(BlockKey key, ParseKey(raw_key, "key", 0));
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find(key);
  // An SSD-only block is promoted to host memory first (the lock is released for the read).
  for (int round = 0; round < 4 && it != blocks_.end() && !it->second->in_host; ++round) {
    if (it->second->moving) {
      WaitForMove(key);
    } else {
      Promote({key});
    }
    it = blocks_.find(key);
  }
  if (it == blocks_.end()) {
    auto ev = evicted_.find(key);
    if (ev != evicted_.end() && ev->second.checksum_failure) {
      return absl::DataLossError(absl::StrCat("block ", ToHex(key), " was dropped: ",
                                              ev->second.reason));
    }
    return absl::NotFoundError(absl::StrCat("block ", ToHex(key), " is not committed here"));
  }
  if (!it->second->in_host) {
    return absl::UnavailableError(absl::StrCat(
        "block ", ToHex(key), " is on ", it->second->in_gpu ? "the GPU" : "SSD",
        " and could not be brought into host memory (the host tier is full of pinned, "
        "leased or pending blocks); retry later"));
  }
  AddReader(*it->second);
  Touch(*it->second);  // Applies what is pending first.
  it->second->last_access_ = clock_->Now();
  info(*it->second);
  ReadHold hold;
  hold.index_ = this;
  hold.key_ = key;
  hold.space_ = it->second->space;
  return hold;
}

void BlockIndex::ReadHold::Release() {
  if (index_ == nullptr) return;
  absl::MutexLock lock(&index_->mu_);
  index_->RemoveReader(key_);
  index_ = nullptr;
}

absl::Status BlockIndex::Read(const std::string& raw_key, uint64_t chunk_bytes,
                              absl::FunctionRef<void(const CommittedBlock&)> info,
                              absl::FunctionRef<bool(uint64_t, std::string_view)> chunk) {
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk size 0");
  TIERKV_ASSIGN_OR_RETURN(ReadHold hold, Hold(raw_key, info));
  std::string buffer;
  const uint64_t size = hold.space().size;
  for (uint64_t offset = 0; offset < size;) {
    const uint64_t n = std::min(chunk_bytes, size - offset);
    buffer.resize(n);
    pool_->Read(hold.space(), offset, buffer.data(), n);
    if (!chunk(offset, buffer)) break;
    offset += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<InspectEntry>> BlockIndex::Inspect(
    const std::vector<std::string>& raw_keys, const std::optional<TokenQuery>& token_query,
    absl::FunctionRef<void(size_t, const CommittedBlock&)> emit_found) {
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(raw_keys, "keys"));
  absl::MutexLock lock(&mu_);
  // Chains of the same tokens under every other model this node has seen.
  std::vector<std::pair<const ModelSpec*, std::vector<BlockKey>>> other_chains;
  Digest query_fingerprint{};
  if (token_query) {
    query_fingerprint = ModelFingerprint(token_query->model);
    for (auto& [fp, spec] : known_models_) {
      if (fp == query_fingerprint) continue;
      other_chains.emplace_back(
          &spec, BlockKeyChain(RootKey(fp, token_query->salt), token_query->tokens,
                               spec.block_tokens));
    }
  }
  std::vector<InspectEntry> out(keys.size());
  bool reachable = true;
  for (size_t i = 0; i < keys.size(); ++i) {
    InspectEntry& e = out[i];
    e.key = keys[i];
    auto it = blocks_.find(keys[i]);
    if (it != blocks_.end()) {
      const CommittedBlock& block = *it->second;
      if (reachable) {
        e.state = InspectState::kFound;
        std::vector<std::string> copies;
        if (block.in_gpu) copies.push_back("in GPU memory");
        if (block.in_host) copies.push_back("in host memory");
        if (block.ssd && (block.in_host || block.in_gpu)) copies.push_back("on SSD");
        std::string where = absl::StrJoin(copies, " and ");
        if (!block.in_host && !block.in_gpu) {
          where = absl::StrCat("on SSD (slab ", block.ssd->slab, ", offset ", block.ssd->offset,
                               "; promoted to host memory on the next read)");
        } else if (!block.in_host) {
          absl::StrAppend(&where, " (copied to host memory for readers outside the GPU)");
        }
        e.detail = absl::StrCat(where, ", ", block.size, " bytes, ", block.hits(), " hits",
                                block.pinned ? ", pinned" : "",
                                block.moving ? ", moving between tiers" : "");
      } else {
        e.state = InspectState::kUnreachable;
        e.detail = "committed, but an earlier block of the chain is missing, so a Lookup "
                   "stops before it";
      }
      emit_found(i, block);
      continue;
    }
    reachable = false;
    if (auto p = pending_.find(keys[i]); p != pending_.end()) {
      e.state = InspectState::kUncommitted;
      auto a = allocations_.find(p->second.allocation_id);
      e.detail = absl::StrCat("allocated by allocation ", p->second.allocation_id,
                              " but not committed yet",
                              a == allocations_.end()
                                  ? std::string()
                                  : absl::StrCat("; its write lease ends ",
                                                 TimeString(a->second.expires)));
      continue;
    }
    if (auto ev = evicted_.find(keys[i]); ev != evicted_.end()) {
      e.state = ev->second.checksum_failure ? InspectState::kChecksumFailure
                                            : InspectState::kEvicted;
      e.detail = absl::StrCat(ev->second.checksum_failure ? "dropped at " : "evicted at ",
                              TimeString(ev->second.when), " (", ev->second.reason, ")");
      continue;
    }
    e.state = InspectState::kNeverStored;
    e.detail = "no record of this block: never stored here (or evicted long ago)";
    for (auto& [spec, chain] : other_chains) {
      // Block boundaries differ when block_tokens differs; compare the same token span.
      const uint64_t end_token = uint64_t{i + 1} * token_query->model.block_tokens;
      if (end_token % spec->block_tokens != 0) continue;
      const uint64_t j = end_token / spec->block_tokens;
      if (j == 0 || j > chain.size() || !blocks_.contains(chain[j - 1])) continue;
      e.state = InspectState::kFingerprintMismatch;
      e.detail = absl::StrCat("these tokens are cached under another model spec: model_id '",
                              spec->model_id, "', weights '", spec->weights_digest, "', ",
                              spec->num_layers, " layers, ", spec->num_kv_heads, " kv heads, ",
                              "head_dim ", spec->head_dim, ", ", spec->kv_dtype,
                              ", block_tokens ", spec->block_tokens, ", tp ", spec->tp_rank,
                              "/", spec->tp_size);
      break;
    }
  }
  return out;
}

uint64_t BlockIndex::List(uint64_t after, size_t limit,
                          absl::FunctionRef<void(const CommittedBlock&)> emit) {
  absl::MutexLock lock(&mu_);
  uint64_t last = 0;
  size_t n = 0;
  for (auto it = by_commit_.upper_bound(after); it != by_commit_.end() && n < limit; ++it, ++n) {
    emit(*it->second);
    last = it->first;
  }
  return last;
}

size_t BlockIndex::ExpireLeases() {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> expired;
  for (auto& [id, allocation] : allocations_) {
    if (allocation.expires <= now) expired.push_back(id);
  }
  for (uint64_t id : expired) ExpireAllocation(id);
  size_t n = expired.size();
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.expires <= now) {
      for (const BlockKey& key : it->second.keys) RemoveReader(key);
      leases_.erase(it++);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void BlockIndex::SetDraining(bool draining) {
  absl::MutexLock lock(&mu_);
  draining_ = draining;
}

IndexStats BlockIndex::Stats() {
  absl::MutexLock lock(&mu_);
  IndexStats s = counters_;
  s.blocks = blocks_.size();
  s.bytes = committed_bytes_;
  s.used_bytes = pool_->used_bytes();
  s.capacity_bytes = pool_->capacity_bytes();
  s.page_bytes = pool_->page_bytes();
  s.pending_allocations = allocations_.size();
  s.pending_blocks = pending_.size();
  s.read_leases = leases_.size();
  s.pinned_blocks = pinned_blocks_;
  s.draining = draining_;
  s.host_blocks = host_blocks_;
  s.host_bytes = host_bytes_;
  s.ssd_write_through = options_.ssd_write_through;
  if (admission_ != nullptr) {
    absl::MutexLock admission_lock(&admission_mu_);
    s.admission = admission_->Describe();
    s.admission_switches = admission_->switches();
  }
  if (ssd_ != nullptr) {
    s.has_ssd = true;
    s.ssd_blocks = ssd_blocks_;
    s.ssd_bytes = ssd_bytes_;
    const SsdTierStats t = ssd_->Stats();
    s.ssd_used_bytes = t.reserved_bytes;
    s.ssd_capacity_bytes = t.capacity_bytes;
  }
  if (gpu_ != nullptr) {
    s.has_gpu = true;
    s.gpu_device = gpu_->Describe();
    s.gpu_blocks = gpu_blocks_;
    s.gpu_bytes = gpu_bytes_;
    s.gpu_used_bytes = gpu_->pool().used_bytes();
    s.gpu_capacity_bytes = gpu_->pool().capacity_bytes();
  }
  return s;
}

void BlockIndex::Recover(const SsdRecovery& recovery) {
  absl::MutexLock lock(&mu_);
  for (const ModelSpec& spec : recovery.models) {
    if (known_models_.size() >= kMaxKnownModels) break;
    known_models_.emplace(ModelFingerprint(spec), spec);
  }
  // Coldest first, so that recency order continues where the last run left it.
  std::vector<const SsdRecord*> order;
  order.reserve(recovery.records.size());
  for (const SsdRecord& r : recovery.records) order.push_back(&r);
  std::sort(order.begin(), order.end(), [](const SsdRecord* a, const SsdRecord* b) {
    return a->last_use_unix_ms < b->last_use_unix_ms;
  });
  blocks_.reserve(blocks_.size() + order.size());
  uint64_t recovered = 0;
  for (const SsdRecord* r : order) {
    if (r->size > kMaxBlockBytes) {
      // No Allocate makes a larger block: the record is not one of this index's. Its
      // space goes back to the tier.
      if (ssd_ != nullptr && !ssd_->Remove(std::span<const SsdRecord>(r, 1)).ok()) {
        ++counters_.ssd_write_failures;
      }
      continue;
    }
    auto [it, inserted] = blocks_.try_emplace(r->key);
    if (!inserted) continue;
    ++recovered;
    it->second = SlabCursor(1).New();
    it->second->key = r->key;
    probe_.Insert(it->second.get());
    CommittedBlock& block = *it->second;
    block.key = r->key;
    block.parent = r->parent;
    block.size = static_cast<uint32_t>(r->size);
    block.checksum = r->checksum;
    block.codec = static_cast<uint8_t>(r->codec);
    block.fingerprint = r->fingerprint;
    block.fingerprint_id = FingerprintId(r->fingerprint);
    block.in_host = false;
    block.ssd = r->location;
    block.committed_at = absl::FromUnixMillis(r->last_use_unix_ms);
    block.last_access_ = block.committed_at;  // A new block: nothing pending in its slab.
    block.commit_seq = next_seq_++;
    block.touch_seq_ = next_seq_++;
    by_commit_.emplace(block.commit_seq, &block);
    if (block.parent) children_[*block.parent].push_back(block.key);
    ++ssd_blocks_;
    ssd_bytes_ += block.size;
    committed_bytes_ += block.size;
  }
  for (auto& [parent_key, kids] : children_) {
    auto parent = blocks_.find(parent_key);
    if (parent != blocks_.end()) parent->second->children = kids.size();
  }
  for (auto& [key, block_ptr] : blocks_) {
    CommittedBlock& block = *block_ptr;
    Relist(block);
  }
  counters_.ssd_recovered_blocks += recovered;
}

absl::Status BlockIndex::CheckInvariants() {
  absl::MutexLock lock(&mu_);
  if (probe_.size() != blocks_.size()) {
    return absl::InternalError(absl::StrCat("probe table holds ", probe_.size(), " blocks, not ",
                                            blocks_.size()));
  }
  for (const auto& [key, block] : blocks_) {
    if (probe_.Find(key) != block.get()) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " not in the probe table"));
    }
  }
  // A slab's pending run (checked first: the accessors below apply it) holds live blocks in
  // no eviction order only.
  absl::flat_hash_map<const BlockSlab*, uint32_t> in_pending_run;
  for (const auto& [key, block] : blocks_) {
    const BlockSlab& slab = *block->slab;
    const uint32_t slot = slab.SlotOf(block.get());
    const bool in_run = slab.pending.count != 0 && slot >= slab.pending.first &&
                        slot < slab.pending.end;
    if (block->in_pending_run_ != in_run) {
      return absl::InternalError(absl::StrCat(
          "block ", ShortKey(key),
          in_run ? " is in its slab's pending run but not marked so"
                 : " is marked as in a pending run it is not in"));
    }
    if (!in_run) continue;
    if (block->listed) {
      return absl::InternalError(
          absl::StrCat("block ", ShortKey(key), " in a pending run is in an eviction order"));
    }
    ++in_pending_run[&slab];
  }
  for (const auto& [slab, live] : in_pending_run) {
    if (live != slab->pending.end - slab->pending.first) {
      return absl::InternalError(absl::StrCat("a slab's pending run of ",
                                              slab->pending.end - slab->pending.first,
                                              " slots holds ", live, " blocks"));
    }
  }
  uint64_t reserved = 0;
  uint64_t bytes = 0;
  uint64_t ssd_blocks = 0;
  uint64_t ssd_bytes = 0;
  uint64_t host_blocks = 0;
  uint64_t gpu_blocks = 0;
  uint64_t gpu_bytes = 0;
  uint64_t gpu_reserved = 0;
  size_t gpu_listed = 0;
  size_t leaves = 0;
  size_t host_leaves = 0;
  size_t ssd_listed = 0;
  auto listed = [](const absl::btree_map<uint64_t, CommittedBlock*>& order,
                   const CommittedBlock& b) {
    auto it = order.find(b.touch_seq());
    return it != order.end() && it->second == &b;
  };
  for (auto& [key, block_ptr] : blocks_) {
    CommittedBlock& block = *block_ptr;
    if (!block.in_host && !block.ssd && !block.in_gpu) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " is in no tier"));
    }
    if (block.in_gpu && gpu_ == nullptr) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " on a GPU without a tier"));
    }
    if (!block.in_gpu && !block.gpu_space.extents.empty()) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " keeps GPU space"));
    }
    if (block.in_gpu != listed(gpu_order_, block)) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " misplaced in the GPU order"));
    }
    if (block.in_gpu) {
      ++gpu_blocks;
      gpu_bytes += block.size;
      gpu_reserved += block.gpu_space.reserved_bytes;
      ++gpu_listed;
    }
    if (block.ssd && ssd_ == nullptr) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " on SSD without a tier"));
    }
    if (!block.in_host && !block.space.extents.empty()) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " keeps host space"));
    }
    if (block.in_host) {
      reserved += block.space.reserved_bytes;
      ++host_blocks;
    }
    if (block.ssd) {
      ++ssd_blocks;
      ssd_bytes += block.size;
    }
    if (!block.in_host && !block.in_gpu && block.readers > 0 && !block.moving) {
      // Only allocations extending an SSD-only block hold it without a host copy.
      bool by_allocation = false;
      for (auto& [id, a] : allocations_) {
        for (const BlockKey& k : a.held_parents) by_allocation = by_allocation || k == key;
      }
      if (!by_allocation) {
        return absl::InternalError(absl::StrCat("SSD-only block ", ShortKey(key),
                                                " has readers without an allocation"));
      }
    }
    bytes += block.size;
    auto kids = children_.find(key);
    const size_t children = kids == children_.end() ? 0 : kids->second.size();
    uint32_t host_children = 0;
    if (kids != children_.end()) {
      for (const BlockKey& child : kids->second) host_children += blocks_.at(child)->in_host;
    }
    if (children != block.children || host_children != block.host_children) {
      return absl::InternalError(absl::StrCat(
          "block ", ShortKey(key), " counts ", block.children, "/", block.host_children,
          " children/in host, has ", children, "/", host_children));
    }
    const bool leaf = block.children == 0;
    const bool host_leaf = block.in_host && block.host_children == 0;
    const bool ssd_candidate =
        block.ssd && (block.in_host || block.in_gpu || block.children == 0);
    if (leaf != listed(leaves_, block) || host_leaf != listed(host_leaves_, block) ||
        ssd_candidate != listed(ssd_order_, block)) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key),
                                              " misplaced in the eviction orders"));
    }
    // Lookup skips Unlist / Relist for blocks whose `listed` is false: it must never be
    // false for a block in an order.
    if (!block.listed && (leaf || host_leaf || ssd_candidate || block.in_gpu)) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key),
                                              " is in an eviction order but not marked listed"));
    }
    if (block.in_host) {
      const uint64_t want = HostOffsetOf(block.space);
      if (block.host_offset != want) {
        return absl::InternalError(absl::StrCat("block ", ShortKey(key), " has host offset ",
                                                block.host_offset, ", its space says ", want));
      }
    }
    auto id = fingerprint_ids_.find(block.fingerprint);
    if (id == fingerprint_ids_.end() || id->second != block.fingerprint_id) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key),
                                              " has the wrong fingerprint number"));
    }
    leaves += leaf;
    host_leaves += host_leaf;
    ssd_listed += ssd_candidate;
  }
  if (leaves != leaves_.size() || host_leaves != host_leaves_.size() ||
      ssd_listed != ssd_order_.size()) {
    return absl::InternalError(absl::StrCat(
        "eviction orders hold ", leaves_.size(), "/", host_leaves_.size(), "/",
        ssd_order_.size(), " blocks; there are ", leaves, "/", host_leaves, "/", ssd_listed));
  }
  if (gpu_listed != gpu_order_.size() || gpu_blocks != gpu_blocks_ || gpu_bytes != gpu_bytes_) {
    return absl::InternalError(absl::StrCat("GPU order/blocks/bytes ", gpu_order_.size(), "/",
                                            gpu_blocks_, "/", gpu_bytes_, ", recomputed ",
                                            gpu_listed, "/", gpu_blocks, "/", gpu_bytes));
  }
  if (gpu_ != nullptr) {
    for (auto& [key, p] : pending_) gpu_reserved += p.on_gpu ? p.space.reserved_bytes : 0;
    if (gpu_reserved != gpu_->pool().used_bytes()) {
      return absl::InternalError(absl::StrCat("GPU blocks reserve ", gpu_reserved,
                                              " bytes; the GPU pool says ",
                                              gpu_->pool().used_bytes()));
    }
  }
  uint64_t host_bytes = 0;
  for (auto& [key, block_ptr] : blocks_) {
    CommittedBlock& block = *block_ptr;
    host_bytes += block.in_host ? block.size : 0;
  }
  if (ssd_blocks != ssd_blocks_ || ssd_bytes != ssd_bytes_ || host_blocks != host_blocks_ ||
      host_bytes != host_bytes_) {
    return absl::InternalError(absl::StrCat("tier counts ", host_blocks_, "/", ssd_blocks_, "/",
                                            ssd_bytes_, ", recomputed ", host_blocks, "/",
                                            ssd_blocks, "/", ssd_bytes));
  }
  // Recompute every kept count bottom-up from its definition and compare.
  uint64_t committed_reserved = reserved;
  uint64_t kept_bytes = 0;
  uint64_t protected_host_bytes = 0;
  for (auto& [key, block_ptr] : blocks_) {
    CommittedBlock& block = *block_ptr;
    uint32_t kept = IsProtected(block) ? 1 : 0;
    auto kids = children_.find(key);
    if (kids != children_.end()) {
      for (const BlockKey& child : kids->second) kept += blocks_.at(child)->kept > 0;
    }
    if (kept != block.kept) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " kept count ",
                                              block.kept, ", should be ", kept));
    }
    if (kept > 0) kept_bytes += block.space.reserved_bytes;
    if (IsProtected(block) && block.in_host) protected_host_bytes += block.space.reserved_bytes;
  }
  if (protected_host_bytes != protected_host_bytes_) {
    return absl::InternalError(absl::StrCat("protected host bytes ", protected_host_bytes_,
                                            ", recomputed ", protected_host_bytes));
  }
  if (committed_reserved != committed_reserved_ || kept_bytes != kept_bytes_) {
    return absl::InternalError(absl::StrCat(
        "reserved/kept bytes ", committed_reserved_, "/", kept_bytes_, ", recomputed ",
        committed_reserved, "/", kept_bytes));
  }
  for (auto& [key, p] : pending_) reserved += p.on_gpu ? 0 : p.space.reserved_bytes;
  if (reserved != pool_->used_bytes()) {
    return absl::InternalError(absl::StrCat("blocks reserve ", reserved, " bytes; the pool says ",
                                            pool_->used_bytes()));
  }
  if (bytes != committed_bytes_) {
    return absl::InternalError(absl::StrCat("committed bytes ", committed_bytes_, " != ", bytes));
  }
  if (pool_->used_bytes() > pool_->capacity_bytes()) {
    return absl::InternalError("pool over capacity");
  }
  std::vector<uint32_t> readers;
  absl::flat_hash_map<BlockKey, uint32_t, BlockKeyHash, BlockKeyEq> lease_refs;
  for (auto& [id, lease] : leases_) {
    for (const BlockKey& key : lease.keys) {
      if (!blocks_.contains(key)) {
        return absl::InternalError(absl::StrCat("lease ", id, " holds evicted block ",
                                                ShortKey(key)));
      }
      ++lease_refs[key];
    }
  }
  for (auto& [key, n] : lease_refs) {
    if (blocks_.at(key)->readers < n) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " has fewer readers than leases"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tierkv
