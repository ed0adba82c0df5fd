// Reading and writing safetensors files (https://huggingface.co/docs/safetensors): an
// 8-byte little-endian header length N, N bytes of JSON describing each tensor
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then
// the tensor bytes, offsets relative to the end of the header.
#ifndef TIERKV_MODEL_SAFETENSORS_H_
#define TIERKV_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace tierkv {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // As written: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // Absolute file offset of the first byte.
  uint64_t size = 0;    // Bytes.

  // The element type when it is one tierkv converts (F32, F16, BF16), else nullopt.
  std::optional<kernels::DType> float_dtype() const;
  int64_t numel() const;
};

// One safetensors file, memory-mapped read-only. Immutable after Open, so it may be used
// from several threads.
class SafetensorsFile {
 public:
  // Maps and parses `path`. Errors name the file:
  //   NOT_FOUND (or another errno code) when it cannot be opened;
  //   DATA_LOSS when it is shorter than its header or than a tensor's bytes (truncated),
  //     naming the offset and size that do not fit;
  //   INVALID_ARGUMENT for a malformed header: bad JSON, a tensor without dtype, shape or
  //     data_offsets, offsets that disagree with dtype and shape or overlap.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  // The JSON header bytes as stored.
  std::span<const uint8_t> header() const;
  // Every tensor, sorted by name.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // The tensor called `name`, or null.
  const SafetensorsTensor* Find(const std::string& name) const;
  // The raw bytes of a tensor of this file (valid while the file lives).
  std::span<const uint8_t> Bytes(const SafetensorsTensor& t) const;
  // The whole mapped file.
  std::span<const uint8_t> contents() const;

  // Converts tensor `t` to fp32 into `out` (t.numel() floats). UNIMPLEMENTED, naming the
  // tensor, file and dtype, when the dtype is not F32, F16 or BF16.
  absl::Status ReadFloat(const SafetensorsTensor& t, std::span<float> out) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  const uint8_t* data_ = nullptr;  // Owned mapping of size_ bytes (null when size_ is 0).
  uint64_t size_ = 0;
  uint64_t header_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// A tensor to write: fp32 values stored as `dtype`.
struct SafetensorsEntry {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  std::span<const float> values;  // numel(shape) values.
};

// Writes `entries` (in the given order) to `path`, replacing it; values are rounded to each
// entry's dtype. INVALID_ARGUMENT when an entry's values do not match its shape; errno
// codes for I/O failures.
absl::Status WriteSafetensors(const std::string& path, std::span<const SafetensorsEntry> entries);

}  // namespace tierkv

#endif  // TIERKV_MODEL_SAFETENSORS_H_
