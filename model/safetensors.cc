#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

using nlohmann::json;

// Bytes per element of the safetensors dtypes; 0 for an unknown one.
uint64_t ElementBytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" ||
      dtype == "F8_E5M2") {
    return 1;
  }
  return 0;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status Malformed(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": malformed safetensors header: ", std::string(what)));
}

}  // namespace

std::optional<kernels::DType> SafetensorsTensor::float_dtype() const {
  if (dtype == "F32") return kernels::DType::kF32;
  if (dtype == "F16") return kernels::DType::kF16;
  if (dtype == "BF16") return kernels::DType::kBF16;
  return std::nullopt;
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), size_);
}

std::span<const uint8_t> SafetensorsFile::header() const {
  return {data_ + 8, static_cast<size_t>(header_size_)};
}

std::span<const uint8_t> SafetensorsFile::contents() const {
  return {data_, static_cast<size_t>(size_)};
}

const SafetensorsTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::Bytes(const SafetensorsTensor& t) const {
  return {data_ + t.offset, static_cast<size_t>(t.size)};
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("opening safetensors file ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("stat of ", path));
  }
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* p = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, absl::StrCat("mmap of ", path));
    }
    file->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // The mapping keeps the file alive.

  if (file->size_ < 8) {
    return absl::DataLossError(absl::StrCat(
        path, ": truncated safetensors file: ", file->size_,
        " bytes, less than the 8-byte header length at offset 0"));
  }
  uint64_t n;
  std::memcpy(&n, file->data_, 8);
  if (n > file->size_ - 8) {
    return absl::DataLossError(absl::StrCat(path, ": truncated safetensors file: the header of ",
                                            n, " bytes at offset 8 needs ", n + 8,
                                            " bytes but the file has ", file->size_));
  }
  file->header_size_ = n;
  const char* h = reinterpret_cast<const char*>(file->data_ + 8);
  json j = json::parse(h, h + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Malformed(path, "the header is not valid JSON");
  if (!j.is_object()) return Malformed(path, "the header is not a JSON object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file->size_ - data_start;
  try {
    for (auto& [name, desc] : j.items()) {
      if (name == "__metadata__") continue;
      if (!desc.is_object()) return Malformed(path, absl::StrCat("tensor ", name, " is not an object"));
      SafetensorsTensor t;
      t.name = name;
      auto dtype = desc.find("dtype");
      auto shape = desc.find("shape");
      auto offsets = desc.find("data_offsets");
      if (dtype == desc.end() || !dtype->is_string() || shape == desc.end() ||
          !shape->is_array() || offsets == desc.end() || !offsets->is_array() ||
          offsets->size() != 2) {
        return Malformed(path, absl::StrCat("tensor ", name,
                                            " needs a string dtype, an array shape and a "
                                            "two-element data_offsets"));
      }
      t.dtype = dtype->get<std::string>();
      for (const json& d : *shape) {
        if (!d.is_number_unsigned()) {
          return Malformed(path, absl::StrCat("tensor ", name, " has a bad shape ", shape->dump()));
        }
        t.shape.push_back(d.get<int64_t>());
      }
      if (!(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
        return Malformed(path, absl::StrCat("tensor ", name, " has bad data_offsets ",
                                            offsets->dump()));
      }
      const uint64_t begin = (*offsets)[0].get<uint64_t>();
      const uint64_t end = (*offsets)[1].get<uint64_t>();
      if (end < begin) {
        return Malformed(path, absl::StrCat("tensor ", name, " has data_offsets end ", end,
                                            " before begin ", begin));
      }
      const uint64_t elem = ElementBytes(t.dtype);
      if (elem != 0 && static_cast<uint64_t>(t.numel()) * elem != end - begin) {
        return Malformed(path, absl::StrCat("tensor ", name, " of dtype ", t.dtype, " and shape ",
                                            ShapeString(t.shape), " needs ", t.numel() * elem,
                                            " bytes but data_offsets span ", end - begin));
      }
      if (end > data_size) {
        return absl::DataLossError(absl::StrCat(
            path, ": truncated safetensors file: tensor ", name, " occupies bytes [",
            data_start + begin, ", ", data_start + end, ") but the file has ", file->size_,
            " bytes"));
      }
      t.offset = data_start + begin;
      t.size = end - begin;
      file->tensors_.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    return Malformed(path, e.what());
  }
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < file->tensors_.size(); ++i) {
    const SafetensorsTensor& prev = file->tensors_[i - 1];
    if (file->tensors_[i].offset < prev.offset + prev.size) {
      return Malformed(path, absl::StrCat("tensors ", prev.name, " and ", file->tensors_[i].name,
                                          " overlap"));
    }
  }
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) { return a.name < b.name; });
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

absl::Status SafetensorsFile::ReadFloat(const SafetensorsTensor& t, std::span<float> out) const {
  const std::optional<kernels::DType> dtype = t.float_dtype();
  if (!dtype.has_value()) {
    return absl::UnimplementedError(absl::StrCat("tensor ", t.name, " in ", path_, " has dtype ",
                                                 t.dtype, "; supported: F32, F16, BF16"));
  }
  if (out.size() != static_cast<size_t>(t.numel())) {
    return absl::InvalidArgumentError(absl::StrCat("ReadFloat of ", t.name, ": output holds ",
                                                   out.size(), " floats, tensor has ", t.numel()));
  }
  kernels::ConvertToFloat(data_ + t.offset, *dtype, out.size(), out.data());
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, std::span<const SafetensorsEntry> entries) {
  json header = json::object();
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    if (numel != static_cast<int64_t>(e.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors: tensor ", e.name,
                                                     " has shape ", ShapeString(e.shape), " but ",
                                                     e.values.size(), " values"));
    }
    const uint64_t bytes = numel * kernels::DTypeBytes(e.dtype);
    const char* dtype = e.dtype == kernels::DType::kF32   ? "F32"
                        : e.dtype == kernels::DType::kF16 ? "F16"
                                                          : "BF16";
    header[e.name] = {{"dtype", dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // Align the data like the reference writer.
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return ErrnoToStatus(errno, absl::StrCat("creating ", path));
  const uint64_t n = text.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<uint8_t> buf;
  for (const SafetensorsEntry& e : entries) {
    buf.resize(e.values.size() * kernels::DTypeBytes(e.dtype));
    kernels::ConvertFromFloat(e.values.data(), e.values.size(), e.dtype, buf.data());
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  out.close();
  if (!out) return ErrnoToStatus(errno, absl::StrCat("writing ", path));
  return absl::OkStatus();
}

}  // namespace tierkv
