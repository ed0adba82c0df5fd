#include "model/weights.h"


#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/block_key.h"
#include "core/sha256.h"
#include "core/status.h"
#include "kernels/random.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

using nlohmann::json;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

enum class Kind { kProjection, kEmbedding, kBias, kNorm };

Kind KindOf(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("norm.weight")) return Kind::kNorm;
  if (ends_with(".bias")) return Kind::kBias;
  if (name == "model.embed_tokens.weight") return Kind::kEmbedding;
  return Kind::kProjection;
}

}  // namespace

SeededAffine SeededAffineOf(const std::string& name, const std::vector<int64_t>& shape) {
  switch (KindOf(name)) {
    case Kind::kProjection:
      return {1.0f / std::sqrt(static_cast<float>(shape[1])), 0.0f};
    case Kind::kEmbedding:
      return {1.0f, 0.0f};
    case Kind::kBias:
      return {0.0625f, 0.0f};
    case Kind::kNorm:
      return {0.125f, 1.0f};
  }
  return {1.0f, 0.0f};
}

namespace {

// The safetensors files of a model directory, opened, and which file holds which tensor.
struct Shards {
  std::vector<std::unique_ptr<SafetensorsFile>> files;  // Sorted by file name.
  std::map<std::string, const SafetensorsFile*> by_tensor;

  std::string FileList() const {
    std::vector<std::string> names;
    for (const auto& f : files) names.push_back(std::filesystem::path(f->path()).filename());
    return absl::StrJoin(names, ", ");
  }
};

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

absl::StatusOr<Shards> OpenShards(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::vector<std::string> names;
  std::map<std::string, std::string> weight_map;
  const bool indexed = fs::exists(index_path, ec);
  if (indexed) {
    TIERKV_ASSIGN_OR_RETURN(std::string text, ReadText(index_path));
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": malformed index, expected a JSON object with a "
                                   "\"weight_map\" object"));
    }
    for (auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry ", tensor, " is not a file name"));
      }
      weight_map[tensor] = file.get<std::string>();
      names.push_back(file.get<std::string>());
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
  } else {
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".safetensors") names.push_back(e.path().filename());
    }
    std::sort(names.begin(), names.end());
  }
  if (names.empty()) {
    return absl::NotFoundError(absl::StrCat("no .safetensors files in model directory ", dir,
                                            indexed ? " (the index names none)" : ""));
  }
  Shards shards;
  std::map<std::string, const SafetensorsFile*> by_name;
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    if (!fs::exists(path, ec)) {
      return absl::NotFoundError(
          absl::StrCat(path, " is named by model.safetensors.index.json but does not exist"));
    }
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    by_name[name] = file.get();
    shards.files.push_back(std::move(file));
  }
  if (indexed) {
    for (const auto& [tensor, name] : weight_map) {
      const SafetensorsFile* f = by_name[name];
      if (f->Find(tensor) != nullptr) shards.by_tensor[tensor] = f;
    }
  } else {
    for (const auto& f : shards.files) {
      for (const SafetensorsTensor& t : f->tensors()) {
        auto [it, inserted] = shards.by_tensor.emplace(t.name, f.get());
        if (!inserted) {
          return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, " is in both ",
                                                         it->second->path(), " and ", f->path()));
        }
      }
    }
  }
  return shards;
}

}  // namespace

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// Calls fn(name, shape, tensor) for every tensor `c` needs, in WeightSlots order. W is
// ModelWeights or const ModelWeights; w.layers must already have c.num_layers entries.
template <typename W, typename Fn>
void VisitSlots(const ModelConfig& c, W& w, Fn&& fn) {
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  fn("model.embed_tokens.weight", std::vector<int64_t>{c.vocab_size, c.hidden_size},
     w.embed_tokens);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto& l = w.layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    fn(p + "input_layernorm.weight", std::vector<int64_t>{c.hidden_size}, l.input_layernorm);
    fn(p + "self_attn.q_proj.weight", std::vector<int64_t>{q_out, c.hidden_size}, l.q_proj);
    fn(p + "self_attn.k_proj.weight", std::vector<int64_t>{kv_out, c.hidden_size}, l.k_proj);
    fn(p + "self_attn.v_proj.weight", std::vector<int64_t>{kv_out, c.hidden_size}, l.v_proj);
    if (c.qkv_bias) {
      fn(p + "self_attn.q_proj.bias", std::vector<int64_t>{q_out}, l.q_bias);
      fn(p + "self_attn.k_proj.bias", std::vector<int64_t>{kv_out}, l.k_bias);
      fn(p + "self_attn.v_proj.bias", std::vector<int64_t>{kv_out}, l.v_bias);
    }
    fn(p + "self_attn.o_proj.weight", std::vector<int64_t>{c.hidden_size, q_out}, l.o_proj);
    if (c.o_bias) fn(p + "self_attn.o_proj.bias", std::vector<int64_t>{c.hidden_size}, l.o_bias);
    fn(p + "post_attention_layernorm.weight", std::vector<int64_t>{c.hidden_size},
       l.post_attention_layernorm);
    fn(p + "mlp.gate_proj.weight", std::vector<int64_t>{c.intermediate_size, c.hidden_size},
       l.gate_proj);
    fn(p + "mlp.up_proj.weight", std::vector<int64_t>{c.intermediate_size, c.hidden_size},
       l.up_proj);
    fn(p + "mlp.down_proj.weight", std::vector<int64_t>{c.hidden_size, c.intermediate_size},
       l.down_proj);
  }
  fn("model.norm.weight", std::vector<int64_t>{c.hidden_size}, w.norm);
  if (!c.tie_word_embeddings) {
    fn("lm_head.weight", std::vector<int64_t>{c.vocab_size, c.hidden_size}, w.lm_head);
  }
}

}  // namespace

std::vector<WeightSlot> WeightSlots(const ModelConfig& c, ModelWeights* w) {
  w->layers.resize(std::max<int64_t>(c.num_layers, 0));
  std::vector<WeightSlot> slots;
  VisitSlots(c, *w, [&](std::string name, std::vector<int64_t> shape, HostTensor& t) {
    slots.push_back({std::move(name), std::move(shape), &t});
  });
  return slots;
}

absl::Status ValidateWeights(const ModelConfig& config, const ModelWeights& weights) {
  TIERKV_RETURN_IF_ERROR(config.Validate());
  if (static_cast<int64_t>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights have ", weights.layers.size(),
                                                   " layers, config has ", config.num_layers));
  }
  absl::Status status;
  VisitSlots(config, weights,
             [&](const std::string& name, const std::vector<int64_t>& shape, const HostTensor& t) {
               if (!status.ok()) return;
               if (t.shape != shape || static_cast<int64_t>(t.data.size()) != t.numel()) {
                 status = absl::InvalidArgumentError(absl::StrCat(
                     "tensor ", name, " has shape ", ShapeString(t.shape), " (", t.data.size(),
                     " values), expected ", ShapeString(shape), " from the model config"));
               }
             });
  TIERKV_RETURN_IF_ERROR(status);
  auto unexpected = [](const HostTensor& t, const std::string& what) -> absl::Status {
    if (t.empty() && t.shape.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(what, " is set but the config does not use it"));
  };
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    const LayerWeights& l = weights.layers[i];
    if (!config.qkv_bias) {
      TIERKV_RETURN_IF_ERROR(unexpected(l.q_bias, absl::StrCat("layer ", i, " q_bias")));
      TIERKV_RETURN_IF_ERROR(unexpected(l.k_bias, absl::StrCat("layer ", i, " k_bias")));
      TIERKV_RETURN_IF_ERROR(unexpected(l.v_bias, absl::StrCat("layer ", i, " v_bias")));
    }
    if (!config.o_bias) {
      TIERKV_RETURN_IF_ERROR(unexpected(l.o_bias, absl::StrCat("layer ", i, " o_bias")));
    }
  }
  if (config.tie_word_embeddings) {
    TIERKV_RETURN_IF_ERROR(unexpected(weights.lm_head, "lm_head (tie_word_embeddings is true)"));
  }
  return absl::OkStatus();
}

ModelWeights SeededWeights(const ModelConfig& config, uint64_t seed, kernels::ThreadPool* pool) {
  ModelWeights w;
  std::vector<WeightSlot> slots = WeightSlots(config, &w);
  for (WeightSlot& slot : slots) {
    slot.tensor->shape = slot.shape;
    slot.tensor->data.resize(slot.tensor->numel());
  }
  // Tasks of up to 1M elements across all tensors.
  constexpr int64_t kChunk = 1 << 20;
  struct Task {
    const WeightSlot* slot;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  for (const WeightSlot& slot : slots) {
    const int64_t n = slot.tensor->numel();
    for (int64_t b = 0; b < n; b += kChunk) tasks.push_back({&slot, b, std::min(n, b + kChunk)});
  }
  kernels::ParallelFor(pool, static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& task = tasks[t];
    const std::string& name = task.slot->name;
    const uint64_t key = kernels::StreamKey(seed, kernels::Fnv1a64(name));
    const SeededAffine affine = SeededAffineOf(name, task.slot->shape);
    float* out = task.slot->tensor->data.data();
    for (int64_t i = task.begin; i < task.end; ++i) {
      const float u = kernels::UniformPm1(kernels::RandomBits(key, static_cast<uint64_t>(i)));
      out[i] = u * affine.scale + affine.shift;
    }
  });
  return w;
}

absl::StatusOr<ModelWeights> LoadHfWeights(const std::string& dir, const ModelConfig& config,
                                           kernels::ThreadPool* pool) {
  TIERKV_RETURN_IF_ERROR(config.Validate());
  TIERKV_ASSIGN_OR_RETURN(Shards shards, OpenShards(dir));
  ModelWeights w;
  std::vector<WeightSlot> slots = WeightSlots(config, &w);
  std::vector<std::pair<const SafetensorsFile*, const SafetensorsTensor*>> sources;
  for (const WeightSlot& slot : slots) {
    auto it = shards.by_tensor.find(slot.name);
    if (it == shards.by_tensor.end()) {
      return absl::NotFoundError(absl::StrCat("tensor ", slot.name, " not found in ", dir,
                                              " (searched: ", shards.FileList(), ")"));
    }
    const SafetensorsTensor* t = it->second->Find(slot.name);
    if (t->shape != slot.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", slot.name, " in ", it->second->path(), " has shape ", ShapeString(t->shape),
          ", expected ", ShapeString(slot.shape), " from config.json"));
    }
    if (!t->float_dtype().has_value()) {
      return absl::UnimplementedError(absl::StrCat("tensor ", slot.name, " in ",
                                                   it->second->path(), " has dtype ", t->dtype,
                                                   "; supported: F32, F16, BF16"));
    }
    sources.emplace_back(it->second, t);
  }
  for (WeightSlot& slot : slots) {
    slot.tensor->shape = slot.shape;
    slot.tensor->data.resize(slot.tensor->numel());
  }
  std::vector<absl::Status> results(slots.size());
  kernels::ParallelFor(pool, static_cast<int64_t>(slots.size()), [&](int64_t i) {
    results[i] = sources[i].first->ReadFloat(*sources[i].second, slots[i].tensor->data);
  });
  for (const absl::Status& s : results) TIERKV_RETURN_IF_ERROR(s);
  return w;
}

absl::StatusOr<std::string> HfWeightsDigest(const std::string& dir, WeightsDigestMode mode) {
  TIERKV_ASSIGN_OR_RETURN(std::string config, ReadText(dir + "/config.json"));
  TIERKV_ASSIGN_OR_RETURN(Shards shards, OpenShards(dir));
  Sha256 h;
  const std::string_view domain = "tierkv.hf-weights.v1";
  h.Update(domain.data(), domain.size());
  h.UpdateU64(config.size());
  h.Update(config.data(), config.size());
  for (const auto& f : shards.files) {
    h.UpdateU64(f->file_size());
    if (mode == WeightsDigestMode::kFull) {
      h.Update(f->contents().data(), f->contents().size());
    } else {
      h.UpdateU64(f->header().size());
      h.Update(f->header().data(), f->header().size());
    }
  }
  return absl::StrCat(mode == WeightsDigestMode::kFull ? "sha256:" : "sha256-headers:",
                      ToHex(h.Finish()));
}

}  // namespace tierkv
