"""The command line: unified-petl train | eval | count.

    unified-petl train --config configs/demo/mam.py --workdir /tmp/mam [--config.optim.lr=1e-3 ...]
    unified-petl eval  --config configs/demo/mam.py --workdir /tmp/mam
    unified-petl count --base bart-large --method 'mam(l=30, r=512)' [--json]

Exit codes (ONE line on stderr for each failure; UNIFIED_PETL_DEBUG=1 shows the traceback):
  0    done
  1    the run diverged (NaN/inf loss); its last good checkpoint is kept
  2    bad input: a config key that does not exist, a value of the wrong type, a data file
       that cannot be read, a Δh of another base, a workdir that cannot be written ...
  75   preempted (EX_TEMPFAIL): SIGTERM made `train` save a checkpoint and stop before
       total_steps; run the same command again to resume (launch/slurm.sbatch requeues the
       job on this code, and an `afterok` dependency does not fire)
  130  interrupted: Ctrl-C (SIGINT) made `train` save a checkpoint and stop (the same as
       SIGTERM); a second Ctrl-C stops at once, without one
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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Parameter-efficient transfer learning, the "
                     "unified view (He et al., ICLR 2022) in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("train", "train a Δh (resumes from the workdir)"),
                       ("eval", "evaluate the latest checkpoint (or --best: the selected Δh) "
                                "of a workdir")):
        p = sub.add_parser(name, help=text, description=text + ". Override any config key "
                           "with --config.KEY=VALUE (e.g. --config.optim.lr=1e-4).")
        p.add_argument("--config", required=True, help="config file (path.py or path.py:arg)")
        p.add_argument("--workdir", required=True, help="checkpoints, metrics, results")
        if name == "eval":
            p.add_argument("--best", action="store_true",
                           help="evaluate the Δh that model selection kept (WORKDIR/best/)")
    p = sub.add_parser("count", help="parameter budget of a method on a base model",
                       description="Δh parameter counts (trained, stored, paper formula).")
    p.add_argument("--base", required=True,
                   help="a shipped config name (bart-large, roberta-base, ...) or a folder "
                        "with a config.json")
    p.add_argument("--method", required=True, help="a preset, e.g. 'mam(l=30, r=512)'")
    p.add_argument("--num-labels", type=int, default=0, help="classification head size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


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
    from unified_petl.train.config import check_config, load_config, override, with_defaults

    config = override(load_config(args.config), overrides)
    check_config(with_defaults(config))
    return config


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


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides, rest = _split_overrides(argv)
    args = _parser().parse_args(rest)
    quiet_libraries()
    if overrides and args.command == "count":
        _fail("--config.* overrides apply to train and eval, not count")
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
        config = _load(args, overrides)
        if args.command == "train":
            from unified_petl.train.loop import train

            results = train(config, args.workdir)
        else:
            from unified_petl.train.loop import evaluate

            results = evaluate(config, args.workdir, best=args.best)
        print(json.dumps(results.get("eval", results), indent=2))
        if results.get("preempted"):  # a checkpoint was saved; the run is not finished
            raise SystemExit(EXIT_INTERRUPTED if results.get("signal") == "SIGINT"
                             else EXIT_PREEMPTED)
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
