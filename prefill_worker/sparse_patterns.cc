#include "prefill_worker/sparse_patterns.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

using kernels::HeadPattern;
using kernels::SparsePattern;
using nlohmann::json;

constexpr int64_t kNoMax = std::numeric_limits<int64_t>::max();

// One budget of a pattern: its key in the file, the range the index builder accepts, and
// where it lives in HeadPattern.
struct BudgetField {
  const char* name;
  int64_t min;
  int64_t max;
  int64_t& (*ref)(HeadPattern&);
};

// In struct order, which is also the order SparsePatternsToJson writes them in.
const BudgetField kAShapeFields[] = {
    {"n_init", 0, kNoMax, [](HeadPattern& h) -> int64_t& { return h.a_shape.n_init; }},
    {"local", 1, kNoMax, [](HeadPattern& h) -> int64_t& { return h.a_shape.local; }},
};
const BudgetField kVerticalSlashFields[] = {
    {"vertical", 0, kNoMax, [](HeadPattern& h) -> int64_t& { return h.vertical_slash.vertical; }},
    {"slash", 1, kNoMax, [](HeadPattern& h) -> int64_t& { return h.vertical_slash.slash; }},
    {"keep_first", 0, kNoMax,
     [](HeadPattern& h) -> int64_t& { return h.vertical_slash.keep_first; }},
    {"keep_near", 1, kNoMax, [](HeadPattern& h) -> int64_t& { return h.vertical_slash.keep_near; }},
    // The estimate reads the last queries of one 64-row block.
    {"last_q", 1, kernels::kSparseBlock,
     [](HeadPattern& h) -> int64_t& { return h.vertical_slash.last_q; }},
};
const BudgetField kBlockSparseFields[] = {
    {"top_blocks", 1, kNoMax, [](HeadPattern& h) -> int64_t& { return h.block_sparse.top_blocks; }},
};

constexpr SparsePattern kAllPatterns[] = {SparsePattern::kDense, SparsePattern::kAShape,
                                          SparsePattern::kVerticalSlash,
                                          SparsePattern::kBlockSparse};

std::span<const BudgetField> FieldsOf(SparsePattern pattern) {
  switch (pattern) {
    case SparsePattern::kDense:
      return {};
    case SparsePattern::kAShape:
      return kAShapeFields;
    case SparsePattern::kVerticalSlash:
      return kVerticalSlashFields;
    case SparsePattern::kBlockSparse:
      return kBlockSparseFields;
  }
  return {};
}

const BudgetField* FindField(SparsePattern pattern, std::string_view name) {
  for (const BudgetField& f : FieldsOf(pattern)) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

std::string PatternName(SparsePattern pattern) {
  return std::string(kernels::SparsePatternName(pattern));
}

// Same pattern and same budgets of that pattern; other patterns' budgets mean nothing.
bool SameHead(const HeadPattern& a, const HeadPattern& b) {
  if (a.pattern != b.pattern) return false;
  HeadPattern x = a;
  HeadPattern y = b;
  for (const BudgetField& f : FieldsOf(a.pattern)) {
    if (f.ref(x) != f.ref(y)) return false;
  }
  return true;
}

// A key as one segment of a message's path: as it is when it is a plain word, quoted and
// escaped otherwise, so that a key holding dots or control characters cannot mislead.
std::string Segment(std::string_view key) {
  bool plain = !key.empty();
  for (char c : key) {
    const bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-' || c == '+';
    plain = plain && word;
  }
  if (plain) return std::string(key);
  return json(std::string(key)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Join(const std::string& parent, std::string_view key) {
  return parent.empty() ? Segment(key) : absl::StrCat(parent, ".", Segment(key));
}

absl::Status Invalid(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path.empty() ? std::string("(root)") : path, ": ", std::string(what)));
}

// A value as the message quotes it, cut short so that a misplaced object stays readable.
std::string Show(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 40;
  if (s.size() > kMax) s = absl::StrCat(s.substr(0, kMax), "...");
  return s;
}

std::string TypeOf(const json& value) { return std::string(value.type_name()); }

absl::StatusOr<int64_t> GetInteger(const json& value, const std::string& path) {
  // 8192.0 and 8.192e3 parse as floating point: refused, a budget is a count.
  if (!value.is_number_integer()) {
    return Invalid(path, absl::StrCat("must be an integer, got ", Show(value)));
  }
  if (value.is_number_unsigned() &&
      value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Invalid(path, absl::StrCat("must be at most ", std::numeric_limits<int64_t>::max(),
                                      ", got ", Show(value)));
  }
  return value.get<int64_t>();
}

absl::StatusOr<int64_t> GetIntegerIn(const json& value, const std::string& path, int64_t min,
                                     int64_t max) {
  TIERKV_ASSIGN_OR_RETURN(int64_t v, GetInteger(value, path));
  if (max == kNoMax && v < min) {
    return Invalid(path, absl::StrCat("must be at least ", min, ", got ", v));
  }
  if (v < min || v > max) {
    return Invalid(path, absl::StrCat("must be between ", min, " and ", max, ", got ", v));
  }
  return v;
}

// A layer or head number: decimal digits, no sign, no leading zero (so that each head has
// exactly one spelling and "07" cannot sit beside "7"), below `limit`.
absl::StatusOr<int> ParseNumberKey(std::string_view key, const std::string& path, const char* noun,
                                   int limit, const char* counted) {
  bool digits = !key.empty() && !(key.size() > 1 && key[0] == '0');
  for (char c : key) digits = digits && c >= '0' && c <= '9';
  if (!digits) {
    return Invalid(
        path, absl::StrCat("not a ", noun, " number (decimal, without sign or leading zeros)"));
  }
  // Ten digits or more is past any int limit; checked first so the sum cannot overflow.
  int64_t n = 0;
  if (key.size() < 10) {
    for (char c : key) n = n * 10 + (c - '0');
  }
  if (key.size() >= 10 || n >= limit) {
    return Invalid(path, absl::StrCat("the model has ", limit, " ", counted));
  }
  return static_cast<int>(n);
}

absl::StatusOr<HeadPattern> ParseHead(const json& j, const std::string& path) {
  if (!j.is_object()) {
    return Invalid(path, absl::StrCat("must be an object with a \"pattern\", got ", Show(j)));
  }
  const std::string pattern_path = Join(path, "pattern");
  auto it = j.find("pattern");
  if (it == j.end()) {
    return Invalid(pattern_path, "missing (one of dense, a_shape, vertical_slash, block_sparse)");
  }
  if (!it->is_string()) {
    return Invalid(pattern_path, absl::StrCat("must be a string, got ", Show(*it)));
  }
  absl::StatusOr<SparsePattern> pattern =
      kernels::ParseSparsePattern(it->get_ref<const std::string&>());
  if (!pattern.ok()) return Invalid(pattern_path, std::string(pattern.status().message()));

  HeadPattern head;
  head.pattern = *pattern;
  for (const auto& [key, value] : j.items()) {
    if (key == "pattern") continue;
    const std::string field_path = Join(path, key);
    const BudgetField* field = FindField(*pattern, key);
    if (field == nullptr) {
      for (SparsePattern other : kAllPatterns) {
        if (FindField(other, key) != nullptr) {
          return Invalid(field_path, absl::StrCat("a budget of ", PatternName(other), ", not of ",
                                                  PatternName(*pattern)));
        }
      }
      std::vector<std::string> names;
      for (const BudgetField& f : FieldsOf(*pattern)) names.push_back(f.name);
      return Invalid(
          field_path,
          absl::StrCat("unknown field; ", PatternName(*pattern), " takes ",
                       names.empty() ? std::string("only \"pattern\"")
                                     : absl::StrCat("\"pattern\", ", absl::StrJoin(names, ", "))));
    }
    TIERKV_ASSIGN_OR_RETURN(field->ref(head),
                            GetIntegerIn(value, field_path, field->min, field->max));
  }
  return head;
}

// nlohmann::json keeps the last of repeated keys without a word. In a pattern file a
// repeated layer or head is a mistake (one of the two silently loses), so the parse callback
// records the path of the first repeat, and the parse is refused.
class DuplicateKeyFinder {
 public:
  bool OnEvent(json::parse_event_t event, const json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start: {
        std::string path = ChildPath();
        stack_.push_back(Frame{event == json::parse_event_t::object_start, std::move(path)});
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack_.empty()) stack_.pop_back();
        break;
      case json::parse_event_t::key:
        if (!stack_.empty() && parsed.is_string()) {
          Frame& top = stack_.back();
          top.last_key = parsed.get<std::string>();
          if (!top.keys.insert(top.last_key).second && !first_duplicate_) {
            first_duplicate_ = Join(top.path, top.last_key);
          }
        }
        break;
      case json::parse_event_t::value:
        if (!stack_.empty() && !stack_.back().object) ++stack_.back().next_index;
        break;
    }
    return true;  // Keep every value: the finder only watches.
  }

  const std::optional<std::string>& first_duplicate() const { return first_duplicate_; }

 private:
  struct Frame {
    bool object = false;
    std::string path;
    std::set<std::string> keys;
    std::string last_key;
    size_t next_index = 0;
  };

  std::string ChildPath() {
    if (stack_.empty()) return "";
    Frame& top = stack_.back();
    if (top.object) return Join(top.path, top.last_key);
    return Join(top.path, std::to_string(top.next_index++));
  }

  std::vector<Frame> stack_;
  std::optional<std::string> first_duplicate_;
};

absl::StatusOr<json> ParseJson(std::string_view text) {
  DuplicateKeyFinder finder;
  json root;
  // The only place exceptions are used: nlohmann reports syntax errors by throwing, and they
  // are turned into a status here.
  try {
    root = json::parse(
        text.begin(), text.end(),
        [&finder](int, json::parse_event_t event, json& parsed) {
          return finder.OnEvent(event, parsed);
        },
        /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  }
  if (finder.first_duplicate()) return Invalid(*finder.first_duplicate(), "duplicate key");
  return root;
}

nlohmann::ordered_json HeadToJson(const HeadPattern& head) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["pattern"] = PatternName(head.pattern);
  HeadPattern copy = head;
  for (const BudgetField& f : FieldsOf(head.pattern)) j[f.name] = f.ref(copy);
  return j;
}

}  // namespace

absl::StatusOr<SparsePlan> ParseSparsePatterns(std::string_view text, int num_layers,
                                               int num_q_heads) {
  if (num_layers <= 0 || num_q_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sparse patterns: the model must have layers and query heads, got ",
                     num_layers, " layers of ", num_q_heads, " query heads"));
  }
  TIERKV_ASSIGN_OR_RETURN(json root, ParseJson(text));
  if (!root.is_object()) {
    return Invalid("", absl::StrCat("must be a JSON object, got ", TypeOf(root)));
  }

  // The format first: a file of another version may well have keys this one does not know.
  auto format = root.find("format");
  if (format == root.end()) {
    return Invalid("format",
                   absl::StrCat("missing; expected \"", std::string(kSparsePatternsFormat), "\""));
  }
  if (!format->is_string() || format->get_ref<const std::string&>() != kSparsePatternsFormat) {
    return Invalid("format", absl::StrCat("expected \"", std::string(kSparsePatternsFormat),
                                          "\", got ", Show(*format)));
  }
  for (const auto& [key, value] : root.items()) {
    if (key != "format" && key != "min_tokens" && key != "max_coverage" && key != "default" &&
        key != "layers") {
      return Invalid(Join("", key),
                     "unknown key (known: format, min_tokens, max_coverage, "
                     "default, layers)");
    }
  }

  SparsePlan plan;
  if (auto it = root.find("min_tokens"); it != root.end()) {
    TIERKV_ASSIGN_OR_RETURN(plan.min_tokens, GetIntegerIn(*it, "min_tokens", 1, kNoMax));
  }
  if (auto it = root.find("max_coverage"); it != root.end()) {
    if (!it->is_number()) {
      return Invalid("max_coverage", absl::StrCat("must be a number, got ", Show(*it)));
    }
    const double v = it->get<double>();
    if (!(v > 0.0 && v <= 1.0)) {
      return Invalid("max_coverage",
                     absl::StrCat("must be above 0 and at most 1, got ", Show(*it)));
    }
    plan.max_coverage = v;
  }
  if (auto it = root.find("default"); it != root.end()) {
    TIERKV_ASSIGN_OR_RETURN(plan.default_pattern, ParseHead(*it, "default"));
  }

  auto layers = root.find("layers");
  if (layers == root.end()) return plan;
  if (!layers->is_object()) {
    return Invalid("layers",
                   absl::StrCat("must be an object of layer numbers, got ", Show(*layers)));
  }
  // Everything is checked before the plan is filled: a bad head leaves nothing applied.
  struct Listed {
    int layer;
    int head;
    HeadPattern pattern;
  };
  std::vector<Listed> listed;
  for (const auto& [layer_key, heads] : layers->items()) {
    const std::string layer_path = Join("layers", layer_key);
    TIERKV_ASSIGN_OR_RETURN(int layer,
                            ParseNumberKey(layer_key, layer_path, "layer", num_layers, "layers"));
    if (!heads.is_object()) {
      return Invalid(layer_path,
                     absl::StrCat("must be an object of head numbers, got ", Show(heads)));
    }
    for (const auto& [head_key, value] : heads.items()) {
      const std::string head_path = Join(layer_path, head_key);
      TIERKV_ASSIGN_OR_RETURN(
          int head, ParseNumberKey(head_key, head_path, "head", num_q_heads, "query heads"));
      TIERKV_ASSIGN_OR_RETURN(HeadPattern pattern, ParseHead(value, head_path));
      listed.push_back(Listed{layer, head, pattern});
    }
  }
  if (listed.empty()) return plan;
  plan.layers.assign(num_layers, std::vector<HeadPattern>(num_q_heads, plan.default_pattern));
  for (const Listed& l : listed) plan.layers[l.layer][l.head] = l.pattern;
  return plan;
}

absl::StatusOr<SparsePlan> LoadSparsePatterns(const std::string& path, int num_layers,
                                              int num_q_heads) {
  struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return ErrnoToStatus(errno, absl::StrCat("opening sparse patterns ", path));
  }
  std::string text;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) text.append(buffer, n);
  if (std::ferror(file.get())) {
    return ErrnoToStatus(errno, absl::StrCat("reading sparse patterns ", path));
  }
  absl::StatusOr<SparsePlan> plan = ParseSparsePatterns(text, num_layers, num_q_heads);
  if (!plan.ok()) {
    return absl::Status(plan.status().code(),
                        absl::StrCat(path, ": ", std::string(plan.status().message())));
  }
  return plan;
}

std::string SparsePatternsToJson(const SparsePlan& plan, int num_layers, int num_q_heads) {
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  root["format"] = std::string(kSparsePatternsFormat);
  root["min_tokens"] = plan.min_tokens;
  root["max_coverage"] = plan.max_coverage;
  root["default"] = HeadToJson(plan.default_pattern);
  if (!plan.layers.empty()) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::object();
    for (int l = 0; l < num_layers; ++l) {
      nlohmann::ordered_json heads = nlohmann::ordered_json::object();
      for (int h = 0; h < num_q_heads; ++h) {
        if (!SameHead(plan.For(l, h), plan.default_pattern)) {
          heads[std::to_string(h)] = HeadToJson(plan.For(l, h));
        }
      }
      if (!heads.empty()) layers[std::to_string(l)] = std::move(heads);
    }
    // A full plan in which every head is the default: one head listed keeps it full.
    if (layers.empty() && num_layers > 0 && num_q_heads > 0) {
      layers["0"]["0"] = HeadToJson(plan.For(0, 0));
    }
    root["layers"] = std::move(layers);
  }
  return root.dump(2) + "\n";
}

}  // namespace tierkv
