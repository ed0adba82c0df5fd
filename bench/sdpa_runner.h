// Runs bench/sdpa_baseline.py (PyTorch SDPA, causal GQA prefill in bf16) as a subprocess
// under `timeout` and reads its --json lines: milliseconds by (seq, head_dim, backend). The
// GPU benches print these beside their own figures, measured in the same run. The script's
// path is relative to the working directory (run from the repository root).
#ifndef TIERKV_BENCH_SDPA_RUNNER_H_
#define TIERKV_BENCH_SDPA_RUNNER_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tierkv::bench {

struct SdpaRequest {
  std::string script = "bench/sdpa_baseline.py";
  int timeout_s = 900;
  std::vector<int64_t> seq;       // head_dim 128 lengths.
  std::vector<int64_t> hd64_seq;  // head_dim 64 lengths.
  int runs = 10;
  int long_runs = 5;
  int warmup = 2;
};

// SDPA milliseconds by (seq, head_dim, backend); notes keep the gqa mode or the error.
struct Sdpa {
  std::string header, error;
  std::map<std::tuple<int64_t, int, std::string>, double> ms;
  std::map<std::tuple<int64_t, int, std::string>, std::string> note;
};

inline std::string JsonField(const std::string& line, const std::string& key) {
  const std::string pat = "\"" + key + "\": ";
  size_t at = line.find(pat);
  if (at == std::string::npos) return "";
  at += pat.size();
  if (line[at] == '"') {
    const size_t end = line.find('"', at + 1);
    return line.substr(at + 1, end - at - 1);
  }
  size_t end = line.find_first_of(",}", at);
  return line.substr(at, end - at);
}

inline Sdpa RunSdpaScript(const SdpaRequest& f) {
  Sdpa s;
  std::string seqs, hd64;
  for (int64_t x : f.seq) absl::StrAppend(&seqs, seqs.empty() ? "" : ",", x);
  for (int64_t x : f.hd64_seq) absl::StrAppend(&hd64, hd64.empty() ? "" : ",", x);
  const std::string cmd = absl::StrFormat(
      "timeout %d python3 '%s' --seq=%s --hd64-seq='%s' --runs=%d --long-runs=%d "
      "--warmup=%d --json 2>&1",
      f.timeout_s, f.script, seqs, hd64, f.runs, f.long_runs, f.warmup);
  std::printf("running: %s\n", cmd.c_str());
  std::fflush(stdout);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    s.error = "popen failed";
    return s;
  }
  std::string all;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) all += buf;
  const int rc = pclose(pipe);
  for (absl::string_view line_view : absl::StrSplit(all, '\n')) {
    const std::string line(line_view);
    if (line.find("\"torch\"") != std::string::npos) s.header = line;
    if (line.find("\"error\"") != std::string::npos && line.find("\"seq\"") == std::string::npos) {
      s.error = JsonField(line, "error");
    }
    if (line.find("\"backend\"") == std::string::npos) continue;
    int64_t seq = 0;
    int hd = 0;
    if (!absl::SimpleAtoi(JsonField(line, "seq"), &seq) ||
        !absl::SimpleAtoi(JsonField(line, "head_dim"), &hd)) {
      continue;
    }
    const auto key = std::make_tuple(seq, hd, JsonField(line, "backend"));
    double ms;
    if (absl::SimpleAtod(JsonField(line, "ms"), &ms)) s.ms[key] = ms;
    const std::string gqa = JsonField(line, "gqa"), err = JsonField(line, "error");
    s.note[key] = !gqa.empty() ? absl::StrCat("gqa ", gqa) : absl::StrCat("error: ", err);
  }
  if (rc != 0 && s.error.empty()) {
    s.error = absl::StrCat("exit status ", rc, "; output:\n", all);
  }
  return s;
}

}  // namespace tierkv::bench

#endif  // TIERKV_BENCH_SDPA_RUNNER_H_
