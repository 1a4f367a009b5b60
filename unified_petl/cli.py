"""The command line: unified-petl train | eval | predict | sweep | report | count | export | mask.

    unified-petl train   --config configs/demo/mam.py --workdir /tmp/mam [--config.optim.lr=1e-3]
    unified-petl eval    --workdir /tmp/mam [--best] [--split test]  # reads WORKDIR/config.json
    unified-petl predict --workdir /tmp/mam --best --input inputs.txt [--out preds.jsonl]
    unified-petl sweep   --config configs/glue/mam.py:sst2 --seeds 42,2,4,6,8 --workdir-root R
    unified-petl report  R [R2 ...] [--json]
    unified-petl count   --base bart-large --method 'mam(l=30, r=512)' [--json]
    unified-petl export  --workdir /tmp/mam --format peft|adapters --out DIR [--best]
    unified-petl mask    --config C --criterion fisher --density 0.005 --num-examples 1024 \
                         --out MASK.safetensors   # then sparse(mask=file, path=MASK.safetensors)

eval, predict and export read the run's config from WORKDIR/config.json (the trainer writes
it) unless --config is given; --config.KEY=VALUE overrides apply either way. `eval --split S`
scores the whole split S with the task's decoding and metric (see
unified_petl.train.inference). `export` writes the Δh as a PEFT or AdapterHub adapter folder
(see unified_petl.exchange).

Exit codes (ONE line on stderr for each failure; UNIFIED_PETL_DEBUG=1 shows the traceback):
  0    done
  1    the run diverged (NaN/inf loss); its last good checkpoint is kept
  2    bad input: a config key that does not exist, a value of the wrong type, a data file
       that cannot be read, a Δh of another base, a workdir that cannot be written ...
  75   preempted (EX_TEMPFAIL): SIGTERM made `train` save a checkpoint and stop before
       total_steps (with several processes: every process, at one step); run the same
       command again to resume (launch/slurm.sbatch requeues the job on this code, and an
       `afterok` dependency does not fire). `sweep` stops at a preempted seed with this
       code too (launch/sweep.sbatch requeues the task)
  130  interrupted: Ctrl-C (SIGINT) made `train` save a checkpoint and stop (the same as
       SIGTERM); a second Ctrl-C stops at once, without one

Compiled programs are cached in ~/.cache/unified-petl/jax (JAX's persistent compilation
cache; a rerun skips the compiles): --no-compile-cache or UNIFIED_PETL_COMPILE_CACHE=0 turns
it off, UNIFIED_PETL_COMPILE_CACHE=FOLDER moves it (unified_petl.compile_cache).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

PROG = "unified-petl"
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: try again later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error; we want one line
        _fail(f"{message} (see {self.prog} --help)")


def _fail(message: str, code: int = 2):
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Parameter-efficient transfer learning, the "
                     "unified view (He et al., ICLR 2022) in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    overrides = " Override any config key with --config.KEY=VALUE (e.g. --config.optim.lr=1e-4)."

    text = "train a Δh (resumes from the workdir)"
    p = sub.add_parser("train", help=text, description=text + "." + overrides)
    p.add_argument("--config", required=True, help="config file (path.py or path.py:arg)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, results")

    text = ("score the latest checkpoint (or --best: the selected Δh) of a workdir; --split S: "
            "the whole split S with the task's decoding and metric")
    p = sub.add_parser("eval", help=text, description=text + ". Scores go to "
                       "WORKDIR/eval[_best]_results[_SPLIT].json, predictions to "
                       "WORKDIR/predictions/." + overrides)
    _run_arguments(p)
    p.add_argument("--split", default=None,
                   help="score this whole split (e.g. test), decoded for seq2seq, uncapped "
                        "(default: the run's own evaluation, config.data.eval_split)")
    p.add_argument("--max-examples", type=_non_negative, default=None,
                   help="score only the first N examples (default: the whole --split)")

    text = ("write predictions (JSONL: id, input, output, reference) of the latest checkpoint "
            "or the selected Δh for a split or a text file")
    p = sub.add_parser("predict", help=text, description=text + ". Seq2seq decodes with the "
                       "config's generate settings; classification takes the argmax." + overrides)
    _run_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--split", default=None,
                        help="a split of the task (default: config.data.eval_split), whole")
    source.add_argument("--input", default=None,
                        help="a UTF-8 text file, one input per line (pairs: first<TAB>second)")
    p.add_argument("--out", default=None,
                   help="the JSONL file (default: WORKDIR/predictions/predict_{latest|best}_"
                        "{split|input name}.jsonl)")
    p.add_argument("--max-examples", type=_non_negative, default=None,
                   help="predict only the first N examples")

    text = "train one config with several seeds, one after another (ROOT/seed<N>)"
    p = sub.add_parser("sweep", help=text, description=text + "; finished seeds are skipped, "
                       "an interrupted one resumes. Then prints the report." + overrides)
    p.add_argument("--config", required=True, help="config file (path.py or path.py:arg)")
    p.add_argument("--seeds", default="42,2,4,6,8",
                   help="comma-separated seeds (default: the reference's GLUE seeds 42,2,4,6,8)")
    p.add_argument("--workdir-root", required=True, help="runs go to ROOT/seed<N>")

    text = "mean ± std of each metric per run group (runs equal but for the seed)"
    p = sub.add_parser("report", help=text, description=text + "; std is the sample std "
                       "(ddof=1). Markdown, or JSON with --json.")
    p.add_argument("runs", nargs="+", help="run folders, or folders searched for runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("--metrics", default=None,
                   help="comma-separated column patterns, e.g. 'best/*,best_test/bleu'")

    p = sub.add_parser("count", help="parameter budget of a method on a base model",
                       description="Δh parameter counts (trained, stored, paper formula).")
    p.add_argument("--base", required=True,
                   help="a shipped config name (bart-large, roberta-base, ...) or a folder "
                        "with a config.json")
    p.add_argument("--method", required=True, help="a preset, e.g. 'mam(l=30, r=512)'")
    p.add_argument("--num-labels", type=int, default=0, help="classification head size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    text = ("write a run's Δh (latest checkpoint, or --best: the selected one) as a PEFT or "
            "AdapterHub adapter folder")
    p = sub.add_parser("export", help=text, description=text + ": peft holds LoRA, adapters "
                       "(AdapterHub) holds bottleneck adapters, prefixes and MAM; a term the "
                       "format cannot hold is refused, never dropped." + overrides)
    _run_arguments(p)
    p.add_argument("--format", required=True, choices=("peft", "adapters"),
                   help="peft: Hugging Face PEFT; adapters: AdapterHub (adapters 1.3)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the adapter")
    text = ("compute a mask of individual weights for a config's base and task: random, "
            "magnitude, or FISH's Fisher information of the first N training examples")
    p = sub.add_parser("mask", help=text, description=text + "; one bool tensor per weight, "
                       "the base's fingerprint in the file (unified_petl.masks). The budget "
                       "follows the config's method (a sparse term: the new head inside a "
                       "global budget unless head_in_budget=false)." + overrides)
    p.add_argument("--config", required=True, help="config file (path.py or path.py:arg)")
    p.add_argument("--criterion", required=True, choices=("random", "magnitude", "fisher"))
    p.add_argument("--density", type=float, required=True,
                   help="fraction of the weights to keep, in (0, 1] (0.005 = 0.5%%)")
    p.add_argument("--num-examples", type=int, default=1024,
                   help="training examples of the Fisher information (FISH: 1024)")
    p.add_argument("--out", required=True, help="the mask file to write (.safetensors)")
    p.add_argument("--select", default=None, choices=("global", "per_leaf"),
                   help="top k over all weights (default) or within every weight tensor")
    p.add_argument("--pattern", default=None,
                   help="regex over '/'-joined weight paths the mask may choose from")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per microbatch of per-example gradients (default 8)")
    for command in sub.choices.values():  # after the command: `train --no-compile-cache`
        command.add_argument("--no-compile-cache", action="store_true",
                             help="do not read or write JAX's persistent compilation cache "
                                  "(also UNIFIED_PETL_COMPILE_CACHE=0; see "
                                  "unified_petl.compile_cache)")
    return parser


def _run_arguments(p) -> None:
    """--config (optional: WORKDIR/config.json), --workdir, --best of eval and predict."""
    p.add_argument("--config", default=None,
                   help="config file (path.py or path.py:arg); default: WORKDIR/config.json")
    p.add_argument("--workdir", required=True, help="the training run's workdir")
    p.add_argument("--best", action="store_true",
                   help="use the Δh that model selection kept (WORKDIR/best/)")


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(--config.KEY=VALUE assignments without the prefix, the other arguments)."""
    overrides, rest = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            item = arg[len("--config."):]
            if "=" not in item:  # --config.a.b VALUE
                if i + 1 >= len(argv):
                    _fail(f"malformed override {arg}: write {arg}=VALUE")
                item = f"{item}={argv[i + 1]}"
                i += 1
            overrides.append(item)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def _load(args, overrides):
    from unified_petl.train.config import (check_config, load_config, load_workdir_config,
                                           override, with_defaults)

    if getattr(args, "config", None):
        config = load_config(args.config)
    else:  # eval / predict: the run's own config
        config = load_workdir_config(args.workdir)
    config = override(config, overrides)
    check_config(with_defaults(config))
    return config


def _eval(args, overrides) -> None:
    from unified_petl.train.inference import OutputError, evaluate

    if args.split is not None and any(o.startswith("data.max_eval_examples=")
                                      for o in overrides):
        _fail("--config.data.max_eval_examples caps the run's own evaluation; with --split "
              "write --max-examples N")
    config = _load(args, overrides)
    try:
        results = evaluate(config, args.workdir, best=args.best, split=args.split,
                           max_examples=args.max_examples)
    except OutputError as e:  # computed but not saved: show the scores, then fail
        print(json.dumps(e.results["eval"], indent=2), flush=True)
        _fail(f"{e}; the scores are printed above")
    print(json.dumps(results["eval"], indent=2))
    kept = f", predictions in {results['predictions']}" if results["predictions"] else ""
    print(f"{'selected Δh' if args.best else 'latest checkpoint'} (step {results['step']}): "
          f"{results['examples']} examples of split {results['split']!r} scored; scores in "
          f"{results['results']}{kept}", file=sys.stderr)


def _predict(args, overrides) -> None:
    from unified_petl.train.inference import OutputError, predict

    config = _load(args, overrides)
    try:
        results = predict(config, args.workdir, best=args.best, split=args.split,
                          input_file=args.input, out=args.out, max_examples=args.max_examples)
    except OutputError as e:
        _fail(str(e))
    print(json.dumps(results, indent=2))


def _export(args, overrides) -> None:
    from unified_petl.exchange import export_run

    config = _load(args, overrides)
    print(json.dumps(export_run(config, args.workdir, args.out, format=args.format,
                                best=args.best), indent=2))


def _sweep(args, overrides) -> None:
    from unified_petl import report
    from unified_petl.sweep import parse_seeds, seed_workdir, sweep

    seeds = parse_seeds(args.seeds)
    if any(o.startswith("seed=") for o in overrides):
        _fail("--config.seed and --seeds both set the seed; use --seeds")
    config = _load(args, overrides)
    result = sweep(config, seeds, args.workdir_root)
    if result.get("preempted"):  # as train: the run saved a checkpoint; run again to go on
        print(json.dumps(result, indent=2))
        raise SystemExit(_preempted_code(result))
    if result["runs"]:
        table, _ = report.report([seed_workdir(args.workdir_root, s) for s in seeds
                                  if s in result["runs"]])
        print(report.to_markdown(table))
    if result["diverged"]:
        _fail(f"seed(s) {', '.join(map(str, result['diverged']))} diverged (their messages are "
              "above); the other seeds finished", code=1)


def _preempted_code(results: dict) -> int:
    """75 for SIGTERM (a scheduler requeues), 130 for Ctrl-C."""
    return EXIT_INTERRUPTED if results.get("signal") == "SIGINT" else EXIT_PREEMPTED


def _report(args, overrides) -> None:
    from unified_petl import report

    patterns = [p.strip() for p in args.metrics.split(",") if p.strip()] if args.metrics else None
    table, notes = report.report(args.runs, patterns)
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    print(json.dumps(table, indent=2) if args.json else report.to_markdown(table))


def _mask(args, overrides) -> None:
    from unified_petl.masks import describe
    from unified_petl.train.masking import mask_command

    config = _load(args, overrides)
    mask = mask_command(config, criterion=args.criterion, density=args.density,
                        num_examples=args.num_examples, out=args.out, select=args.select,
                        pattern=args.pattern, batch_size=args.batch_size)
    print(describe(mask))
    print(f"mask of {mask.k:,} weights written to {args.out}; train it with "
          f"sparse(mask=file, path='{args.out}')", file=sys.stderr)


def _count(args) -> None:
    from unified_petl.delta import budget

    result = budget.count_for(args.base, args.method, num_labels=args.num_labels)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(budget.format_count(result))


def quiet_libraries() -> None:
    """Library chatter would bury our one-line errors: datasets logs a parse error itself
    (we re-raise it with the file name) and draws progress bars for tiny local files."""
    import datasets
    import transformers

    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


# Subcommands that print their own output (train prints its results in main).
COMMANDS = {"eval": _eval, "predict": _predict, "sweep": _sweep, "report": _report,
            "export": _export, "mask": _mask}


def main(argv: Optional[Sequence[str]] = None) -> None:
    from unified_petl.host_memory import keep_freed_memory

    keep_freed_memory()  # before JAX starts its threads (unified_petl.host_memory)
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides, rest = _split_overrides(argv)
    args = _parser().parse_args(rest)
    quiet_libraries()
    if args.command != "report":  # report reads JSON files: no JAX
        from unified_petl import compile_cache

        compile_cache.setup(enabled=not args.no_compile_cache)  # before anything compiles
    if overrides and args.command in ("count", "report"):
        _fail(f"--config.* overrides apply to train, eval, predict, sweep and export, not "
              f"{args.command}")
    debug = os.environ.get("UNIFIED_PETL_DEBUG") == "1"

    from unified_petl.delta.spec import SpecError
    from unified_petl.models.loading import CheckpointError
    from unified_petl.train.checkpoint import CheckpointCorrupt, CheckpointMismatch
    from unified_petl.train.config import ConfigError
    from unified_petl.train.loop import TrainingDiverged

    try:
        if args.command == "count":
            _count(args)
            return
        if args.command in COMMANDS:
            COMMANDS[args.command](args, overrides)
            return
        config = _load(args, overrides)
        from unified_petl.train.loop import train

        results = train(config, args.workdir)
        print(json.dumps(results.get("eval", results), indent=2))
        if results.get("preempted"):  # a checkpoint was saved; the run is not finished
            raise SystemExit(_preempted_code(results))
    except TrainingDiverged as e:
        if debug:
            raise
        _fail(str(e), code=1)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, or the second one
        if debug:
            raise
        _fail("interrupted (Ctrl-C); checkpoints already saved are intact: run the same "
              "command again to resume", code=EXIT_INTERRUPTED)
    except (ConfigError, SpecError, CheckpointError, CheckpointMismatch, CheckpointCorrupt,
            ValueError, OSError) as e:  # OSError: permissions, a full disk, a missing file
        if debug:
            raise
        _fail(" ".join(str(e).split()) or type(e).__name__)


if __name__ == "__main__":
    main()
