"""Time one training step of a Δh method (or full fine-tuning) at the paper's shapes.

    python bench/step_time.py --arch roberta-base --method "lora(r=16)" --batch 8 --seq 128 --json
    python bench/step_time.py --arch bart-base --method "mam(l=16,r=16,s=2)" --batch 4 \
        --seq 256 --tgt 64 --json
    python bench/step_time.py --arch roberta-base --method "lora(r=16)" --peft --json  # HF PEFT
    python bench/step_time.py --arch roberta-base --method "lora(r=16)" --with-peft --json  # both

Memory per device, from shapes only (nothing is initialised or run; 8 simulated CPU devices):

    python bench/step_time.py --arch bart-large --method full --batch 16 --seq 512 --tgt 128 \
        --devices 8 --fsdp 8 --memory-only --json
    ... --frozen-dtype bfloat16 --remat full   (bf16 frozen storage, per-layer remat)

The model is randomly initialised from the shipped config (configs/models/<arch>/config.json),
so no weights are needed; speed does not depend on the values. The step is the project's own
(unified_petl.train.step.make_train_step: jitted, state donated, gradient w.r.t. the trainable
tree only) with AdamW + clipping from unified_petl.train.optim, dropout on (training mode).

Printed (one JSON object with --json):
  step_s        median wall time of the timed steps (compile excluded)
  step_s_all    every timed step
  tokens_per_s  B·(L [+ T]) / step_s
  compile_s     lowering + XLA compilation of the step
  flops         XLA's cost analysis of the compiled step (the frozen-weight gradient matmuls
                of a PETL step are absent: compare with `full`)
  peak_rss_bytes host peak resident memory of the process (ru_maxrss; includes the init)
  device_peak_bytes device memory stats when the backend has them (GPU/TPU), else null
  temp_bytes    XLA's temporary buffer size of the compiled step on one device
                (memory_analysis: activations, gathered weights, gradients)
  device_argument_bytes  the frozen, trained and optimiser-state arguments held by one
                device (= device_frozen_bytes + device_trained_bytes +
                device_opt_state_bytes; from each argument's sharding, shard_shape)
  xla_argument_bytes, xla_output_bytes, xla_alias_bytes  memory_analysis of the compiled
                step (arguments include the batch; outputs aliased to the donated state)
  collectives   all-gather / reduce-scatter / all-reduce ops in the compiled step
  xla_flags     (--memory-only) the XLA flags of the run: on CPU the memory-minimising
                scheduler (--xla_cpu_enable_concurrency_optimized_scheduler=false) and no
                LLVM optimisation (--xla_backend_optimization_level=0: nothing runs; the
                bytes are assigned before it) unless XLA_FLAGS names those flags already
  devices, fsdp, frozen_dtype, remat  the layout (--devices, --fsdp, --frozen-dtype, --remat)
  trained_params, trained_bytes, opt_state_bytes, opt_state_ratio (= opt / trained bytes;
                AdamW keeps 2 moments so ~2.0)
  sparse_values the k values of a sparse term (part of trained_params); index_bytes its
                int32 positions (frozen, never trained). A sparse term's mask is resolved on
                the random base (random or magnitude; the Fisher information needs data)
  recompiles    number of extra compilations during the timed steps (must be 0)
  keep_freed_memory  whether freed host memory is kept for reuse (unified_petl.host_memory,
                as the CLI does; UNIFIED_PETL_KEEP_FREED_MEMORY=0 runs glibc's defaults);
                process-wide, so the PyTorch side of --with-peft runs with it too
  load          os.getloadavg() when the run started (the machine is shared)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="roberta-base",
                   help="a config folder name in configs/models (roberta-base, bart-base, ...)")
    p.add_argument("--method", action="append", default=None,
                   help="a preset string, or 'full'; repeat to time several methods on one "
                        "random base in one process (one JSON line each)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="(source) length L")
    p.add_argument("--tgt", type=int, default=64, help="target length T (seq2seq only)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--frozen-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="storage dtype of the frozen weights (config key frozen_dtype)")
    p.add_argument("--remat", default="none",
                   help="per-layer rematerialisation policy (config key remat): none, full, "
                        "nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable")
    p.add_argument("--devices", type=int, default=1,
                   help="devices of the mesh (on CPU, that many are simulated)")
    p.add_argument("--fsdp", type=int, default=1,
                   help="size of the fsdp mesh axis (config key mesh.fsdp; 1: data parallel)")
    p.add_argument("--fsdp-min-size", type=int, default=2 ** 16,
                   help="leaves with fewer elements stay replicated (mesh.fsdp_min_size)")
    p.add_argument("--memory-only", action="store_true",
                   help="compile from shapes and report bytes; initialise and run nothing")
    p.add_argument("--prng", default=None, choices=("threefry2x32", "rbg", "unsafe_rbg"),
                   help="jax_default_prng_impl (default: JAX's, threefry2x32)")
    p.add_argument("--no-dropout", action="store_true", help="set every dropout to 0")
    p.add_argument("--peft", action="store_true",
                   help="time HF PEFT in PyTorch instead (LoRA/bitfit/prefix/full; needs peft)")
    p.add_argument("--with-peft", action="store_true",
                   help="time ours, then HF PEFT on the same shapes, then print their ratio")
    p.add_argument("--threads", type=int, default=0, help="torch threads for --peft (0: default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def _tree_bytes(tree) -> tuple[int, int]:
    import jax

    leaves = jax.tree.leaves(tree)
    return (sum(int(x.size) for x in leaves), sum(int(x.size) * x.dtype.itemsize for x in leaves))


def _device_peak():
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # CPU backends may not implement it
        stats = None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def random_batch(cfg, batch: int, seq: int, tgt: int, seed: int = 0) -> dict:
    """Token ids drawn uniformly from the vocabulary (no pads), full masks, weight 1."""
    import numpy as np

    rs = np.random.RandomState(seed)
    vocab = cfg.vocab_size
    ids = lambda n: rs.randint(4, vocab, size=(batch, n)).astype(np.int32)
    out = {"input_ids": ids(seq), "attention_mask": np.ones((batch, seq), np.int32),
           "weight": np.ones((batch,), np.float32)}
    if cfg.seq2seq:
        out["decoder_input_ids"] = ids(tgt)
        out["decoder_attention_mask"] = np.ones((batch, tgt), np.int32)
        out["labels"] = ids(tgt)
    else:
        out["labels"] = rs.randint(0, 2, size=(batch,)).astype(np.int32)
    return out


def _config(args):
    from unified_petl.delta.budget import shipped_config

    hf_config = shipped_config(args.arch)
    if args.no_dropout:
        for key in ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout_prob",
                    "attention_probs_dropout_prob"):
            if hasattr(hf_config, key):
                setattr(hf_config, key, 0.0)
    return hf_config


def _abstract_layout(model, full, optimizer, mesh, args):
    """(state, frozen) as ShapeDtypeStructs carrying the trainer's shardings: nothing is
    allocated, so a base far larger than this machine's memory can be compiled."""
    import jax

    from unified_petl.build import shape_tree
    from unified_petl.train.sharding import cast_floating, tree_shardings
    from unified_petl.train.step import TrainState, replicated, split_trainable

    shapes = shape_tree(model, None)
    trainable, frozen = split_trainable(full, shapes["params"], shapes.get("delta", {}))
    if args.frozen_dtype != "float32" and frozen:
        frozen = {**frozen, "params": cast_floating(frozen["params"], args.frozen_dtype)}

    def laid_out(tree):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            tree, tree_shardings(tree, mesh, args.fsdp_min_size))

    repl = replicated(mesh)
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    state = TrainState(step=jax.ShapeDtypeStruct((), "int32", sharding=repl),
                       trainable=laid_out(trainable),
                       opt_state=laid_out(jax.eval_shape(optimizer.init, trainable)),
                       rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl))
    return state, laid_out(frozen)


def _collectives(compiled) -> dict:
    import re

    text = compiled.as_text()
    return {op: len(re.findall(rf"\b{op}(?:-start)?\(", text))
            for op in ("all-gather", "reduce-scatter", "all-reduce")}


def bench_jax(args, method: str, base_cache: dict) -> dict:
    """Time `method`; base_cache holds the random frozen weights shared by the methods.
    With --memory-only: compile from shapes and report bytes only."""
    import jax

    import jax.numpy as jnp
    from flax import traverse_util

    import unified_petl as up
    from unified_petl.train.optim import make_optimizer
    from unified_petl.train.sharding import device_bytes, shardings_of
    from unified_petl.train.step import (data_sharded, frozen_dtype_problem, global_batch,
                                         init_state, make_mesh, make_train_step, place_frozen,
                                         split_trainable, state_shardings)

    hf_config = _config(args)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    seq2seq = hf_config.is_encoder_decoder
    kwargs = dict(num_labels=None if seq2seq else 2,
                  pretrained_head=False if not seq2seq else None, dtype=dtype)
    parsed = up.parse_method(method)
    plain = up.build(hf_config, "none", **kwargs)
    cfg = plain.cfg
    full = bool(parsed.full)
    layout = {"devices": args.devices, "fsdp": args.fsdp, "frozen_dtype": args.frozen_dtype,
              "remat": args.remat}
    head = {"impl": "jax", "arch": args.arch, "method": method, "batch": args.batch,
            "seq": args.seq, "tgt": args.tgt if seq2seq else None, "dtype": args.dtype,
            **layout}
    problem = frozen_dtype_problem(full, args.frozen_dtype)
    if problem:  # as the trainer: one line, no numbers
        return {**head, "refused": problem}
    if args.memory_only and parsed.sparse is not None:
        return {**head, "refused": "--memory-only compiles from shapes; a sparse term's mask "
                "needs the weights: leave out --memory-only"}
    local = random_batch(cfg, args.batch, args.seq, args.tgt)
    init_batch = {k: v[:1, :8] for k, v in local.items()
                  if k in ("input_ids", "attention_mask", "decoder_input_ids")}
    optimizer, schedule = make_optimizer({"lr": 1e-4, "weight_decay": 0.01}, 1000,
                                         method=parsed)
    mesh = make_mesh(args.devices, fsdp=args.fsdp)

    t0 = time.perf_counter()
    if args.memory_only:
        model = up.build(hf_config, parsed, **kwargs, remat=args.remat)
        state, frozen = _abstract_layout(model, full, optimizer, mesh, args)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data_sharded(mesh))
                 for k, v in local.items()}
    else:
        key = jax.random.key(0)
        if "params" not in base_cache:  # the random base: the same tree for every method
            variables = jax.jit(lambda k: plain.init({"params": k, "dropout": k},
                                                     **init_batch))(key)
            base_cache["params"] = variables["params"]
            del variables
        params = base_cache["params"]
        mask = _mask(parsed, hf_config, params, kwargs["num_labels"] or 0)
        model = up.build(hf_config, parsed if mask is None else mask.attach(parsed), **kwargs,
                         remat=args.remat)
        delta = up.init_delta(model, key, init_batch, params=params,
                              masks=mask if parsed.sparse is not None else None)
        trainable, frozen = split_trainable(full, params, delta,
                                            grad_mask=None if mask is None or not full
                                            else mask.grad_mask())
        # copies: the base stays intact
        state = init_state(trainable, optimizer, 0, mesh, min_size=args.fsdp_min_size)
        frozen = place_frozen(frozen, mesh, min_size=args.fsdp_min_size,
                              dtype=None if args.frozen_dtype == "float32" else args.frozen_dtype)
        del params, delta, trainable
        batch = global_batch(local, mesh)
    init_s = time.perf_counter() - t0
    step = make_train_step(model, optimizer, mesh, schedule=schedule,
                           state_sharding=state_shardings(state),
                           frozen_sharding=shardings_of(frozen))

    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:
        pass
    memory = {}
    try:
        analysis = compiled.memory_analysis()
        memory = {"temp_bytes": int(analysis.temp_size_in_bytes),
                  "xla_argument_bytes": int(analysis.argument_size_in_bytes),
                  "xla_output_bytes": int(analysis.output_size_in_bytes),
                  "xla_alias_bytes": int(analysis.alias_size_in_bytes)}
    except Exception:
        memory = {"temp_bytes": None}
    per_device = {"device_frozen_bytes": device_bytes(frozen),
                  "device_trained_bytes": device_bytes(state.trainable),
                  "device_opt_state_bytes": device_bytes(state.opt_state)}
    per_device["device_argument_bytes"] = sum(per_device.values())
    trained_params, trained_bytes = _tree_bytes(state.trainable)
    _, opt_bytes = _tree_bytes(state.opt_state)
    frozen_params, frozen_bytes = _tree_bytes(frozen)
    sizes = {"trained_params": trained_params, "frozen_params": frozen_params,
             "trained_bytes": trained_bytes, "frozen_bytes": frozen_bytes,
             "opt_state_bytes": opt_bytes}
    if args.memory_only:
        return {**head, "memory_only": True, "backend": jax.default_backend(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "compile_s": compile_s, "flops": flops, **memory, **per_device,
                "collectives": _collectives(compiled), **sizes,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "load": list(os.getloadavg())}

    # Calls go through the jitted function (lower().compile() filled its cache); every
    # backend compilation after this point is a recompile, counted by a monitoring listener.
    compiles = []
    listener = (lambda name, secs, **kw: compiles.append(name)
                if name.endswith("backend_compile_duration") else None)
    jax.monitoring.register_event_duration_secs_listener(listener)

    def run_one(state):
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready((state, metrics))
        return state, metrics

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = run_one(state)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    recompiles = len(compiles)
    try:
        jax.monitoring._unregister_event_duration_listener_by_callback(listener)
    except Exception:
        pass

    sparse_values = sum(int(x.size) for p, x in traverse_util.flatten_dict(
        state.trainable, sep="/").items() if p.endswith("_sparse"))
    # Adam's step counters are scalars; the moments are the rest.
    moment_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state)
                       if x.ndim > 0)
    step_s = statistics.median(times)
    tokens = args.batch * (args.seq + (args.tgt if seq2seq else 0))
    result = {
        **head, "prng": str(jax.config.jax_default_prng_impl),
        "dropout": not args.no_dropout,
        "backend": jax.default_backend(), "device_count": jax.device_count(),
        "step_s": step_s, "step_s_all": times, "tokens_per_s": tokens / step_s,
        "compile_s": compile_s, "init_s": init_s, "flops": flops,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": _device_peak(), **memory, **per_device,
        "collectives": _collectives(compiled), **sizes,
        "opt_moment_bytes": moment_bytes,
        "opt_state_ratio": opt_bytes / max(trained_bytes, 1),
        "sparse_values": sparse_values,  # k of a sparse term (inside trained_params)
        "index_bytes": sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(frozen)
                           if jnp.issubdtype(x.dtype, jnp.integer)),
        "recompiles": recompiles, "loss": float(metrics["loss"]),
        "load": list(os.getloadavg()),
    }
    return result


def _mask(method, hf_config, params, num_labels: int):
    """The mask of a sparse term or of Child-Tuning_D on the random base (random or magnitude
    criterion: the Fisher information needs a task's data), else None."""
    from unified_petl import masks
    from unified_petl.models.loading import Base

    term = method.sparse or (method.grad_mask if method.grad_mask is not None
                             and method.grad_mask.mask == "fisher" else None)
    if term is None:
        return None
    if term.mask not in ("random", "magnitude"):
        raise SystemExit(f"{method.name}: the bench resolves random and magnitude masks only "
                         "(the Fisher information needs a task's data)")
    return masks.compute(Base(config=hf_config, params=params), method, num_labels=num_labels,
                         params=params)


# --------------------------------------------------------------------------- HF PEFT (PyTorch)
def _peft_config(method: str, seq2seq: bool):
    """The PEFT config closest to our preset (LoRA on q/v with alpha = 2r; prefix tuning)."""
    import re

    import peft

    task = peft.TaskType.SEQ_2_SEQ_LM if seq2seq else peft.TaskType.SEQ_CLS
    m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", method)
    name, kw = m.group(1), dict(
        (k.strip(), v.strip()) for k, v in (a.split("=") for a in (m.group(2) or "").split(",")
                                            if "=" in a))
    if name == "lora":
        r = int(kw.get("r", 16))
        at = kw.get("at", "attn")
        if at == "ffn":
            targets = ["fc1", "fc2"] if seq2seq else ["intermediate.dense", "output.dense"]
        else:
            targets = ["q_proj", "v_proj"] if seq2seq else ["query", "value"]
        return peft.LoraConfig(task_type=task, r=r, lora_alpha=float(kw.get("alpha", 2 * r)),
                               lora_dropout=0.0, target_modules=targets)
    if name == "prefix":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=int(kw.get("l", 16)),
                                       prefix_projection=True, encoder_hidden_size=800)
    if name in ("full", "bitfit"):
        return name
    raise SystemExit(f"--peft supports lora, prefix, bitfit and full, not {method!r}")


def bench_peft(args, method: str) -> dict:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_config = _config(args)
    seq2seq = hf_config.is_encoder_decoder
    torch.manual_seed(0)
    if seq2seq:
        model = transformers.AutoModelForSeq2SeqLM.from_config(hf_config)
    else:
        hf_config.num_labels = 2
        model = transformers.AutoModelForSequenceClassification.from_config(hf_config)
    pc = _peft_config(method, seq2seq)
    if pc == "bitfit":
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("bias") or "classifier" in n)
    elif pc != "full":
        import peft

        model = peft.get_peft_model(model, pc)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    b = random_batch(type("C", (), {"vocab_size": hf_config.vocab_size, "seq2seq": seq2seq}),
                     args.batch, args.seq, args.tgt)
    t = {k: torch.from_numpy(v).long() for k, v in b.items() if k != "weight"}
    if not seq2seq:
        t.pop("decoder_input_ids", None)

    def one():
        out = model(**{k: t[k] for k in t})
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    for _ in range(max(args.warmup, 1)):
        one()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = one()
        times.append(time.perf_counter() - t0)
    trained = sum(p.numel() for p in params)
    opt_bytes = sum(v.numel() * v.element_size() for s in opt.state.values()
                    for v in s.values() if torch.is_tensor(v))
    step_s = statistics.median(times)
    tokens = args.batch * (args.seq + (args.tgt if seq2seq else 0))
    return {
        "impl": "torch+peft", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "arch": args.arch, "method": method, "batch": args.batch, "seq": args.seq,
        "tgt": args.tgt if seq2seq else None, "step_s": step_s, "step_s_all": times,
        "tokens_per_s": tokens / step_s, "compile_s": 0.0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trained_params": trained, "trained_bytes": 4 * trained, "opt_state_bytes": opt_bytes,
        "opt_state_ratio": opt_bytes / max(4 * trained, 1), "loss": loss,
        "load": list(os.getloadavg()),
    }


def main(argv=None):
    args = parse_args(argv)
    # as the CLI does (unified_petl.host_memory); UNIFIED_PETL_KEEP_FREED_MEMORY=0: glibc's
    # defaults. Process-wide: PyTorch's side of a --with-* comparison runs with it too.
    from unified_petl.host_memory import keep_freed_memory

    keep = keep_freed_memory()
    methods = args.method or ["lora(r=16)"]
    # XLA flags must be set before jax is imported; only the CPU platform reads these.
    flags = os.environ.get("XLA_FLAGS", "")
    if args.devices > 1 and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={args.devices}"
    if args.memory_only and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        # XLA CPU's default scheduler orders for thread concurrency and ignores the peak:
        # it runs every rematerialised forward and every weight gather early, so remat and
        # FSDP would show no saving of temp_bytes. The memory-minimising scheduler orders
        # as the GPU/TPU schedulers do for memory.
        flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
    if args.memory_only and "xla_backend_optimization_level" not in flags:
        # Nothing is run, so the machine code need not be fast: LLVM's optimisation is
        # skipped (compiles 2-2.5x faster on CPU). Buffer assignment happens before it, on
        # the HLO: the byte counts are the same (bart-base MAM at FSDP-8: equal temp_bytes).
        flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = flags.strip()
    if args.prng and not args.peft:
        import jax

        jax.config.update("jax_default_prng_impl", args.prng)
    base_cache: dict = {}
    for method in methods:
        results = [] if args.peft else [bench_jax(args, method, base_cache)]
        if args.peft or args.with_peft:
            results.append(bench_peft(args, method))
        if len(results) == 2:
            ours, theirs = results
            results.append({"compare": method, "ours_step_s": ours["step_s"],
                            "peft_step_s": theirs["step_s"],
                            "ours_over_peft": ours["step_s"] / theirs["step_s"]})
        for result in results:
            print_result({**result, "keep_freed_memory": keep}, args.json)


def print_result(result: dict, as_json: bool) -> None:
    """One JSON line, or one `key: value` line per field and a blank line."""
    if as_json:
        print(json.dumps(result), flush=True)
        return
    for k, v in result.items():
        print(f"{k:>18}: {v}")
    print(flush=True)


if __name__ == "__main__":
    main()
