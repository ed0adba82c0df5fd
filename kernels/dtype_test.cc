#include "kernels/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace tierkv::kernels {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(DType, NamesRoundTrip) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    EXPECT_EQ(ParseDTypeName(DTypeName(d)), d);
  }
  EXPECT_EQ(ParseDTypeName("float32"), std::nullopt);
  EXPECT_EQ(DTypeBytes(DType::kF32), 4u);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2u);
}

TEST(Half, EveryHalfSurvivesARoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h << " = " << f;
  }
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
}

// The half nearest to f by brute force over neighbours, ties to even mantissa.
TEST(Half, RoundsToNearestEven) {
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<uint32_t> exp_dist(95, 145);  // 2^-32 .. 2^18
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = (static_cast<uint32_t>(rng()) & 0x807fffffu) | (exp_dist(rng) << 23);
    const float f = FromBits(u);
    const uint16_t h = FloatToHalf(f);
    const double got = HalfToFloat(h);
    if (std::isinf(got)) {
      EXPECT_GE(std::abs(f), 65520.0f) << f;
      continue;
    }
    const double err = std::abs(got - static_cast<double>(f));
    for (int delta : {-1, 1}) {
      const uint16_t other = static_cast<uint16_t>(h + delta);
      if ((other & 0x7c00) == 0x7c00 || ((h ^ other) & 0x8000)) continue;
      const double other_err = std::abs(static_cast<double>(HalfToFloat(other)) - f);
      ASSERT_LE(err, other_err) << "f=" << f << " h=" << h;
      if (err == other_err) {
        EXPECT_EQ(h & 1, 0) << "tie must go to even, f=" << f;
      }
    }
  }
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // Tie between 0 and 2^-24.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecials) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);  // Tie, even stays.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);  // Tie, odd rounds up.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);  // Overflows to inf.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FromBits(0x7f800001u)))));  // sNaN stays NaN.
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      EXPECT_EQ(FloatToBf16(f), b);
    }
    EXPECT_EQ(Bits(f), b << 16);
  }
}

TEST(Convert, BulkConversionsMatchScalarOnes) {
  std::mt19937_64 rng(2);
  std::normal_distribution<float> dist(0, 10);
  std::vector<float> src(1001);
  for (float& f : src) f = dist(rng);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> bytes(src.size() * DTypeBytes(d) + 1);
    ConvertFromFloat(src.data(), src.size(), d, bytes.data() + 1);  // Unaligned on purpose.
    std::vector<float> back(src.size());
    ConvertToFloat(bytes.data() + 1, d, src.size(), back.data());
    for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(back[i], RoundToDType(src[i], d));
  }
  // Little-endian on the wire: bf16 1.0 is 80 3f.
  float one = 1.0f;
  uint8_t b[2];
  ConvertFromFloat(&one, 1, DType::kBF16, b);
  EXPECT_EQ(b[0], 0x80);
  EXPECT_EQ(b[1], 0x3f);
}

}  // namespace
}  // namespace tierkv::kernels
