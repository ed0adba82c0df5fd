#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tierkv::kernels::reference {

void Matmul(const MatmulParams& p) {
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      double sum = 0;
      for (int64_t k = 0; k < p.k; ++k) {
        sum += static_cast<double>(p.x[i * p.ldx + k]) * p.w[j * p.ldw + k];
      }
      if (p.bias != nullptr) sum += p.bias[j];
      if (p.accumulate) sum += p.y[i * p.ldy + j];
      p.y[i * p.ldy + j] = static_cast<float>(sum);
    }
  }
}

void RmsNorm(const RmsNormParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < p.dim; ++i) ss += static_cast<double>(p.x[r * p.ldx + i]) * p.x[r * p.ldx + i];
    const double inv = 1.0 / std::sqrt(ss / p.dim + p.eps);
    for (int64_t i = 0; i < p.dim; ++i) {
      p.y[r * p.ldy + i] = static_cast<float>(p.x[r * p.ldx + i] * inv * p.weight[i]);
    }
  }
}

void ApplyRope(const RopeParams& p) {
  const int half = p.head_dim / 2;
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int h = 0; h < p.num_heads; ++h) {
      float* x = p.x + r * p.ldx + static_cast<int64_t>(h) * p.head_dim;
      for (int i = 0; i < half; ++i) {
        const double c = p.cos[r * half + i];
        const double s = p.sin[r * half + i];
        const double a = x[i];
        const double b = x[i + half];
        x[i] = static_cast<float>(a * c - b * s);
        x[i + half] = static_cast<float>(b * c + a * s);
      }
    }
  }
}

void RopeCosSin(std::span<const float> inv_freq, int64_t start, int64_t rows, float* cos,
                float* sin) {
  const size_t half = inv_freq.size();
  for (int64_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(start + r) * inv_freq[i];
      cos[r * half + i] = static_cast<float>(std::cos(angle));
      sin[r * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

void SwiGlu(const SwiGluParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t i = 0; i < p.inter; ++i) {
      const double g = p.gate_up[r * p.ld_gate_up + i];
      const double u = p.gate_up[r * p.ld_gate_up + p.inter + i];
      p.out[r * p.ld_out + i] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
    }
  }
}

void Attention(const AttentionParams& p) {
  const int group = p.num_q_heads / p.num_kv_heads;
  std::vector<double> scores;
  for (int64_t r = 0; r < p.num_queries; ++r) {
    const int64_t pos = p.query_position + r;
    const int64_t first =
        p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
    for (int hq = 0; hq < p.num_q_heads; ++hq) {
      const int hk = hq / group;
      const float* q = p.q + r * p.ldq + static_cast<int64_t>(hq) * p.head_dim;
      scores.assign(pos + 1 - first, 0.0);
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t j = first; j <= pos; ++j) {
        const float* k = p.k + j * p.ldkv + static_cast<int64_t>(hk) * p.head_dim;
        double dot = 0;
        for (int d = 0; d < p.head_dim; ++d) dot += static_cast<double>(q[d]) * k[d];
        scores[j - first] = dot * p.scale;
        max_score = std::max(max_score, scores[j - first]);
      }
      double total = 0;
      for (double& s : scores) {
        s = std::exp(s - max_score);
        total += s;
      }
      float* out = p.out + r * p.ldo + static_cast<int64_t>(hq) * p.head_dim;
      for (int d = 0; d < p.head_dim; ++d) {
        double acc = 0;
        for (int64_t j = first; j <= pos; ++j) {
          acc += scores[j - first] * p.v[j * p.ldkv + static_cast<int64_t>(hk) * p.head_dim + d];
        }
        out[d] = static_cast<float>(acc / total);
      }
    }
  }
}

}  // namespace tierkv::kernels::reference
