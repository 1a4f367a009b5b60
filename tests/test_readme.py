"""The README as documentation that cannot drift: its API tour runs as written (with a tiny
local BART for the hub id), and its scores are in the one unit of the project (percent)."""
import os
import re
import shutil

import jax

import tiny_runs

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def _section(title: str) -> str:
    text = open(README, encoding="utf-8").read()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_api_tour_runs_as_written(tiny_checkpoint, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _section("A tour of the API"), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert 'up.load_pretrained("facebook/bart-large")' in code
    folder = str(tmp_path / "bart")  # a one-layer BART with a tokenizer
    shutil.copytree(tiny_checkpoint("bart", layers=1), folder)
    tiny_runs.save_tokenizer(folder)
    namespace = {}
    exec(compile(code.replace("facebook/bart-large", folder), "README.md", "exec"), namespace)

    batch, out = namespace["batch"], namespace["out"]
    b, t = batch["decoder_input_ids"].shape
    assert out.logits.shape == (b, t, namespace["base"].config.vocab_size)
    assert namespace["rest"] == {} and not namespace["plain_method"].terms
    base_params = namespace["base"].params
    merged = namespace["merged"]  # the frozen tree, same structure (merge numerics: test_delta)
    assert jax.tree.structure(merged) == jax.tree.structure(base_params)


def test_scores_are_percentages():
    """Accuracy, ROUGE and BLEU are percentages everywhere; the demo table too."""
    demo = _section("The demo")
    rows = [line for line in demo.splitlines() if line.startswith("| ") and "%" in line
            and not line.startswith("| method")]
    assert len(rows) == 4
    for row in rows:
        accuracy = row.split("|")[3].strip()
        assert re.fullmatch(r"\d{2}\.\d%", accuracy), row
    assert "percent" in _section("Training")
