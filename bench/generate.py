"""Time beam search (unified_petl.generate) of a (m)BART model with a Δh method.

    python bench/generate.py --arch bart-base --method "mam(l=16,r=16,s=2)" --batch 4 \
        --seq 256 --beams 6 --max-length 60 --json

Random-init weights from the shipped config (configs/models/<arch>/config.json); Δh is
initialised as for training plus small noise, so zero-initialised leaves (LoRA's B, the
adapters' W_up) look trained (the cost is the same either way). min_length is set
to max_length by default, so every search runs the full max_length steps and the time does
not depend on when a random model happens to emit EOS.

--with-hf: after ours, transformers' PyTorch `generate` (BartForConditionalGeneration /
MBart..., random-init from the same config) at the same settings (batch, source ids, beams,
max/min length, no_repeat_ngram_size, length_penalty 1.0, early_stopping False, the config's
forced BOS/EOS), then a line {"compare": ..., "ours_over_hf": ...} per method (the HF model
has no Δh: it is the base's time, the denominator of every method). --hf alone: only HF.

Printed (one JSON object per method with --json): gen_s (median wall time of one generate
call, compile excluded), tokens_per_s (B · generated tokens / gen_s), compile_s (first call
minus a timed call), peak_rss_bytes, device_peak_bytes, recompiles (compilations during the
timed calls: must be 0), load, keep_freed_memory (unified_petl.host_memory, as the CLI;
process-wide, so transformers' side runs with it too; UNIFIED_PETL_KEEP_FREED_MEMORY=0: off).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from step_time import print_result  # noqa: E402  (bench/ is this script's folder)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="bart-base", help="bart-base | bart-large | mbart-large-cc25")
    p.add_argument("--method", action="append", default=None,
                   help="a preset; repeat for several methods on one random base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256, help="source length S")
    p.add_argument("--beams", type=int, default=6)
    p.add_argument("--max-length", type=int, default=60)
    p.add_argument("--min-length", type=int, default=None, help="default: = max-length")
    p.add_argument("--no-repeat", type=int, default=3, help="no_repeat_ngram_size")
    p.add_argument("--repeats", type=int, default=2, help="timed calls (median reported)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--with-hf", action="store_true",
                   help="then time transformers' PyTorch generate at the same settings")
    p.add_argument("--hf", action="store_true", help="time only transformers' generate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def bench(args, method: str, base_cache: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import unified_petl as up
    from unified_petl.delta.budget import shipped_config

    hf_config = shipped_config(args.arch)
    if not hf_config.is_encoder_decoder:
        raise SystemExit(f"{args.arch} is not a seq2seq model; beam search needs (m)BART")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = up.build(hf_config, method, dtype=dtype)
    ids, mask = source(args, hf_config)
    small = {"input_ids": ids[:1, :8], "attention_mask": mask[:1, :8],
             "decoder_input_ids": ids[:1, :8]}
    key = jax.random.key(0)
    if "params" not in base_cache:
        variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, **small))(key)
        base_cache["params"] = variables["params"]
        delta = variables.get("delta", {})
    else:
        delta = up.init_delta(model, key, small, params=base_cache["params"])
    # A trained-looking Δh: small random values everywhere (zero-init leaves included).
    leaves, treedef = jax.tree.flatten(delta)
    keys = jax.random.split(jax.random.key(1), max(len(leaves), 1))
    delta = jax.tree.unflatten(treedef, [x + 0.01 * jax.random.normal(k, x.shape, x.dtype)
                                         for x, k in zip(leaves, keys)])
    variables = {"params": base_cache["params"], "delta": delta}
    min_length = args.max_length if args.min_length is None else args.min_length

    def call():
        return up.generate(model, variables, ids, mask, num_beams=args.beams,
                           max_length=args.max_length, min_length=min_length,
                           no_repeat_ngram_size=args.no_repeat, config=hf_config)

    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    compiles = []
    listener = (lambda name, secs, **kw: compiles.append(name)
                if name.endswith("backend_compile_duration") else None)
    jax.monitoring.register_event_duration_secs_listener(listener)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    try:
        jax.monitoring._unregister_event_duration_listener_by_callback(listener)
    except Exception:
        pass
    gen_s = statistics.median(times)
    generated = int(out.shape[1]) - 1
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        stats = {}
    return {
        "impl": "jax", "arch": args.arch, "method": method, "batch": args.batch,
        "seq": args.seq, "beams": args.beams, "max_length": args.max_length,
        "min_length": min_length, "no_repeat_ngram_size": args.no_repeat, "dtype": args.dtype,
        "backend": jax.default_backend(), "generated_tokens": generated,
        "gen_s": gen_s, "gen_s_all": times, "tokens_per_s": args.batch * generated / gen_s,
        "compile_s": max(first - gen_s, 0.0),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "recompiles": len(compiles), "load": list(os.getloadavg()),
    }


def source(args, hf_config):
    """The benchmark's source ids [B, S] (random tokens, EOS last) and mask, as numpy."""
    import numpy as np

    rs = np.random.RandomState(0)
    ids = rs.randint(4, hf_config.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    ids[:, -1] = hf_config.eos_token_id
    return ids, np.ones_like(ids)


def bench_hf(args) -> dict:
    """transformers' generate on a random-init PyTorch model of args.arch, same settings."""
    import torch
    import transformers

    from unified_petl.delta.budget import shipped_config

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_config = shipped_config(args.arch)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = transformers.AutoModelForSeq2SeqLM.from_config(hf_config).to(dtype).eval()
    ids, mask = (torch.from_numpy(a).long() for a in source(args, hf_config))
    min_length = args.max_length if args.min_length is None else args.min_length

    def call():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, num_beams=args.beams,
                                  max_length=args.max_length, min_length=min_length,
                                  no_repeat_ngram_size=args.no_repeat, length_penalty=1.0,
                                  early_stopping=False, do_sample=False, num_return_sequences=1,
                                  use_cache=True)

    t0 = time.perf_counter()
    out = call()  # warm-up (allocator, lazy init), as ours compiles on its first call
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    gen_s = statistics.median(times)
    generated = int(out.shape[1]) - 1
    return {"impl": "transformers", "arch": args.arch, "method": "none", "batch": args.batch,
            "seq": args.seq, "beams": args.beams, "max_length": args.max_length,
            "min_length": min_length, "no_repeat_ngram_size": args.no_repeat,
            "dtype": args.dtype, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "generated_tokens": generated, "gen_s": gen_s, "gen_s_all": times,
            "tokens_per_s": args.batch * generated / gen_s, "first_call_s": first,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "load": list(os.getloadavg())}


def main(argv=None):
    args = parse_args(argv)
    # as the CLI does (unified_petl.host_memory); UNIFIED_PETL_KEEP_FREED_MEMORY=0: glibc's
    # defaults. Process-wide: PyTorch's side of a --with-* comparison runs with it too.
    from unified_petl.host_memory import keep_freed_memory

    keep = keep_freed_memory()
    base_cache: dict = {}
    ours = []
    if not args.hf:
        for method in args.method or ["mam(l=16,r=16,s=2)"]:
            ours.append(bench(args, method, base_cache))
            print_result({**ours[-1], "keep_freed_memory": keep}, args.json)
    if args.hf or args.with_hf:
        theirs = bench_hf(args)
        print_result({**theirs, "keep_freed_memory": keep}, args.json)
        for result in ours:
            print_result({"compare": result["method"], "arch": args.arch, "beams": args.beams,
                          "ours_gen_s": result["gen_s"], "hf_gen_s": theirs["gen_s"],
                          "ours_over_hf": result["gen_s"] / theirs["gen_s"],
                          "same_length": result["generated_tokens"]
                          == theirs["generated_tokens"]}, args.json)


if __name__ == "__main__":
    main()
