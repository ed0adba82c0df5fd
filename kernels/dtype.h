// Element types of weights and KV, and exact conversions between them and fp32.
//
// All conversions are pure integer/IEEE operations, so they give the same bits on every
// platform (and, later, on the GPU). Narrowing rounds to nearest, ties to even; NaN stays
// NaN (quiet), infinities stay infinite, values beyond the target range become infinity.
#ifndef TIERKV_KERNELS_DTYPE_H_
#define TIERKV_KERNELS_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace tierkv::kernels {

enum class DType { kF32, kF16, kBF16 };

// Bytes per element: 4, 2, 2.
size_t DTypeBytes(DType dtype);

// The ModelSpec spelling: "fp32", "fp16", "bf16".
std::string_view DTypeName(DType dtype);

// Parses a ModelSpec kv_dtype ("fp32", "fp16", "bf16"); nullopt for anything else.
std::optional<DType> ParseDTypeName(std::string_view name);

inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float f);

// The fp32 value nearest to `f` that `dtype` can represent (what a store to `dtype` and a
// load back would give).
inline float RoundToDType(float f, DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return Bf16ToFloat(FloatToBf16(f));
    case DType::kF16:
      return HalfToFloat(FloatToHalf(f));
    case DType::kF32:
      break;
  }
  return f;
}

// Converts `count` little-endian elements of `src_dtype` at `src` (any alignment) to fp32.
void ConvertToFloat(const void* src, DType src_dtype, size_t count, float* dst);

// Converts `count` fp32 values to little-endian `dst_dtype` elements at `dst` (any alignment).
void ConvertFromFloat(const float* src, size_t count, DType dst_dtype, void* dst);

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_DTYPE_H_
