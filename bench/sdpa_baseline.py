#!/usr/bin/env python3
"""PyTorch SDPA baseline for bench/attention_bench: causal GQA prefill in bf16.

Times torch.nn.functional.scaled_dot_product_attention(is_causal=True) on the shapes the
bench measures, with the same [tokens][heads][head_dim] memory layout (viewed as
[1, heads, tokens, head_dim] by a transpose, no copy), using CUDA events: warm-up runs, then
the median of --runs. Backends: PyTorch's default choice, and forced FLASH_ATTENTION and
CUDNN_ATTENTION where available. GQA is passed natively (enable_gqa=True); a backend that
refuses it is timed again on K/V expanded to all q heads (the expansion itself untimed),
which is what Hugging Face Llama does; the "gqa" field says which.

With --json the output is one JSON object whose "results" list has one entry per line, so
the C++ bench can read it line by line without a JSON library.
"""
import argparse
import json
import statistics
import sys


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", default="8192,32768,131072", help="head_dim 128 lengths")
    ap.add_argument("--hd64-seq", default="32768", help="head_dim 64 lengths ('' for none)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--long-runs", type=int, default=5, help="runs at 65536 tokens and more")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def lengths(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main():
    args = parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - any import failure means no baseline.
        print(json.dumps({"error": f"PyTorch unavailable: {e!r}", "results": []}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch.cuda.is_available() is False", "results": []}))
        return 0

    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION)]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends.append(("cudnn", SDPBackend.CUDNN_ATTENTION))

    def timed(fn, runs, warmup):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(runs):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    shapes = [(s, 128) for s in lengths(args.seq)] + [(s, 64) for s in lengths(args.hd64_seq)]
    results = []
    gen = torch.Generator(device="cuda").manual_seed(20261128)
    for seq, hd in shapes:
        runs = args.long_runs if seq >= 65536 else args.runs

        def rand(heads):
            x = torch.randn(1, seq, heads, hd, device="cuda", dtype=torch.bfloat16,
                            generator=gen)
            return x.transpose(1, 2)  # [1, heads, seq, hd] view of [seq][heads][hd].

        q, k, v = rand(args.heads), rand(args.kv_heads), rand(args.kv_heads)
        for name, backend in backends:
            entry = {"seq": seq, "head_dim": hd, "heads": args.heads,
                     "kv_heads": args.kv_heads, "backend": name}
            for gqa in ("native", "expanded"):
                if gqa == "native":
                    kk, vv, extra = k, v, {"enable_gqa": True}
                else:
                    rep = args.heads // args.kv_heads
                    kk = k.repeat_interleave(rep, dim=1)
                    vv = v.repeat_interleave(rep, dim=1)
                    extra = {}

                def run():
                    if backend is None:
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **extra)
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **extra)

                try:
                    out = run()
                    torch.cuda.synchronize()
                    if torch.isnan(out).any().item():
                        raise RuntimeError("NaN in output")
                    del out
                    entry["ms"] = timed(run, runs, args.warmup)
                    entry["gqa"] = gqa
                    entry["runs"] = runs
                    entry.pop("error", None)
                    break
                except Exception as e:  # noqa: BLE001 - a backend may refuse a shape.
                    entry["error"] = f"{gqa}: {str(e).splitlines()[0][:160]}"
                finally:
                    del kk, vv
                    torch.cuda.empty_cache()
            results.append(entry)
        del q, k, v
        torch.cuda.empty_cache()

    header = {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "cudnn": torch.backends.cudnn.version()}
    if args.json:
        # One result per line (see the module docstring).
        print("{" + json.dumps(header)[1:-1] + ', "results": [')
        for i, r in enumerate(results):
            print(json.dumps(r) + ("," if i + 1 < len(results) else ""))
        print("]}")
    else:
        print(header)
        for r in results:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
