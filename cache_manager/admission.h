// Which new blocks may displace cached ones when the host tier is full.
//
// kAll admits every block (the cache is then plain prefix-aware LRU). kSecondUse admits only
// blocks that Lookups asked for at least twice lately (a count-min sketch), so one-off
// prompts cannot flush reused prefixes; it wins when the tier is small against the traffic's
// reuse distances and loses when the tier is big enough to keep new blocks until their first
// reuse. kAuto picks between the two by measurement: two miniature LRU caches, one per rule,
// simulate a 1-in-16 sample of the keys looked up (at a sixteenth of the tier's capacity in
// blocks), and the rule whose miniature hit more lately governs admission
// (docs/cache-policy.md).
//
// Not thread-safe: the block index calls it under its lock.
#ifndef TIERKV_CACHE_MANAGER_ADMISSION_H_
#define TIERKV_CACHE_MANAGER_ADMISSION_H_

#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cache_manager/frequency_sketch.h"
#include "core/block_key.h"

namespace tierkv {

class AdmissionController {
 public:
  enum class Mode { kAll, kSecondUse, kAuto };

  // `capacity_pages`: the host tier's size in pages; `sketch_width`: counters per sketch row
  // (0: sixteen per page, at least 1M and at most 4M: the sketch must remember longer than
  // blocks take to come back).
  AdmissionController(Mode mode, uint64_t capacity_pages, uint64_t sketch_width);

  // The keys of one Lookup, in chain order: counted as asked for, and fed to the miniatures.
  void OnLookup(const std::vector<std::string_view>& keys);
  // The same with the keys concatenated (32 bytes each).
  void OnLookup(std::string_view packed_keys);
  // A block of `pages` pages was allocated: sizes the miniatures in blocks.
  void NoteBlockPages(uint64_t pages);
  // Whether `key` may displace cached blocks now.
  bool Admit(const BlockKey& key) const;

  Mode mode() const { return mode_; }
  // The rule in force: true for second use (always for kSecondUse, never for kAll).
  bool second_use_now() const { return second_use_now_; }
  uint64_t switches() const { return switches_; }
  // "all", "second-use", or "auto (now all)" / "auto (now second-use)".
  std::string Describe() const;

 private:
  // An LRU cache of sampled keys that admits everything or only keys seen twice.
  class Miniature {
   public:
    explicit Miniature(bool second_use) : second_use_(second_use) {}
    void Reference(uint64_t key, uint32_t seen, uint64_t capacity);
    double hits = 0;

   private:
    const bool second_use_;
    std::list<uint64_t> lru_;  // Front: most recent.
    absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> where_;
  };

  uint64_t MiniatureCapacity() const;

  const Mode mode_;
  const uint64_t capacity_pages_;
  FrequencySketch sketch_;
  double pages_per_block_ = 1;  // Moving average over allocations.
  bool noted_ = false;
  bool second_use_now_;
  Miniature all_{false};
  Miniature second_use_{true};
  uint64_t sampled_ = 0;
  uint64_t switches_ = 0;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_ADMISSION_H_
