#include "cache_manager/block_index.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"

namespace tierkv {
namespace {

constexpr size_t kMaxKnownModels = 64;

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
  }
  return "unknown";
}

BlockIndex::BlockIndex(const BlockIndexOptions& options, HostPool* pool, Clock* clock,
                       EventLog* events)
    : options_(options), pool_(pool), clock_(clock), events_(events) {}

BlockIndex::~BlockIndex() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, block] : blocks_) pool_->Free(block.space);
  for (auto& [key, block] : pending_) pool_->Free(block.space);
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
// Recency, readers and eviction.

void BlockIndex::Touch(CommittedBlock& block) {
  if (block.children == 0) leaves_.erase(block.touch_seq);
  block.touch_seq = next_seq_++;
  if (block.children == 0) leaves_.emplace(block.touch_seq, &block);
}

void BlockIndex::AddReader(CommittedBlock& block) {
  const bool was = IsProtected(block);
  ++block.readers;
  UpdateProtection(block, was);
}

void BlockIndex::RemoveReader(const BlockKey& key) {
  auto it = blocks_.find(key);
  // Blocks with readers are never evicted, so the block is still there.
  if (it == blocks_.end() || it->second.readers == 0) return;
  const bool was = IsProtected(it->second);
  --it->second.readers;
  UpdateProtection(it->second, was);
}

void BlockIndex::UpdateProtection(CommittedBlock& block, bool was_protected) {
  const bool now = IsProtected(block);
  if (now != was_protected) AdjustKept(&block, now ? 1 : -1);
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
    if (!block->parent) return;
    auto parent = blocks_.find(*block->parent);
    block = parent == blocks_.end() ? nullptr : &parent->second;
  }
}

bool BlockIndex::EvictFor(uint64_t bytes) {
  while (pool_->free_bytes() < bytes) {
    CommittedBlock* victim = nullptr;
    // A kept leaf is a protected one (any other kept block has a kept child).
    for (auto& [seq, block] : leaves_) {
      if (block->kept == 0) {
        victim = block;
        break;
      }
    }
    if (victim == nullptr) return false;
    EvictOne(*victim, "capacity");
  }
  return true;
}

void BlockIndex::EvictOne(CommittedBlock& block, const std::string& reason) {
  const BlockKey key = block.key;
  if (block.children == 0) leaves_.erase(block.touch_seq);
  by_commit_.erase(block.commit_seq);
  if (block.parent) {
    auto siblings = children_.find(*block.parent);
    if (siblings != children_.end()) {
      auto& v = siblings->second;
      v.erase(std::remove(v.begin(), v.end(), key), v.end());
      if (v.empty()) children_.erase(siblings);
    }
    auto parent = blocks_.find(*block.parent);
    if (parent != blocks_.end() && --parent->second.children == 0) {
      leaves_.emplace(parent->second.touch_seq, &parent->second);
    }
  }
  if (block.pinned) --pinned_blocks_;
  committed_bytes_ -= block.size;
  committed_reserved_ -= block.space.reserved_bytes;
  ++counters_.evictions;
  Publish(EventType::kEvicted, block, reason);
  pool_->Free(block.space);
  blocks_.erase(key);
  RememberEvicted(key, reason);
}

void BlockIndex::RememberEvicted(const BlockKey& key, const std::string& reason) {
  if (options_.eviction_memory == 0) return;
  if (evicted_.insert_or_assign(key, EvictedRecord{clock_->Now(), reason}).second) {
    evicted_order_.push_back(key);
  }
  while (evicted_order_.size() > options_.eviction_memory) {
    evicted_.erase(evicted_order_.front());
    evicted_order_.pop_front();
  }
}

void BlockIndex::CollectSubtree(const BlockKey& key, std::vector<BlockKey>& out) {
  size_t first = out.size();
  out.push_back(key);
  for (size_t i = first; i < out.size(); ++i) {
    auto kids = children_.find(out[i]);
    if (kids == children_.end()) continue;
    for (const BlockKey& child : kids->second) out.push_back(child);
  }
}

void BlockIndex::Publish(EventType type, const CommittedBlock& block, const std::string& reason) {
  CacheEvent event;
  event.type = type;
  event.key = block.key;
  event.parent = block.parent;
  event.size = block.size;
  event.time = clock_->Now();
  event.reason = reason;
  events_->Append(std::move(event));
}

// ---------------------------------------------------------------------------------------
// Lookup and leases.

absl::StatusOr<LookupResult> BlockIndex::Lookup(
    const std::vector<std::string_view>& keys, const std::optional<Digest>& fingerprint,
    const std::vector<uint32_t>& accept_codecs, bool lease, absl::Duration lease_ttl,
    absl::FunctionRef<void(const CommittedBlock&)> emit) {
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
  auto codec_ok = [&](uint32_t codec) {
    if (accept_codecs.empty()) return codec == kCodecRaw;
    return std::find(accept_codecs.begin(), accept_codecs.end(), codec) !=
           accept_codecs.end();
  };
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ++counters_.lookups;
  LookupResult result;
  std::vector<BlockKey> leased;
  for (std::string_view raw : keys) {
    BlockKey key;
    std::memcpy(key.data(), raw.data(), kDigestBytes);
    auto it = blocks_.find(key);
    if (it == blocks_.end()) break;
    CommittedBlock& block = it->second;
    if (fingerprint && !BlockKeyEq()(block.fingerprint, *fingerprint)) break;
    if (!codec_ok(block.codec)) break;
    ++block.hits;
    block.last_access = now;
    Touch(block);
    if (lease) {
      AddReader(block);
      leased.push_back(key);
    }
    emit(block);
    ++result.found;
  }
  counters_.hits += result.found;
  counters_.misses += keys.size() - result.found;
  if (lease && !leased.empty()) {
    result.lease_id = next_lease_id_++;
    result.lease_expires =
        now + (lease_ttl == absl::ZeroDuration() ? options_.read_lease_ttl : lease_ttl);
    leases_.emplace(result.lease_id, Lease{result.lease_expires, std::move(leased)});
  }
  return result;
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
                                                    absl::Duration lease_ttl) {
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
  AllocateResult result;
  result.blocks.resize(blocks.size());
  uint64_t pages_needed = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    result.blocks[i].key = parsed[i].key;
    if (blocks_.contains(parsed[i].key)) {
      result.blocks[i].state = AllocateState::kAlreadyCommitted;
    } else if (pending_.contains(parsed[i].key)) {
      result.blocks[i].state = AllocateState::kInProgress;
    } else {
      result.blocks[i].state = AllocateState::kAllocated;
      pages_needed += pool_->PagesFor(blocks[i].size);
    }
  }
  if (pages_needed == 0) return result;

  const uint64_t bytes_needed = pages_needed * pool_->page_bytes();
  if (bytes_needed > pool_->capacity_bytes()) {
    ++counters_.allocation_failures;
    return absl::ResourceExhaustedError(absl::StrCat(
        "Allocate needs ", bytes_needed, " bytes but the host tier holds only ",
        pool_->capacity_bytes(), "; split the request or raise --host-capacity"));
  }
  // The chains the new blocks extend must survive while they are written: evicting a parent
  // would make its child unreachable the moment it is committed. Hold them like readers.
  std::vector<BlockKey> held;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (result.blocks[i].state != AllocateState::kAllocated || !parsed[i].parent) continue;
    auto parent = blocks_.find(*parsed[i].parent);
    if (parent == blocks_.end() ||
        std::find(held.begin(), held.end(), parent->first) != held.end()) {
      continue;
    }
    AddReader(parent->second);
    held.push_back(parent->first);
  }
  if (pool_->free_bytes() < bytes_needed) {
    const uint64_t evictable = committed_reserved_ - kept_bytes_;
    if (pool_->free_bytes() + evictable < bytes_needed) {
      for (const BlockKey& key : held) RemoveReader(key);
      ++counters_.allocation_failures;
      return absl::ResourceExhaustedError(absl::StrCat(
          "Allocate needs ", bytes_needed, " bytes; ", pool_->free_bytes(), " are free and ",
          evictable, " evictable (the rest is pinned, leased or being written); retry later, "
          "release leases or unpin blocks"));
    }
    EvictFor(bytes_needed);
  }
  const uint64_t id = next_allocation_id_++;
  Allocation& allocation = allocations_[id];
  allocation.fingerprint = fingerprint;
  allocation.held_parents = std::move(held);
  allocation.expires =
      now + (lease_ttl == absl::ZeroDuration() ? options_.write_lease_ttl : lease_ttl);
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (result.blocks[i].state != AllocateState::kAllocated) continue;
    auto space = pool_->Allocate(blocks[i].size);
    if (!space.ok()) {
      // Unreachable while the pool's free bytes were checked above; fail safe regardless.
      ++counters_.allocation_failures;
      for (const BlockKey& key : allocation.keys) DropPending(key);
      EndAllocation(id);
      return space.status();
    }
    PendingBlock& p = pending_[parsed[i].key];
    p.key = parsed[i].key;
    p.parent = parsed[i].parent;
    p.size = blocks[i].size;
    p.codec = blocks[i].codec == 0 ? kCodecRaw : blocks[i].codec;
    p.space = *space;
    p.allocation_id = id;
    allocation.keys.insert(p.key);
    result.blocks[i].space = *space;
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
  pool_->Free(it->second.space);
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
    for (const BlockKey& key : keys) {
      PendingBlock& p = pending_.at(key);
      p.committing = true;
      ++p.writers;
      spaces.push_back(p.space);
    }
  }
  // Checksums of large payloads run outside the lock; `writers` keeps the space alive.
  std::vector<uint64_t> actual(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) actual[i] = pool_->Checksum(spaces[i]);

  absl::MutexLock lock(&mu_);
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
  if (!allocation.ok()) return allocation.status();
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!(*allocation)->keys.contains(keys[i])) {
      return absl::FailedPreconditionError(absl::StrCat(
          "blocks[", i, "]: block ", ShortKey(keys[i]),
          "... was aborted while its commit ran; nothing was committed"));
    }
  }
  if (bad != keys.size()) {
    ++counters_.checksum_failures;
    return absl::DataLossError(absl::StrCat(
        "blocks[", bad, "]: checksum of the bytes written to block ", ShortKey(keys[bad]),
        "... is ", absl::Hex(actual[bad], absl::kZeroPad16), ", not the declared ",
        absl::Hex(blocks[bad].second, absl::kZeroPad16),
        "; nothing was committed: rewrite the block and commit again, or abort"));
  }
  const absl::Time now = clock_->Now();
  const Digest fingerprint = (*allocation)->fingerprint;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto node = pending_.extract(keys[i]);
    PendingBlock& p = node.mapped();
    (*allocation)->keys.erase(keys[i]);
    CommittedBlock& block = blocks_[keys[i]];
    block.key = keys[i];
    block.parent = p.parent;
    block.size = p.size;
    block.checksum = blocks[i].second;
    block.codec = p.codec;
    block.fingerprint = fingerprint;
    block.space = p.space;
    block.committed_at = now;
    block.last_access = now;
    block.commit_seq = next_seq_++;
    block.touch_seq = next_seq_++;
    auto kids = children_.find(block.key);
    block.children = kids == children_.end() ? 0 : kids->second.size();
    if (block.children == 0) leaves_.emplace(block.touch_seq, &block);
    committed_reserved_ += block.space.reserved_bytes;
    // Children committed earlier that are kept make this block kept too.
    uint32_t kept_children = 0;
    if (kids != children_.end()) {
      for (const BlockKey& child : kids->second) kept_children += blocks_.at(child).kept > 0;
    }
    if (kept_children > 0) AdjustKept(&block, static_cast<int>(kept_children));
    by_commit_.emplace(block.commit_seq, &block);
    if (block.parent) {
      children_[*block.parent].push_back(block.key);
      auto parent = blocks_.find(*block.parent);
      if (parent != blocks_.end() && parent->second.children++ == 0) {
        leaves_.erase(parent->second.touch_seq);
      }
    }
    committed_bytes_ += block.size;
    evicted_.erase(block.key);
    Publish(EventType::kStored, block, "");
  }
  counters_.commits += keys.size();
  FinishAllocationIfEmpty(allocation_id);
  return static_cast<uint32_t>(keys.size());
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
    CommittedBlock& block = blocks_.at(key);
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
    const CommittedBlock& block = blocks_.at(key);
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
    result.bytes_freed += block->second.space.reserved_bytes;
    ++result.evicted;
    EvictOne(block->second, "requested");
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
  if (it == blocks_.end()) {
    return absl::NotFoundError(absl::StrCat("block ", ToHex(key), " is not committed here"));
  }
  AddReader(it->second);
  it->second.last_access = clock_->Now();
  Touch(it->second);
  info(it->second);
  ReadHold hold;
  hold.index_ = this;
  hold.key_ = key;
  hold.space_ = it->second.space;
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
      const CommittedBlock& block = it->second;
      if (reachable) {
        e.state = InspectState::kFound;
        e.detail = absl::StrCat("in host memory, ", block.size, " bytes, ", block.hits,
                                " hits", block.pinned ? ", pinned" : "");
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
      e.state = InspectState::kEvicted;
      e.detail = absl::StrCat("evicted at ", TimeString(ev->second.when), " (",
                              ev->second.reason, ")");
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
  return s;
}

absl::Status BlockIndex::CheckInvariants() {
  absl::MutexLock lock(&mu_);
  uint64_t reserved = 0;
  uint64_t bytes = 0;
  size_t leaves = 0;
  for (auto& [key, block] : blocks_) {
    reserved += block.space.reserved_bytes;
    bytes += block.size;
    auto kids = children_.find(key);
    const size_t children = kids == children_.end() ? 0 : kids->second.size();
    if (children != block.children) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " counts ",
                                              block.children, " children, has ", children));
    }
    if (block.children == 0) {
      ++leaves;
      auto leaf = leaves_.find(block.touch_seq);
      if (leaf == leaves_.end() || leaf->second != &block) {
        return absl::InternalError(absl::StrCat("leaf ", ShortKey(key), " not in eviction order"));
      }
    }
  }
  if (leaves != leaves_.size()) {
    return absl::InternalError(absl::StrCat("eviction order holds ", leaves_.size(),
                                            " blocks; there are ", leaves, " leaves"));
  }
  // Recompute every kept count bottom-up from its definition and compare.
  uint64_t committed_reserved = reserved;
  uint64_t kept_bytes = 0;
  for (auto& [key, block] : blocks_) {
    uint32_t kept = IsProtected(block) ? 1 : 0;
    auto kids = children_.find(key);
    if (kids != children_.end()) {
      for (const BlockKey& child : kids->second) kept += blocks_.at(child).kept > 0;
    }
    if (kept != block.kept) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " kept count ",
                                              block.kept, ", should be ", kept));
    }
    if (kept > 0) kept_bytes += block.space.reserved_bytes;
  }
  if (committed_reserved != committed_reserved_ || kept_bytes != kept_bytes_) {
    return absl::InternalError(absl::StrCat(
        "reserved/kept bytes ", committed_reserved_, "/", kept_bytes_, ", recomputed ",
        committed_reserved, "/", kept_bytes));
  }
  for (auto& [key, p] : pending_) reserved += p.space.reserved_bytes;
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
    if (blocks_.at(key).readers < n) {
      return absl::InternalError(absl::StrCat("block ", ShortKey(key), " has fewer readers than leases"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tierkv
