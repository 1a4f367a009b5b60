"""Workdirs on cloud storage: every file of a run outside orbax goes through
unified_petl.train.storage (etils epath), the same code path for a local folder and a gs://
URL.

There is no GCS here, so gs:// is a fake: an fsspec file system registered for the gs
protocol that keeps the objects in a local folder, the backend etils epath uses for gs://
when TensorFlow is not installed (gcsfs in real use). Tested through it: a whole training
run with a gs:// workdir (metrics.jsonl, config.json, results.json, best/,
delta.safetensors), its resume, `eval --best` and `eval` of the latest checkpoint reading
config.json there and writing scores and predictions there, and the Checkpointer keeping the
URL (it made it CWD/gs:/... before). Not tested: real GCS (credentials, latency, an object
rewritten as a whole for each metrics line), and orbax's checkpoint arrays on gs://, which
TensorStore writes with its own GCS driver, past fsspec: in the training test the
Checkpointer is handed the fake's local folder for the URL.
"""
import json
import os

import pytest

import tiny_runs
from unified_petl import cli
from unified_petl.train import storage
from unified_petl.train.config import load_config, override
from unified_petl.train.writer import read_metrics

OVERRIDES = ["eval_every=2", "checkpoint_every=2"]


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs://BUCKET/PATH -> tmp_path/store/BUCKET/PATH, through fsspec as epath uses it."""
    from etils import epath
    from etils.epath import backend
    from fsspec.implementations.local import LocalFileSystem

    root = str(tmp_path / "store")
    os.makedirs(root)

    class FakeGCS(LocalFileSystem):
        protocol = ("gs", "gcs")

        @classmethod
        def _strip_protocol(cls, path):
            path = os.fspath(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    path = os.path.join(root, path[len(prefix):])
            return LocalFileSystem._strip_protocol(path)

    if epath.Path("gs://bucket/x")._backend is not backend.fsspec_backend:
        pytest.skip("epath reads gs:// with TensorFlow's gfile here, not fsspec")
    from fsspec.registry import _registry

    for name in ("gs", "gcs"):  # the registry holds only imported implementations
        monkeypatch.setitem(_registry, name, FakeGCS)
    type(backend.fsspec_backend)._get_filesystem.cache_clear()
    yield FakeGCS
    type(backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    config_file = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder,
                                              train_file, eval_file, steps=4)
    return {"config": config_file}


def _records(workdir):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in read_metrics(workdir)]


def test_a_run_in_a_gs_workdir_writes_every_file_there(fake_gcs, tiny, tmp_path, monkeypatch,
                                                       capsys):
    from unified_petl.train import Checkpointer, inference, loop, train

    class LocalArrays(Checkpointer):  # orbax's arrays: TensorStore's GCS driver, not fsspec
        def __init__(self, directory, **kw):
            if storage.is_remote(directory):
                assert directory == "gs://bucket/run/checkpoints", directory  # unchanged
                directory = fake_gcs._strip_protocol(directory)
            super().__init__(directory, **kw)

    monkeypatch.setattr(loop, "Checkpointer", LocalArrays)
    monkeypatch.setattr(inference, "Checkpointer", LocalArrays)
    config = override(load_config(tiny["config"]), OVERRIDES)
    local = str(tmp_path / "local")
    reference = train(config, local)
    url = "gs://bucket/run"
    results = train(config, url)
    store = os.path.join(fake_gcs._strip_protocol(url))
    for name in ("metrics.jsonl", "config.json", "results.json", "delta.safetensors",
                 "best/best.json", "best/delta.safetensors"):
        assert os.path.isfile(os.path.join(store, name)), name
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))  # no CWD/gs:/... folder
    assert _records(url) == _records(local)  # the same run, read back through gs://
    assert results["eval"] == reference["eval"]
    assert json.loads(storage.read_text(f"{url}/best/best.json")) == \
        json.load(open(os.path.join(local, "best", "best.json")))

    # a finished run reruns as "done" (results.json read back from gs://)
    assert train(config, url)["eval"] == reference["eval"]

    # eval reads config.json from the workdir and writes scores and predictions there
    capsys.readouterr()
    cli.main(["eval", "--workdir", url, "--best"])
    cli.main(["eval", "--workdir", url])
    for name in ("eval_best_results.json", "eval_results.json",
                 "predictions/eval_best_validation.jsonl",
                 "predictions/eval_latest_validation.jsonl"):
        assert os.path.isfile(os.path.join(store, name)), name
    scores = json.loads(storage.read_text(f"{url}/eval_results.json"))
    assert scores["step"] == config.total_steps
    assert scores["eval"]["accuracy"] == reference["eval"]["accuracy"]
    assert scores["predictions"] == f"{url}/predictions/eval_latest_validation.jsonl"


def test_metrics_and_delta_files_on_gs(fake_gcs, tmp_path):
    """The writer's rewrite-on-append, truncation on resume and the corrupt-line set-aside;
    save_delta / load_delta through a temporary local copy."""
    import numpy as np

    from unified_petl.train.writer import MetricWriter

    url = "gs://bucket/w"
    writer = MetricWriter(url)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": float(step)})
    storage.append_bytes(f"{url}/metrics.jsonl", b'{"step": 4, "lo')  # a write cut short
    writer.truncate_after(2)
    assert [r["step"] for r in read_metrics(url)] == [1, 2]
    assert storage.read_bytes(f"{url}/metrics.jsonl.corrupt") == b'{"step": 4, "lo\n'

    from safetensors.numpy import load_file

    from unified_petl.train.checkpoint import read_delta_file

    class Base:
        fingerprint = "f"

    delta = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    from unified_petl.train.checkpoint import save_delta

    save_delta(f"{url}/best/delta.safetensors", "lora(r=4)", delta, Base(), step=3)
    local = os.path.join(fake_gcs._strip_protocol(url), "best", "delta.safetensors")
    np.testing.assert_array_equal(load_file(local)["a/kernel"], delta["a"]["kernel"])
    header, flat = read_delta_file(f"{url}/best/delta.safetensors")
    assert header["step"] == "3" and flat["a/kernel"].shape == (2, 3)
    assert not [n for n in os.listdir(os.path.dirname(local)) if n.endswith(".tmp")]


def test_checkpointer_keeps_a_url(fake_gcs, monkeypatch):
    """Checkpointer made gs://b/x into CWD/gs:/b/x with os.path.abspath; now orbax gets the
    URL (orbax creates the folder through epath, here the fake; it asks the bucket's
    settings with google-cloud-storage, which is not installed here: answered False)."""
    from orbax.checkpoint._src.path import gcs_utils

    from unified_petl.train import Checkpointer

    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)

    ckpt = Checkpointer("gs://bucket/run/checkpoints")
    try:
        assert ckpt.directory == "gs://bucket/run/checkpoints"
        assert ckpt.latest_step() is None
        assert os.path.isdir(fake_gcs._strip_protocol("gs://bucket/run/checkpoints"))
    finally:
        ckpt.close()


def test_an_unreachable_url_is_one_line(tmp_path):
    """No backend for the URL's scheme (s3fs is not installed): one line, before any work."""
    from unified_petl.train.loop import check_writable

    with pytest.raises(ValueError, match=r"^cannot write to the workdir s3://bucket/run \("
                                         r".*; check the URL, your credentials"):
        check_writable("s3://bucket/run")
