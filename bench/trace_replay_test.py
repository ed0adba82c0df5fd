#!/usr/bin/env python3
"""trace_replay end to end on a small generated trace.

Checks what the hit-rate figures in bench/RESULTS.md rest on:
- with `--admission all` the live server's hits equal, request by request, the driver's
  offline model of the server's policy (leaf LRU), and the host tier never holds more than
  its capacity;
- under the default policy (auto) every request runs, nothing fails, and the admission
  bounds come out with every simulated hit rate at most the infinite cache's;
- a trace that cannot be read is a clear error that starts no server.

Every server is started by trace_replay itself: 127.0.0.1, a port of its choosing, stopped
by its PID; the whole program runs under --timeout.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CAPACITIES = [200, 800]


def run(cmd, timeout):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check(cond, what):
    if not cond:
        print("FAILED:", what, flush=True)
        sys.exit(1)
    print("ok:", what, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trace-replay", required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="trace_replay_test.") as tmp:
        trace = os.path.join(tmp, "chat.jsonl")
        r = run([args.trace_replay, "--generate-trace", trace, "--seed", "3", "--gen-sessions",
                 "40", "--gen-documents", "60", "--gen-duration", "120"], 60)
        check(r.returncode == 0, f"generate a trace ({r.stdout.strip()}{r.stderr.strip()})")
        caps = ",".join(str(c) for c in CAPACITIES)

        # Plain LRU: the replay must match the model of the server's policy exactly.
        out = os.path.join(tmp, "all.json")
        r = run([args.trace_replay, "--trace", trace, "--capacities", caps, "--timeout", "120",
                 "--server-arg=--admission=all", "--json", out], 150)
        check(r.returncode == 0, f"replay under --admission=all (rc {r.returncode}: {r.stderr[-2000:]})")
        res = json.load(open(out))
        check(len(res["capacities"]) == len(CAPACITIES), "one result per capacity")
        for c in res["capacities"]:
            rep, off = c["replay"], c["offline"]
            cap = c["capacity_blocks"]
            check(not rep["timed_out"] and not rep["aborted"], f"{cap}: replay ran to the end")
            check(rep["requests"] == res["requests"], f"{cap}: every request replayed")
            check(rep["outcomes"]["failed_requests"] == 0, f"{cap}: no failed request")
            check(rep["requests_differing_from_leaf_lru"] == 0,
                  f"{cap}: every request's hit equals the leaf-LRU model's")
            check(rep["hit_blocks"] == off["leaf_lru"]["hit_blocks"],
                  f"{cap}: {rep['hit_blocks']} hit blocks, as the model says")
            check(0 < rep["hit_blocks"] <= off["infinite"]["hit_blocks"],
                  f"{cap}: some hits, no more than an infinite cache")
            check(rep["outcomes"]["blocks_committed"] == rep["outcomes"]["allocated"],
                  f"{cap}: every allocated block committed")
            host = [t for t in c["server_stats"]["tiers"] if t["tier"] == "TIER_HOST"][0]
            used, capacity = int(host.get("usedBytes", host.get("used_bytes", 0))), \
                int(host.get("capacityBytes", host.get("capacity_bytes", 0)))
            check(0 < used <= capacity, f"{cap}: host tier {used} of {capacity} bytes")

        # The default policy with the admission bounds.
        out = os.path.join(tmp, "auto.json")
        r = run([args.trace_replay, "--trace", trace, "--capacities", caps, "--timeout", "120",
                 "--admission-bounds", "--json", out], 150)
        check(r.returncode == 0, f"replay under auto with bounds (rc {r.returncode}: {r.stderr[-2000:]})")
        check("admission in front of LRU" in r.stdout, "the bounds table is printed")
        res = json.load(open(out))
        for c in res["capacities"]:
            rep, off = c["replay"], c["offline"]
            cap = c["capacity_blocks"]
            check(rep["outcomes"]["failed_requests"] == 0 and not rep["timed_out"],
                  f"{cap}: auto replay ran clean")
            inf = off["infinite"]["hit_blocks"]
            b = off["admission_bounds"]
            for name, rates in [("replay", rep), ("LRU", off["lru"]), ("Belady", off["belady"]),
                                ("second use", b["second_use_exact"]), ("fitted", b["fitted"]),
                                ("oracle", b["reuse_oracle"])]:
                check(0 <= rates["hit_blocks"] <= inf, f"{cap}: {name} hits at most infinite's")
            check(b["fitted_rule"].startswith("reuse within"), f"{cap}: fitted rule named")
            check(off["lru"]["hit_blocks"] <= off["belady"]["hit_blocks"],
                  f"{cap}: Belady at least LRU")

        # A trace that is not there.
        r = run([args.trace_replay, "--trace", os.path.join(tmp, "missing.jsonl"),
                 "--capacities", "10", "--timeout", "30"], 60)
        check(r.returncode == 1 and "cannot open trace" in r.stderr,
              f"missing trace refused ({r.stderr.strip()})")
        check("cache manager pid" not in r.stderr, "no server started for it")
    print("trace_replay_test: all checks passed")


if __name__ == "__main__":
    main()
