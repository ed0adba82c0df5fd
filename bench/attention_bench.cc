// attention_bench: the CUDA attention kernels (kernels/cuda/ops.h Attention) beside PyTorch
// SDPA measured in the same run.
//
// Prefill: dense causal attention of one sequence with Llama-3-8B's head layout (32 q heads,
// 8 KV heads, head_dim 128, bf16) at --seq lengths (default 8K, 32K, 128K), plus a head_dim 64
// line at --hd64-seq (default 32K). Decode: 1 query x 32 q heads against --decode-keys (default
// 32K, 128K), memory-bound, beside a device-to-device cudaMemcpy of the same bytes.
//
// Timing: CUDA events around each call, --warmup calls first, the median of --runs (fewer at
// 64K tokens and more: --long-runs). Inputs are not rotated: the smallest prefill working set
// (8K tokens: q + k + v + out = 8192 * (32 + 8 + 8 + 32) * 128 * 2 bytes = 168 MB) and the
// smallest decode one (32K keys: K + V = 134 MB) exceed the H200's 60 MB L2.
// FLOPs (ours and SDPA alike): causal = 4 * S * S * head_dim * q_heads / 2 (QK^T and PV, 2
// FLOPs per multiply-add, half the square under the mask).
//
// The SDPA figures come from `python3 --sdpa-script ... --json`, run as a subprocess under
// `timeout` (the script's path is relative to the working directory: run from the repository
// root). Without PyTorch the bench says so loudly and prints its own figures.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "kernels/cuda/internal/attention_launch.h"
#include "bench/sdpa_runner.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"

namespace tierkv::kernels::cuda {
namespace {

using bench::Sdpa;
using bench::SdpaRequest;
using bench::RunSdpaScript;

struct Flags {
  std::vector<int64_t> seq = {8192, 32768, 131072};
  std::vector<int64_t> hd64_seq = {32768};
  std::vector<int64_t> decode_keys = {32768, 131072};
  int runs = 10;
  int long_runs = 5;
  int warmup = 2;
  std::string sdpa_script = "bench/sdpa_baseline.py";
  int sdpa_timeout_s = 900;
  bool sdpa = true;
  bool variants = false;  // Also time every prefill kernel configuration (internal):
                          // the mma.sync tiles and the wgmma stage counts.
};

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "attention_bench: %s\n", msg.c_str());
  std::exit(1);
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(absl::StrCat(what, ": ", s.ToString()));
}

std::vector<int64_t> ParseList(absl::string_view text, const char* flag) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t x;
    if (!absl::SimpleAtoi(part, &x) || x <= 0) Die(absl::StrCat("bad ", flag, ": ", text));
    out.push_back(x);
  }
  return out;
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    auto value = [&](absl::string_view name) -> std::optional<absl::string_view> {
      if (a.substr(0, name.size()) == name && a.size() > name.size() && a[name.size()] == '=') {
        return a.substr(name.size() + 1);
      }
      return std::nullopt;
    };
    auto to_int = [&](absl::string_view v) {
      int x;
      if (!absl::SimpleAtoi(v, &x) || x < 0) Die(absl::StrCat("bad value: ", a));
      return x;
    };
    if (auto v = value("--seq")) {
      f.seq = ParseList(*v, "--seq");
    } else if (auto v = value("--hd64-seq")) {
      f.hd64_seq = *v == "" ? std::vector<int64_t>{} : ParseList(*v, "--hd64-seq");
    } else if (auto v = value("--decode-keys")) {
      f.decode_keys = *v == "" ? std::vector<int64_t>{} : ParseList(*v, "--decode-keys");
    } else if (auto v = value("--runs")) {
      f.runs = std::max(1, to_int(*v));
    } else if (auto v = value("--long-runs")) {
      f.long_runs = std::max(1, to_int(*v));
    } else if (auto v = value("--warmup")) {
      f.warmup = to_int(*v);
    } else if (auto v = value("--sdpa-script")) {
      f.sdpa_script = std::string(*v);
    } else if (auto v = value("--sdpa-timeout")) {
      f.sdpa_timeout_s = to_int(*v);
    } else if (a == "--no-sdpa") {
      f.sdpa = false;
    } else if (a == "--variants") {
      f.variants = true;
    } else {
      Die(absl::StrCat(
          "unknown flag ", a,
          "\nflags: --seq=8192,32768,131072 --hd64-seq=32768 --decode-keys=32768,131072 "
          "--runs=10 --long-runs=5 --warmup=2 --sdpa-script=bench/sdpa_baseline.py "
          "--sdpa-timeout=900 --no-sdpa --variants"));
    }
  }
  return f;
}

// Device buffer, freed on destruction.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) { Check(cudaMalloc(&ptr_, bytes), "cudaMalloc"); }
  ~Buffer() { cudaFree(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Random bf16 in [-1, 1): a 16 MB random block generated once, tiled over the buffer (the
// repetition period, 8M elements, is far longer than any tile the kernels read at once).
void FillRandom(const Buffer& b, uint32_t seed) {
  static std::vector<uint16_t> block = [] {
    std::mt19937 rng(20261128);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<uint16_t> x(size_t{8} << 20);
    for (uint16_t& e : x) e = FloatToBf16(dist(rng));
    return x;
  }();
  const size_t block_bytes = block.size() * 2;
  // A per-buffer offset into the block so q, k and v differ.
  const size_t shift = (seed * size_t{1048583}) % block.size();
  std::vector<uint16_t> rotated(block.begin() + shift, block.end());
  rotated.insert(rotated.end(), block.begin(), block.begin() + shift);
  const size_t first = std::min(b.bytes(), block_bytes);
  Check(cudaMemcpy(b.as<void>(), rotated.data(), first, cudaMemcpyHostToDevice), "upload");
  for (size_t done = first; done < b.bytes();) {
    const size_t n = std::min(done, b.bytes() - done);
    Check(cudaMemcpy(b.as<char>() + done, b.as<void>(), n, cudaMemcpyDeviceToDevice), "tile");
    done += n;
  }
}

// Median milliseconds of `runs` calls after `warmup` calls, each call between two events.
template <typename F>
double TimeMs(F&& call, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) call();
  Check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "event");
  Check(cudaEventCreate(&stop), "event");
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    Check(cudaEventRecord(start), "record");
    call();
    Check(cudaEventRecord(stop), "record");
    Check(cudaEventSynchronize(stop), "sync");
    float t = 0;
    Check(cudaEventElapsedTime(&t, start, stop), "elapsed");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int64_t CountNonFinite(const Buffer& out, size_t count) {
  std::vector<uint16_t> h(count);
  Check(cudaMemcpy(h.data(), out.as<void>(), count * 2, cudaMemcpyDeviceToHost), "download");
  int64_t bad = 0;
  for (uint16_t x : h) bad += (x & 0x7F80) == 0x7F80;  // Exponent all ones: inf or NaN.
  return bad;
}

constexpr int kHeads = 32, kKvHeads = 8;

double CausalFlops(int64_t s, int hd) { return 4.0 * s * s * hd * kHeads / 2.0; }

struct Prefill {
  int64_t seq;
  int hd;
  double ms;
  std::map<std::string, double> variant_ms;
};

AttentionParams PrefillParams(int64_t seq, int hd, const Buffer& q, const Buffer& k,
                              const Buffer& v, const Buffer& out) {
  AttentionParams p;
  p.q = q.as<Bf16>();
  p.k = k.as<Bf16>();
  p.v = v.as<Bf16>();
  p.out = out.as<Bf16>();
  p.ldq = p.ldo = int64_t{kHeads} * hd;
  p.ldkv = int64_t{kKvHeads} * hd;
  p.num_queries = seq;
  p.query_position = 0;
  p.num_keys = seq;
  p.num_q_heads = kHeads;
  p.num_kv_heads = kKvHeads;
  p.head_dim = hd;
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return p;
}

Prefill RunPrefill(const Flags& f, int64_t seq, int hd) {
  const size_t q_elems = seq * kHeads * hd, kv_elems = seq * kKvHeads * hd;
  Buffer q(q_elems * 2), k(kv_elems * 2), v(kv_elems * 2), out(q_elems * 2);
  FillRandom(q, 1);
  FillRandom(k, 2);
  FillRandom(v, 3);
  const AttentionParams p = PrefillParams(seq, hd, q, k, v, out);
  const int runs = seq >= 65536 ? f.long_runs : f.runs;
  Prefill r{seq, hd, 0, {}};
  Check(cudaMemset(out.as<void>(), 0xFF, out.bytes()), "poison");
  r.ms = TimeMs([&] { Check(Attention(p, nullptr), "Attention"); }, f.warmup, runs);
  if (const int64_t bad = CountNonFinite(out, q_elems); bad > 0) {
    Die(absl::StrCat("prefill S=", seq, " hd=", hd, ": ", bad, " non-finite outputs"));
  }
  if (f.variants) {
    internal::AttentionProblem x;
    x.q = p.q, x.ldq = p.ldq, x.k = p.k, x.v = p.v, x.ldkv = p.ldkv, x.out = p.out;
    x.ldo = p.ldo, x.num_queries = p.num_queries, x.num_keys = p.num_keys;
    x.num_q_heads = p.num_q_heads, x.num_kv_heads = p.num_kv_heads, x.head_dim = hd;
    x.scale = p.scale;
    const internal::AttentionPlan plan = internal::PlanAttention(x);
    for (int var = 0; var < internal::kPrefillVariants; ++var) {
      Check(cudaMemset(out.as<void>(), 0xFF, out.bytes()), "poison");
      const double ms = TimeMs(
          [&] { Check(internal::LaunchAttention(x, plan, var, nullptr), "launch variant"); },
          f.warmup, runs);
      const int64_t bad = CountNonFinite(out, q_elems);
      r.variant_ms[internal::PrefillVariantName(var)] = bad > 0 ? -1.0 : ms;
    }
  }
  return r;
}

struct Decode {
  int64_t keys;
  double ms, copy_ms;
  size_t splits;
};

Decode RunDecode(const Flags& f, int64_t keys) {
  const int hd = 128;
  const size_t kv_elems = keys * kKvHeads * hd;
  Buffer q(size_t{kHeads} * hd * 2), k(kv_elems * 2), v(kv_elems * 2), out(kHeads * hd * 2);
  FillRandom(q, 4);
  FillRandom(k, 5);
  FillRandom(v, 6);
  AttentionParams p = PrefillParams(1, hd, q, k, v, out);
  p.query_position = keys - 1;
  p.num_keys = keys;
  p.workspace_bytes = AttentionWorkspaceBytes(p);
  Buffer ws(std::max<size_t>(p.workspace_bytes, 16));
  p.workspace = ws.as<void>();
  Decode d{keys, 0, 0, p.workspace_bytes / ((hd + 1) * sizeof(float) * kHeads)};
  Check(cudaMemset(out.as<void>(), 0xFF, out.bytes()), "poison");
  d.ms = TimeMs([&] { Check(Attention(p, nullptr), "Attention"); }, f.warmup + 3, 51);
  if (const int64_t bad = CountNonFinite(out, kHeads * hd); bad > 0) {
    Die(absl::StrCat("decode keys=", keys, ": ", bad, " non-finite outputs"));
  }
  // The same bytes as K + V, copied device to device (reads them once, writes them once).
  Buffer dst(2 * kv_elems * 2);
  d.copy_ms = TimeMs(
      [&] {
        Check(cudaMemcpyAsync(dst.as<char>(), k.as<void>(), kv_elems * 2,
                              cudaMemcpyDeviceToDevice),
              "copy");
        Check(cudaMemcpyAsync(dst.as<char>() + kv_elems * 2, v.as<void>(), kv_elems * 2,
                              cudaMemcpyDeviceToDevice),
              "copy");
      },
      f.warmup + 3, 51);
  return d;
}

Sdpa RunSdpa(const Flags& f) {
  SdpaRequest r;
  r.script = f.sdpa_script;
  r.timeout_s = f.sdpa_timeout_s;
  r.seq = f.seq;
  r.hd64_seq = f.hd64_seq;
  r.runs = f.runs;
  r.long_runs = f.long_runs;
  r.warmup = f.warmup;
  return RunSdpaScript(r);
}

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  absl::StatusOr<DeviceInfo> dev = CurrentDevice();
  if (!dev.ok() || !Available()) {
    Die(absl::StrCat("no usable sm_90 CUDA device: ",
                     dev.ok() ? absl::StrCat(dev->name, " sm_", dev->sm_major, dev->sm_minor)
                              : dev.status().ToString()));
  }
  std::printf("device: %s, %d SMs, L2 %zu MB\n", dev->name, dev->multiprocessors,
              dev->l2_bytes >> 20);
  std::printf("layout: %d q heads, %d KV heads, bf16, causal; FLOPs = 4*S*S*hd*%d/2\n", kHeads,
              kKvHeads, kHeads);
  std::vector<Prefill> prefill;
  for (int64_t s : f.seq) prefill.push_back(RunPrefill(f, s, 128));
  for (int64_t s : f.hd64_seq) prefill.push_back(RunPrefill(f, s, 64));
  std::vector<Decode> decode;
  for (int64_t keys : f.decode_keys) decode.push_back(RunDecode(f, keys));

  Sdpa sdpa;
  if (f.sdpa) sdpa = RunSdpa(f);
  if (!f.sdpa) {
    std::printf("SDPA baseline skipped (--no-sdpa)\n");
  } else if (sdpa.ms.empty()) {
    std::printf(
        "\n*** NO PYTORCH SDPA BASELINE: %s ***\n*** the figures below have nothing to "
        "compare with ***\n\n",
        sdpa.error.empty() ? "no results" : sdpa.error.c_str());
  } else {
    std::printf("sdpa: %s\n", sdpa.header.c_str());
    for (const auto& [key, note] : sdpa.note) {
      std::printf("  sdpa %-7s S=%-6lld hd=%d: %s\n", std::get<2>(key).c_str(),
                  static_cast<long long>(std::get<0>(key)), std::get<1>(key), note.c_str());
    }
  }

  std::printf("\nprefill (median ms; ratio = ours / SDPA time, < 1 is faster)\n");
  std::printf("%-8s %-4s %10s %8s %12s %8s %12s %8s %12s %8s\n", "S", "hd", "ours_ms",
              "TFLOP/s", "sdpa_def_ms", "ratio", "sdpa_fa_ms", "ratio", "sdpa_cudnn", "ratio");
  for (const Prefill& r : prefill) {
    const double tf = CausalFlops(r.seq, r.hd) / (r.ms * 1e-3) / 1e12;
    std::string row = absl::StrFormat("%-8d %-4d %10.3f %8.1f", r.seq, r.hd, r.ms, tf);
    for (const char* b : {"default", "flash", "cudnn"}) {
      auto it = sdpa.ms.find(std::make_tuple(r.seq, r.hd, std::string(b)));
      if (it == sdpa.ms.end()) {
        absl::StrAppend(&row, absl::StrFormat(" %12s %8s", "-", "-"));
      } else {
        absl::StrAppend(&row, absl::StrFormat(" %12.3f %8.3f", it->second, r.ms / it->second));
      }
    }
    std::printf("%s\n", row.c_str());
    for (const char* b : {"default", "flash", "cudnn"}) {
      auto it = sdpa.ms.find(std::make_tuple(r.seq, r.hd, std::string(b)));
      if (it != sdpa.ms.end()) {
        std::printf("%-13s sdpa %-7s %8.1f TFLOP/s\n", "", b,
                    CausalFlops(r.seq, r.hd) / (it->second * 1e-3) / 1e12);
      }
    }
    for (const auto& [name, ms] : r.variant_ms) {
      std::printf("%-13s variant %-10s %10.3f ms %8.1f TFLOP/s\n", "", name.c_str(), ms,
                  ms > 0 ? CausalFlops(r.seq, r.hd) / (ms * 1e-3) / 1e12 : 0.0);
    }
  }
  std::printf("\ndecode (1 query x %d q heads, %d KV heads, hd 128; bytes = K + V read once)\n",
              kHeads, kKvHeads);
  std::printf("%-8s %8s %10s %10s %14s %16s\n", "keys", "splits", "ours_us", "ours_GB/s",
              "memcpy_us", "memcpy_GB/s(r+w)");
  for (const Decode& d : decode) {
    const double bytes = 2.0 * d.keys * kKvHeads * 128 * 2;
    std::printf("%-8lld %8zu %10.1f %10.0f %14.1f %16.0f\n", static_cast<long long>(d.keys),
                d.splits, d.ms * 1e3, bytes / (d.ms * 1e-3) / 1e9, d.copy_ms * 1e3,
                2 * bytes / (d.copy_ms * 1e-3) / 1e9);
  }
  return 0;
}

}  // namespace
}  // namespace tierkv::kernels::cuda

int main(int argc, char** argv) { return tierkv::kernels::cuda::Main(argc, argv); }
