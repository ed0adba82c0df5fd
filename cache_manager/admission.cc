#include "cache_manager/admission.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace tierkv {
namespace {

// One key in this many feeds the miniatures; they hold this fraction of the tier.
constexpr uint64_t kSampleRate = 16;
// Decide (and halve the miniatures' hit counts) every this many sampled references per
// miniature block.
constexpr uint64_t kDecisionPeriod = 2;
constexpr uint64_t kMinMiniature = 8;
// The rules kAuto chooses among, most admitting first: all; second use or at most this many
// new blocks in the request; second use only.
constexpr uint32_t kAutoRules[] = {AdmissionController::kAdmitAll, 64, 16, 4, 0};
// Default sketch width: sixteen counters per page, within these bounds. The sketch must
// remember lookups for longer than blocks take to come back, which depends on the traffic
// more than on the tier: below 1M counters a small tier's sketch saturated on the
// conversation trace and let one-off blocks in (docs/cache-policy.md).
constexpr uint64_t kMinSketchWidth = uint64_t{1} << 20;
constexpr uint64_t kMaxSketchWidth = uint64_t{1} << 22;

uint64_t Word(const BlockKey& key, int i) {
  uint64_t w;
  std::memcpy(&w, key.data() + 8 * i, sizeof(w));
  return w;
}

}  // namespace

AdmissionController::AdmissionController(Mode mode, uint64_t capacity_pages,
                                         uint64_t sketch_width)
    : mode_(mode),
      capacity_pages_(std::max<uint64_t>(1, capacity_pages)),
      sketch_(sketch_width != 0
                  ? sketch_width
                  : std::clamp<uint64_t>(16 * capacity_pages_, kMinSketchWidth, kMaxSketchWidth)) {
  switch (mode_) {
    case Mode::kAll:
      rules_.emplace_back(kAdmitAll);
      break;
    case Mode::kSecondUse:
      rules_.emplace_back(0);
      break;
    case Mode::kAuto:
      for (uint32_t rule : kAutoRules) rules_.emplace_back(rule);
      break;
  }
}

void AdmissionController::Miniature::Reference(uint64_t key, uint32_t seen, uint64_t missed,
                                               uint64_t capacity) {
  auto it = where_.find(key);
  if (it != where_.end()) {
    hits += 1;
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  if (max_new_blocks != kAdmitAll && seen < 2 && missed > max_new_blocks) return;
  lru_.push_front(key);
  where_[key] = lru_.begin();
  while (lru_.size() > capacity) {
    where_.erase(lru_.back());
    lru_.pop_back();
  }
}

uint64_t AdmissionController::MiniatureCapacity() const {
  const double blocks = static_cast<double>(capacity_pages_) / pages_per_block_;
  return std::max<uint64_t>(kMinMiniature, static_cast<uint64_t>(blocks) / kSampleRate);
}

bool AdmissionController::Sampled(const BlockKey& key) {
  // Keys are SHA-256 outputs: the top bits of the first word are a fair sample.
  return Word(key, 0) >> 60 == 0;
}

void AdmissionController::OnLookup(const std::vector<std::string_view>& keys, uint64_t found) {
  if (mode_ == Mode::kAll) return;
  std::string packed;
  packed.reserve(keys.size() * kDigestBytes);
  for (std::string_view key : keys) packed.append(key);
  OnLookup(packed, found);
}

void AdmissionController::OnLookup(std::string_view packed_keys, uint64_t found) {
  if (mode_ == Mode::kAll) return;
  const char* const packed = packed_keys.data();
  const size_t n = packed_keys.size() / kDigestBytes;
  found = std::min<uint64_t>(found, n);
  const uint64_t missed = n - found;
  auto key_at = [packed](size_t i) {
    BlockKey key;
    std::memcpy(key.data(), packed + i * kDigestBytes, kDigestBytes);
    return key;
  };
  // Found keys: only the sampled ones here (their blocks count the rest).
  sampled_found_.clear();
  for (size_t i = 0; i < found; ++i) {
    uint64_t first;
    std::memcpy(&first, packed + i * kDigestBytes, sizeof(first));
    if (first >> 60 == 0) sampled_found_.push_back(static_cast<uint32_t>(i));
  }
  for (uint32_t i : sampled_found_) sketch_.Add(key_at(i));
  sketch_.Advance(found - sampled_found_.size());
  // Missed keys: each one's counters are one random line of a sketch larger than the
  // nearer caches: fetch the lines a few keys ahead.
  constexpr size_t kAhead = 32;
  for (size_t i = found; i < std::min(n, found + kAhead); ++i) sketch_.Prefetch(key_at(i));
  for (size_t i = found; i < n; ++i) {
    if (i + kAhead < n) sketch_.Prefetch(key_at(i + kAhead));
    sketch_.Add(key_at(i));
  }
  epoch_.store(sketch_.halvings(), std::memory_order_relaxed);
  if (mode_ != Mode::kAuto) return;
  const uint64_t capacity = MiniatureCapacity();
  auto reference = [&](const BlockKey& key) {
    const uint32_t seen = sketch_.Estimate(key);
    for (Miniature& m : rules_) m.Reference(Word(key, 0), seen, missed, capacity);
    if (++sampled_ % (kDecisionPeriod * capacity) == 0) {
      size_t best = 0;
      for (size_t r = 1; r < rules_.size(); ++r) {
        if (rules_[r].hits > rules_[best].hits) best = r;
      }
      if (best != rule_now_) ++switches_;
      rule_now_ = best;
      for (Miniature& m : rules_) m.hits /= 2;
    }
  };
  for (uint32_t i : sampled_found_) reference(key_at(i));
  for (size_t i = found; i < n; ++i) {
    const BlockKey key = key_at(i);
    if (Sampled(key)) reference(key);
  }
}

void AdmissionController::OnLeave(const BlockKey& key, uint32_t uses) {
  if (mode_ == Mode::kAll || uses == 0) return;
  sketch_.AddCounted(key, uses);
}

void AdmissionController::NoteBlockPages(uint64_t pages) {
  const double p = static_cast<double>(std::max<uint64_t>(1, pages));
  pages_per_block_ = noted_ ? 0.99 * pages_per_block_ + 0.01 * p : p;
  noted_ = true;
}

bool AdmissionController::Admit(const BlockKey& key, uint64_t new_blocks) const {
  const uint32_t rule = rule_now();
  if (rule == kAdmitAll || new_blocks <= rule) return true;
  return sketch_.Estimate(key) >= 2;
}

std::string AdmissionController::Describe() const {
  const uint32_t rule = rule_now();
  const std::string now = rule == kAdmitAll ? "all"
                          : rule == 0       ? "second-use"
                                            : absl::StrCat("second-use or up to ", rule,
                                                           " new blocks");
  return mode_ == Mode::kAuto ? absl::StrCat("auto (now ", now, ")") : now;
}

}  // namespace tierkv
