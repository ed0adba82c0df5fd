// A second, lean map from block key to committed block, for Lookup's probes of long
// chains. absl's flat_hash_map finds a key's slot only by reading its group first, so a
// prefetch cannot reach the slot; here a key's probe starts at a slot computed from the key
// alone (linear probing, 16-byte slots of tag and block pointer, at most half full), so
// the probe of a key several places ahead in the chain can be prefetched exactly.
//
// Tags are the key's first 8 bytes; a slot's tag matching is a candidate only: the caller
// compares the full key in the block (which it reads anyway). Home slots are seeded per
// table, so keys chosen to share home slots in one process do not in another.
//
// Not thread-safe: the block index keeps it under its lock, beside blocks_ (the owner).
#ifndef TIERKV_CACHE_MANAGER_BLOCK_PROBE_TABLE_H_
#define TIERKV_CACHE_MANAGER_BLOCK_PROBE_TABLE_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/block_key.h"

namespace tierkv {

template <typename Block>  // Anything with a `BlockKey key` member.
class BlockProbeTable {
 public:
  BlockProbeTable() : seed_(std::random_device{}() * 0x9E3779B97F4A7C15ull | 1) { Rehash(16); }

  size_t size() const { return size_; }

  // Adds `block` under block->key, which must not be in the table.
  void Insert(Block* block) {
    if (2 * (size_ + 1) > slots_.size()) Rehash(2 * slots_.size());
    Place(Slot{Tag(block->key), block});
    ++size_;
  }

  // Removes `key`; false if it was not there.
  bool Erase(const BlockKey& key) {
    size_t i = Home(Tag(key));
    for (;; i = Next(i)) {
      if (slots_[i].block == nullptr) return false;
      if (BlockKeyEq()(slots_[i].block->key, key)) break;
    }
    // Backward-shift deletion: move later entries of the run back over the hole when
    // their home is not in (hole, j], so that every probe still finds them.
    size_t hole = i;
    for (size_t j = Next(i); slots_[j].block != nullptr; j = Next(j)) {
      const size_t home = Home(slots_[j].tag);
      const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (!stays) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Slot{};
    --size_;
    return true;
  }

  Block* Find(const BlockKey& key) const {
    const uint64_t tag = Tag(key);
    for (size_t i = Home(tag);; i = Next(i)) {
      const Slot& s = slots_[i];
      if (s.block == nullptr) return nullptr;
      if (s.tag == tag && BlockKeyEq()(s.block->key, key)) return s.block;
    }
  }

  // The first block whose tag matches `key`'s, without reading any block: the caller checks
  // its key, and calls Find when it differs (two keys sharing their first 8 bytes).
  Block* Candidate(const BlockKey& key) const {
    const uint64_t tag = Tag(key);
    for (size_t i = Home(tag);; i = Next(i)) {
      const Slot& s = slots_[i];
      if (s.block == nullptr || s.tag == tag) return s.block;
    }
  }

  // Starts fetching the slot where `key`'s probe starts.
  void Prefetch(const BlockKey& key) const { __builtin_prefetch(&slots_[Home(Tag(key))], 0, 3); }

 private:
  struct Slot {
    uint64_t tag = 0;
    Block* block = nullptr;  // Null: empty.
  };

  static uint64_t Tag(const BlockKey& key) {
    uint64_t tag;
    std::memcpy(&tag, key.data(), sizeof(tag));
    return tag;
  }
  size_t Home(uint64_t tag) const { return static_cast<size_t>((tag ^ seed_) * kMul >> shift_); }
  size_t Next(size_t i) const { return (i + 1) & (slots_.size() - 1); }

  void Place(Slot slot) {
    size_t i = Home(slot.tag);
    while (slots_[i].block != nullptr) i = Next(i);
    slots_[i] = slot;
  }

  void Rehash(size_t capacity) {  // A power of two.
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{});
    shift_ = 64 - __builtin_ctzll(capacity);
    for (const Slot& s : old) {
      if (s.block != nullptr) Place(s);
    }
  }

  static constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  const uint64_t seed_;
  std::vector<Slot> slots_;
  size_t size_ = 0;
  int shift_ = 60;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_BLOCK_PROBE_TABLE_H_
