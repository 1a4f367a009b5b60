"""AdapterHub parity: our Δh exported with format="adapters", loaded by `adapters` 1.3, gives
our logits within 1e-4 (run by `make check-adapters`, not part of `make test`).

    python tests/adapterhub/check_adapters.py --adapters-python .venv-adapters/bin/python

1. (this interpreter, with unified_petl) tiny random BART, mBART and RoBERTa are saved with
   transformers' save_pretrained; for each method every Δh leaf is randomised, the Δh is
   exported, and our logits on a padded batch are written next to it.
2. (the adapters venv: AdapterHub pins transformers 4.57) `load` mode builds the transformers
   model of each folder, `adapters.init`, `load_adapter` (default files, then the safetensors
   ones alone), and compares its logits with ours. A key that does not load is a failure
   (adapters only logs it, and the weight would stay random).
Prints one JSON line per case and a summary {case: max |ours - AdapterHub|}; exits 1 when a
case is over the tolerance or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4
CASES = {  # base kind -> methods (every Δh leaf randomised)
    "bart": ["mam(l=3, r=4)", "scaled_pa(r=4)", "houlsby(r=4)", "pfeiffer(r=4)", "prefix(l=3)",
             "prefix_gated(l=3)", "pa(at=attn, r=5)", "sa(at=attn, r=4, ln=out)",
             "pa(r=4, learn_s=true, ln=in)", "houlsby(r=5)"],
    "mbart": ["mam(l=3, r=4)", "scaled_pa(r=4)", "houlsby(r=4)", "pfeiffer(r=4)",
              "prefix(l=3)"],
    "roberta": ["mam(l=3, r=4)", "scaled_pa(r=4)", "houlsby(r=4)", "pfeiffer(r=4)",
                "prefix(l=3)", "pa(at=attn, r=4)", "sa(r=4, ln=out)"],
}
CLASSES = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration",
           "roberta": "RobertaForSequenceClassification"}


# ------------------------------------------------------------------ 1. export (unified_petl)
def export(root: str) -> list[dict]:
    import jax.numpy as jnp
    from flax import traverse_util

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from conftest import tiny_hf_model

    import unified_petl as up

    cases = []
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, size=(3, 9)).astype(np.int64)
    ids[1, 6:], ids[2, 4:] = 1, 1  # right padding (pad id 1)
    mask = (ids != 1).astype(np.int64)
    dec = rng.integers(3, 99, size=(3, 6)).astype(np.int64)
    for kind, methods in CASES.items():
        folder = os.path.join(root, f"base_{kind}")
        tiny_hf_model(kind, classification=kind == "roberta").save_pretrained(folder)
        base = up.load_pretrained(folder, tokenizer=False)
        for i, method in enumerate(methods):
            seq2seq = kind != "roberta"
            model = up.build(base.config, method, num_labels=None if seq2seq else 3,
                             pretrained_head=False if not seq2seq else None)
            shapes = traverse_util.flatten_dict(up.shape_tree(model, "delta"))
            noise = np.random.default_rng(100 + i)  # LayerNorm and adapter scales around 1
            flat = {p: jnp.asarray((1.0 if p[-1].endswith("scale") else 0.0)
                                   + noise.normal(0.0, 0.3, v.shape), jnp.float32)
                    for p, v in shapes.items()}
            delta = traverse_util.unflatten_dict(flat)
            args = (ids, mask, dec) if seq2seq else (ids, mask)
            logits = np.asarray(model.apply({"params": base.params, "delta": delta},
                                            *args).logits)
            name = f"{kind}:{method}"
            out = os.path.join(root, f"case_{kind}_{i}")
            files = up.export_delta(model, delta, base, out, format="adapters")
            np.savez(os.path.join(out, "ours.npz"), logits=logits, ids=ids, mask=mask, dec=dec)
            # adapters 1.3 + transformers 4.57 under SDPA (the default attention) lose the
            # causal mask's alignment when prefixes lengthen the decoder's keys: later queries
            # see too few keys. Eager attention computes the concatenation exactly.
            eager = seq2seq and model.method.prefix is not None
            cases.append({"name": name, "kind": kind, "folder": out, "base": folder,
                          "files": files, "attention": "eager" if eager else "sdpa"})
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)
    return cases


# ------------------------------------------------------------------ 2. load (adapters venv)
def load(root: str) -> int:
    import adapters
    import torch
    import transformers

    with open(os.path.join(root, "cases.json")) as f:
        cases = json.load(f)
    worst, failed = {}, []
    for case in cases:
        saved = np.load(os.path.join(case["folder"], "ours.npz"))
        for variant in ("default", "safetensors"):
            try:
                diff = _load_one(adapters, torch, transformers, case, saved, variant)
            except Exception as e:  # report and go on with the other cases
                failed.append(case["name"])
                print(json.dumps({"case": case["name"], "files": variant,
                                  "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
                continue
            diff, effect = diff
            worst[case["name"]] = max(worst.get(case["name"], 0.0), diff)
            print(json.dumps({"case": case["name"], "files": variant,
                              "attention": case["attention"], "max_abs_diff": diff,
                              "delta_effect": effect}), flush=True)
    bad = sorted({n for n, d in worst.items() if not d <= TOLERANCE} | set(failed))
    print(json.dumps({"adapters": adapters.__version__, "transformers": transformers.__version__,
                      "torch": torch.__version__, "tolerance": TOLERANCE,
                      "max_abs_diff": worst, "failed": bad}, indent=2))
    return 1 if bad else 0


def _load_one(adapters, torch, transformers, case, saved, variant: str) -> float:
    folder = case["folder"]
    if variant == "safetensors":  # the torch-free files alone
        copy = folder + "_safetensors"
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        for name in ("pytorch_adapter.bin", "pytorch_model_head.bin"):
            if os.path.exists(os.path.join(copy, name)):
                os.remove(os.path.join(copy, name))
        folder = copy
    cls = getattr(transformers, CLASSES[case["kind"]])
    model = cls.from_pretrained(case["base"], attn_implementation=case["attention"]).eval()
    adapters.init(model)
    info = {}
    name = model.load_adapter(folder, set_active=True, loading_info=info,
                              use_safetensors=variant == "safetensors")
    mine = [k for k in info.get("missing_keys", []) + info.get("unexpected_keys", [])
            if f".{name}." in k or k.startswith(("classifier", "heads"))]
    if mine:
        raise ValueError(f"keys that did not load: {mine[:4]}")
    model.eval()
    ids, mask = torch.tensor(saved["ids"]), torch.tensor(saved["mask"])
    with torch.no_grad():
        if case["kind"] == "roberta":
            logits = model(input_ids=ids, attention_mask=mask).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask,
                           decoder_input_ids=torch.tensor(saved["dec"])).logits
        model.set_active_adapters(None)  # what the Δh changes: it must be far above the diff
        if case["kind"] == "roberta":
            plain = model(input_ids=ids, attention_mask=mask).logits
        else:
            plain = model(input_ids=ids, attention_mask=mask,
                          decoder_input_ids=torch.tensor(saved["dec"])).logits
    return (float(np.abs(logits.numpy() - saved["logits"]).max()),
            float(np.abs(logits.numpy() - plain.numpy()).max()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", choices=("all", "export", "load"), default="all")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--adapters-python", default=".venv-adapters/bin/python",
                   help="the interpreter with adapters 1.3 (mode all)")
    args = p.parse_args()
    if args.mode == "load":
        return load(args.dir)
    root = args.dir or tempfile.mkdtemp(prefix="check-adapters-")
    export(root)
    if args.mode == "export":
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    return subprocess.run([args.adapters_python, os.path.abspath(__file__), "load",
                           "--dir", root], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
