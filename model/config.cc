#include "model/config.h"

#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

using nlohmann::json;

absl::Status Invalid(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", std::string(what)));
}

// An integer field: absent (or null) gives `fallback`, or INVALID_ARGUMENT when required.
absl::StatusOr<int64_t> GetInt(const json& j, const char* key, bool required, int64_t fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return Invalid(absl::StrCat("missing required integer field \"", key, "\""));
    return fallback;
  }
  if (!it->is_number_integer()) {
    return Invalid(absl::StrCat("field \"", key, "\" must be an integer, got ", it->dump()));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> GetNumber(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return Invalid(absl::StrCat("field \"", key, "\" must be a number, got ", it->dump()));
  }
  return it->get<double>();
}

absl::StatusOr<bool> GetBool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return Invalid(absl::StrCat("field \"", key, "\" must be true or false, got ", it->dump()));
  }
  return it->get<bool>();
}

absl::StatusOr<std::string> GetString(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return Invalid(absl::StrCat("field \"", key, "\" must be a string, got ", it->dump()));
  }
  return it->get<std::string>();
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const json& j) {
  RopeScaling rs;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return rs;
  if (!it->is_object()) return Invalid("\"rope_scaling\" must be an object or null");
  TIERKV_ASSIGN_OR_RETURN(std::string type, GetString(*it, "rope_type"));
  if (type.empty()) {
    TIERKV_ASSIGN_OR_RETURN(type, GetString(*it, "type"));
  }
  TIERKV_ASSIGN_OR_RETURN(rs.factor, GetNumber(*it, "factor", 1.0));
  if (type.empty() || type == "default") {
    rs.type = RopeScaling::Type::kNone;
    rs.factor = 1.0;
  } else if (type == "linear") {
    rs.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    rs.type = RopeScaling::Type::kLlama3;
    TIERKV_ASSIGN_OR_RETURN(rs.low_freq_factor, GetNumber(*it, "low_freq_factor", 1.0));
    TIERKV_ASSIGN_OR_RETURN(rs.high_freq_factor, GetNumber(*it, "high_freq_factor", 4.0));
    TIERKV_ASSIGN_OR_RETURN(rs.original_max_position_embeddings,
                            GetInt(*it, "original_max_position_embeddings", true, 0));
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: rope_scaling type \"", type,
        "\" is not supported (supported: default, linear, llama3)"));
  }
  return rs;
}

absl::StatusOr<ModelConfig> ParseObject(const json& j) {
  if (!j.is_object()) return Invalid("the top level must be a JSON object");
  ModelConfig c;
  TIERKV_ASSIGN_OR_RETURN(std::string model_type, GetString(j, "model_type"));
  if (model_type.empty()) {
    auto arch = j.find("architectures");
    if (arch != j.end() && arch->is_array() && !arch->empty() && (*arch)[0].is_string()) {
      const std::string a = (*arch)[0].get<std::string>();
      if (a == "LlamaForCausalLM") model_type = "llama";
      if (a == "MistralForCausalLM") model_type = "mistral";
      if (a == "Qwen2ForCausalLM") model_type = "qwen2";
    }
  }
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2") {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: model_type \"", model_type,
        "\" is not supported (supported: llama, mistral, qwen2)"));
  }
  c.model_type = model_type;
  TIERKV_ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, "vocab_size", true, 0));
  TIERKV_ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, "hidden_size", true, 0));
  TIERKV_ASSIGN_OR_RETURN(c.intermediate_size, GetInt(j, "intermediate_size", true, 0));
  TIERKV_ASSIGN_OR_RETURN(c.num_layers, GetInt(j, "num_hidden_layers", true, 0));
  TIERKV_ASSIGN_OR_RETURN(c.num_heads, GetInt(j, "num_attention_heads", true, 0));
  TIERKV_ASSIGN_OR_RETURN(c.num_kv_heads, GetInt(j, "num_key_value_heads", false, c.num_heads));
  TIERKV_ASSIGN_OR_RETURN(
      c.head_dim, GetInt(j, "head_dim", false, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0));
  TIERKV_ASSIGN_OR_RETURN(c.rms_norm_eps, GetNumber(j, "rms_norm_eps", 1e-6));
  TIERKV_ASSIGN_OR_RETURN(c.rope_theta, GetNumber(j, "rope_theta", 10000.0));
  TIERKV_ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(j));
  TIERKV_ASSIGN_OR_RETURN(c.max_position_embeddings,
                          GetInt(j, "max_position_embeddings", false, 2048));
  TIERKV_ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, "tie_word_embeddings", false));
  TIERKV_ASSIGN_OR_RETURN(bool attention_bias, GetBool(j, "attention_bias", false));
  TIERKV_ASSIGN_OR_RETURN(bool mlp_bias, GetBool(j, "mlp_bias", false));
  if (mlp_bias) return absl::UnimplementedError("config.json: mlp_bias is not supported");
  TIERKV_ASSIGN_OR_RETURN(std::string act, GetString(j, "hidden_act"));
  if (!act.empty() && act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: hidden_act \"", act, "\" is not supported (only silu)"));
  }
  if (model_type == "qwen2") {
    c.qkv_bias = true;
    c.o_bias = false;
    TIERKV_ASSIGN_OR_RETURN(bool use_sliding, GetBool(j, "use_sliding_window", false));
    if (use_sliding) {
      return absl::UnimplementedError(
          "config.json: Qwen2 use_sliding_window is not supported (it applies to some layers "
          "only)");
    }
  } else {
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    if (model_type == "mistral") {
      TIERKV_ASSIGN_OR_RETURN(c.sliding_window, GetInt(j, "sliding_window", false, 0));
    }
  }
  TIERKV_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("model config: ", name, " must be positive, got ", v));
  };
  TIERKV_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  TIERKV_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  TIERKV_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  TIERKV_RETURN_IF_ERROR(positive("num_hidden_layers", num_layers));
  TIERKV_RETURN_IF_ERROR(positive("num_attention_heads", num_heads));
  TIERKV_RETURN_IF_ERROR(positive("num_key_value_heads", num_kv_heads));
  TIERKV_RETURN_IF_ERROR(positive("head_dim", head_dim));
  TIERKV_RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
  if (vocab_size > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: vocab_size ", vocab_size, " does not fit 32-bit token ids"));
  }
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: num_attention_heads ", num_heads,
                     " is not a multiple of num_key_value_heads ", num_kv_heads));
  }
  if (head_dim % 16 != 0 || head_dim > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config: head_dim ", head_dim,
        " is not supported (the CPU attention kernel needs a multiple of 16, at most 256)"));
  }
  if (!(rms_norm_eps >= 0) || !(rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("model config: rms_norm_eps ", rms_norm_eps,
                                                   " must be >= 0 and rope_theta ", rope_theta,
                                                   " positive"));
  }
  if (sliding_window < 0) {
    return absl::InvalidArgumentError("model config: sliding_window must be >= 0");
  }
  if (rope_scaling.type != RopeScaling::Type::kNone && !(rope_scaling.factor > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rope_scaling factor must be positive, got ", rope_scaling.factor));
  }
  if (rope_scaling.type == RopeScaling::Type::kLlama3 &&
      (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor) ||
       !(rope_scaling.low_freq_factor > 0) || rope_scaling.original_max_position_embeddings <= 0)) {
    return absl::InvalidArgumentError(
        "model config: llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0 and a "
        "positive original_max_position_embeddings");
  }
  return absl::OkStatus();
}

std::vector<float> ModelConfig::RopeInvFreq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float base_pow = static_cast<float>(std::pow(rope_theta, static_cast<double>(exponent)));
    inv[i] = 1.0f / base_pow;
  }
  switch (rope_scaling.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (float& f : inv) f = static_cast<float>(f / rope_scaling.factor);
      break;
    case RopeScaling::Type::kLlama3: {
      // transformers' _compute_llama3_parameters.
      const double old_len = static_cast<double>(rope_scaling.original_max_position_embeddings);
      const double low_wavelen = old_len / rope_scaling.low_freq_factor;
      const double high_wavelen = old_len / rope_scaling.high_freq_factor;
      for (float& f : inv) {
        const double freq = f;
        const double wavelen = 2 * std::numbers::pi / freq;
        double scaled = wavelen > low_wavelen ? freq / rope_scaling.factor : freq;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          const double smooth = (old_len / wavelen - rope_scaling.low_freq_factor) /
                                (rope_scaling.high_freq_factor - rope_scaling.low_freq_factor);
          scaled = (1 - smooth) * scaled / rope_scaling.factor + smooth * scaled;
        }
        f = static_cast<float>(scaled);
      }
      break;
    }
  }
  return inv;
}

absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid("not valid JSON");
  try {
    return ParseObject(j);
  } catch (const json::exception& e) {
    return Invalid(e.what());
  }
}

absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("no config.json in model directory ", dir, " (expected ", path, ")"));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  absl::StatusOr<ModelConfig> config = ParseHfConfig(buf.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", std::string(config.status().message())));
  }
  return config;
}

std::string ToHfConfigJson(const ModelConfig& c) {
  json j;
  j["model_type"] = c.model_type;
  j["architectures"] = {c.model_type == "qwen2"     ? "Qwen2ForCausalLM"
                        : c.model_type == "mistral" ? "MistralForCausalLM"
                                                    : "LlamaForCausalLM"};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (c.model_type != "qwen2") j["attention_bias"] = c.qkv_bias;
  if (c.model_type == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
  switch (c.rope_scaling.type) {
    case RopeScaling::Type::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Type::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
      break;
    case RopeScaling::Type::kLlama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", c.rope_scaling.factor},
          {"low_freq_factor", c.rope_scaling.low_freq_factor},
          {"high_freq_factor", c.rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
      break;
  }
  return j.dump(2);
}

ModelConfig Llama3_8BShapeConfig() {
  ModelConfig c = BuiltinTinyConfig();  // Same RoPE scaling, context and norm epsilon.
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  return c;
}

ModelConfig BuiltinTinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 32768;
  c.hidden_size = 512;
  c.intermediate_size = 1408;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  c.max_position_embeddings = 131072;
  c.tie_word_embeddings = false;
  return c;
}

}  // namespace tierkv
