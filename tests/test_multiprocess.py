"""jax.distributed for real: 2 processes x 4 CPU devices on localhost (CPU collectives over
Gloo), started by launch/multiprocess.sh with an explicit coordinator, process count and id,
running the real CLI on a tiny BART, against one process with 8 devices (this one).

One workdir goes through everything a cluster job meets, in order:
  1. SIGTERM to both processes while they train: they agree on one step (JAX's preemption
     sync point), save one checkpoint there, exit 75, and log nothing past it;
  2. the rerun resumes there and is killed (kill -9, both) after a later checkpoint;
  3. its newest checkpoint damaged, the next rerun falls back to the one before (renamed
     once, by process 0, the other waiting), resumes and finishes: every logged loss and the
     final evaluation equal the uninterrupted 1-process run.
Then `eval --split validation` with 2 processes of the 1-process run's workdir (beam search
split over the 8 devices of both): the same predictions, text for text, and the same scores
as in one process. (The same checkpoint: a decoding comparison that no training noise can
blur.)

Run as a script, this file is the CLI with a test hook (`UP_TEST_PAUSE=STEP:FOLDER`): after
STEP each process writes FOLDER/paused.<process index> and waits for FOLDER/go, so that the
test can signal or kill both processes at a known step; afterwards every step sleeps
UP_TEST_SLOW seconds (time for the preemption sync to go round).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "multiprocess.sh")
STEPS, EVERY = 12, 2
OVERRIDES = ["num_devices=0", f"checkpoint_every={EVERY}", "keep_checkpoints=5",
             "generate.num_beams=2", "generate.max_length=8", "generate.min_length=3"]
TIMEOUT = 150  # seconds for one multi-process command, start to end


def _pausing_hook():
    """The hook of UP_TEST_PAUSE / UP_TEST_SLOW (see the module docstring)."""
    import jax

    at, folder = os.environ["UP_TEST_PAUSE"].split(":", 1)
    at, slow = int(at), float(os.environ.get("UP_TEST_SLOW", "0"))

    def hook(step, state):
        if step == at:
            with open(os.path.join(folder, f"paused.{jax.process_index()}"), "w"):
                pass
            deadline = time.time() + 100
            while not os.path.exists(os.path.join(folder, "go")):
                if time.time() > deadline:
                    raise RuntimeError("test hook: nobody said go")
                time.sleep(0.05)
        elif step > at:
            time.sleep(slow)

    return hook


def _main():  # the CLI, with the test hook when UP_TEST_PAUSE is set
    if os.environ.get("UP_TEST_PAUSE"):
        from unified_petl.train import loop

        train, hook = loop.train, _pausing_hook()
        loop.train = lambda config, workdir, **kw: train(config, workdir, hooks=[hook], **kw)
    from unified_petl import cli

    cli.main()


if __name__ == "__main__":
    _main()
    sys.exit(0)

# ----------------------------------------------------------------------------- the test
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tiny_runs  # noqa: E402
from unified_petl.train import train  # noqa: E402
from unified_petl.train.config import load_config, override  # noqa: E402
from unified_petl.train.inference import evaluate  # noqa: E402
from unified_petl.train.writer import read_metrics  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source_dependent_bart(tmp_path_factory) -> str:
    """A 1-layer tiny BART whose beam search gives nearly every source its own output: a
    random tiny model says the same for every input, which would compare nothing (not even
    the order of the gathered outputs). Larger weights, cross-attention larger still,
    embedding rows of one norm, no final logits bias."""
    import torch

    from conftest import tiny_hf_model

    model = tiny_hf_model("bart", layers=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "shared" not in name and "embed" not in name:
                p.mul_(30.0 if "encoder_attn" in name else 3.0)
        w = model.model.shared.weight
        w.copy_(2.0 * w / w.norm(dim=-1, keepdim=True).clamp_min(1e-3))
        model.final_logits_bias.zero_()
    folder = str(tmp_path_factory.mktemp("bart_source_dependent"))
    model.save_pretrained(folder)
    tiny_runs.save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config file, the environment of the processes, and the 1-process reference:
    a finished workdir, its losses, and its beam-search evaluation."""
    cache = tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = _source_dependent_bart(tmp_path_factory)
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "xsum")
    config_file = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                              eval_file, task="xsum", steps=STEPS)
    reference = str(tmp_path_factory.mktemp("reference"))
    config = override(load_config(config_file), OVERRIDES)
    results = train(config, reference)
    evaluated = evaluate(config, reference, split="validation")
    evaluated["texts"] = _texts(evaluated["predictions"])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", PYTHONUNBUFFERED="1",
               UNIFIED_PETL=f"{sys.executable} {os.path.abspath(__file__)}",
               PYTHON=sys.executable)
    return {"config": config_file, "env": env, "reference": reference, "results": results,
            "eval": evaluated}


class Launch:
    """launch/multiprocess.sh 2 ARGS in its own process group (signals go to all of it)."""

    def __init__(self, setup, args, **env):
        self.proc = subprocess.Popen(
            [SCRIPT, "2", *args], env={**setup["env"], "COORDINATOR_PORT": str(_free_port()),
                                       **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.deadline = time.time() + TIMEOUT

    def signal(self, signum):
        os.killpg(self.proc.pid, signum)

    def wait_for(self, condition, what):
        while not condition():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"ended (code {self.proc.returncode}) before {what}:\n{err[-3000:]}")
            if time.time() > self.deadline:
                self.signal(signal.SIGKILL)
                pytest.fail(f"timed out waiting for {what}:\n{self.proc.communicate()[1][-3000:]}")
            time.sleep(0.05)

    def finish(self):
        try:
            out, err = self.proc.communicate(timeout=max(self.deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            out, err = self.proc.communicate()
            pytest.fail(f"timed out:\n{err[-3000:]}")
        return self.proc.returncode, out, err


def _train_args(setup, workdir):
    return ["train", "--config", setup["config"], "--workdir", workdir] + [
        f"--config.{o}" for o in OVERRIDES]


def _texts(path):
    with open(path) as f:
        return [json.loads(line)["output"] for line in f]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_two_processes_preempted_killed_resumed_equal_one_process(setup, tmp_path):
    workdir, pause = str(tmp_path / "run"), tmp_path / "pause"
    pause.mkdir()

    # 1. SIGTERM to both processes at step 3: one agreed step, one checkpoint there, exit 75
    # (checkpoint_every=1000: the only checkpoint is the one the signal asks for)
    run = Launch(setup, _train_args(setup, workdir) + ["--config.checkpoint_every=1000"],
                 UP_TEST_PAUSE=f"3:{pause}", UP_TEST_SLOW="0.3")
    run.wait_for(lambda: all((pause / f"paused.{i}").exists() for i in (0, 1)),
                 "both processes reached step 3")
    run.signal(signal.SIGTERM)
    (pause / "go").touch()
    code, out, err = run.finish()
    assert code == 75, err[-3000:]
    saved = [line for line in err.splitlines() if "SIGTERM: saved checkpoint" in line]
    assert len(saved) == 2 and "Traceback" not in err, err[-3000:]
    step = int(saved[0].split("saved checkpoint ")[1].split()[0])
    assert all(f"saved checkpoint {step} " in line for line in saved), saved
    assert 3 < step < STEPS and tiny_runs.checkpoint_steps(workdir) == [step], saved
    assert max(_losses(workdir)) == step  # nothing logged past the checkpoint
    assert sum("process 0 of 2" in line or "process 1 of 2" in line
               for line in err.splitlines()) == 2  # the startup line of each process

    # 2. the rerun resumes there; kill -9 both after a later checkpoint
    for name in ("go", "paused.0", "paused.1"):
        (pause / name).unlink()
    kill_at = step + 3  # checkpoint step + 1 (or + 2) is saved by then
    run = Launch(setup, _train_args(setup, workdir), UP_TEST_PAUSE=f"{kill_at}:{pause}")
    run.wait_for(lambda: all((pause / f"paused.{i}").exists() for i in (0, 1)),
                 f"both processes reached step {kill_at}")
    run.wait_for(lambda: tiny_runs.checkpoint_steps(workdir)[-1] > step,
                 "a checkpoint after the resume")
    run.signal(signal.SIGKILL)
    run.proc.communicate()

    # 3. the newest checkpoint damaged: the next rerun falls back to the one before (process
    # 0 renames it once, the other waits for that), resumes and finishes: the losses and the
    # evaluation of one uninterrupted process
    steps = tiny_runs.checkpoint_steps(workdir)
    bad = os.path.join(workdir, "checkpoints", str(steps[-1]))
    with open(os.path.join(bad, "meta", "metadata"), "r+b") as f:
        f.truncate(5)
    code, out, err = Launch(setup, _train_args(setup, workdir)).finish()
    assert code == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(warnings) == 2 and all(f"resuming from checkpoint {steps[-2]};" in line
                                      for line in warnings), err[-3000:]
    assert os.path.isdir(bad + ".corrupt") and not os.path.exists(bad + ".corrupt.2")
    ours, reference = _losses(workdir), _losses(setup["reference"])
    assert sorted(ours) == sorted(reference) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([ours[s] for s in sorted(ours)],
                               [reference[s] for s in sorted(ours)], rtol=1e-6, atol=1e-7)
    results = json.load(open(os.path.join(workdir, "results.json")))
    for key, value in setup["results"]["eval"].items():
        np.testing.assert_allclose(results["eval"][key], value, rtol=1e-5, err_msg=key)


def test_two_processes_decode_as_one(setup):
    """Beam search split over the devices of 2 processes: the texts and scores of one."""
    code, out, err = Launch(setup, ["eval", "--workdir", setup["reference"], "--split",
                                    "validation"]).finish()
    assert code == 0, err[-3000:]
    reference = setup["eval"]
    ours = json.load(open(os.path.join(setup["reference"], "eval_results_validation.json")))
    assert ours["step"] == reference["step"] == STEPS and ours["examples"] == 16
    for key, value in reference["eval"].items():
        np.testing.assert_allclose(ours["eval"][key], value, rtol=1e-6, err_msg=key)
    assert _texts(ours["predictions"]) == reference["texts"]
    assert len(set(reference["texts"])) > 8  # the outputs differ from example to example


# ----------------------------------------------------------------------------- per-process data
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import transformers

    folder = str(tmp_path_factory.mktemp("tokenizer"))
    tiny_runs.save_tokenizer(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def _two_processes(task, dataset, tokenizer, **lengths):
    """The HostEncoded of process 0 and of process 1 of 2, with their exchange done here."""
    from unified_petl.train.host_data import encode_for_process, local_summary

    summaries = [local_summary(task, dataset, tokenizer, process_index=p, process_count=2,
                               **lengths)[0] for p in (0, 1)]
    stacked = {k: np.stack([s[k] for s in summaries]) for k in summaries[0]}
    return [encode_for_process(task, dataset, tokenizer, process_index=p, process_count=2,
                               exchange=lambda summary: stacked, **lengths) for p in (0, 1)]


@pytest.mark.parametrize("kind", ["sst2", "xsum"])
def test_each_process_tokenises_only_what_it_feeds(tmp_path, tokenizer, kind):
    """Two processes' batches are their slices of one process's global batches (shapes from
    the global batch, fillers, a resumed stream), while each has tokenised only its block
    (for the lengths) and the rows its batches needed."""
    from unified_petl.data import batches, encode, get_task, host_slice, load_task
    from unified_petl.train.host_data import block, process_rows

    task = get_task(kind)
    train_file, _ = tiny_runs.write_data(str(tmp_path), kind, n_train=61)
    dataset = load_task(kind, "train", data_files=train_file)
    lengths = dict(max_source_len=16, max_target_len=8 if kind == "xsum" else None)
    whole = encode(task, dataset, tokenizer, **lengths)
    hosts = _two_processes(task, dataset, tokenizer, **lengths)
    for p, host in enumerate(hosts):
        assert host.tokenised == set(block(61, p, 2))  # its block only, before any batch
        np.testing.assert_array_equal(host.source.lengths, whole.source.lengths)

    def streams(position, processes):
        kw = dict(seed=3, epoch_start=0, position=position, buckets=(8, 16),
                  decoder_start_token_id=2 if kind == "xsum" else None)
        if kind == "xsum":  # token-budget batches: the order depends on every row's length
            from unified_petl.data import token_budget_batches

            make = lambda enc, **k: token_budget_batches(enc, 64, multiple_of=4, **kw, **k)  # noqa
        else:
            make = lambda enc, **k: batches(enc, batch_size=8, **kw, **k)  # noqa
        one = make(whole)
        return one, [h.prefetching(make(h, process_index=p, process_count=2), window=1)
                     for p, h in enumerate(processes)]

    one, two = streams(0, hosts)
    fed = [set(), set()]
    for _ in range(one.steps_per_epoch + 2):  # into the second epoch
        rows = one.plan(one.epoch)[one.position]
        reference = next(one)
        for p in (0, 1):
            fed[p] |= set(process_rows(rows, p, 2).tolist())
            ours = next(two[p])
            expected = host_slice(reference, p, 2)
            assert ours.keys() == expected.keys()
            for key in expected:
                np.testing.assert_array_equal(ours[key], expected[key], err_msg=key)
    for p, host in enumerate(hosts):  # its block and the rows it fed, nothing else
        assert host.tokenised == set(block(61, p, 2)) | fed[p]
    assert len(hosts[0].tokenised) < 61

    # a resumed stream (fresh processes, position 3) gives the same batches
    one, two = streams(3, _two_processes(task, dataset, tokenizer, **lengths))
    for _ in range(2):
        reference = next(one)
        for p in (0, 1):
            ours, expected = next(two[p]), host_slice(reference, p, 2)
            for key in expected:
                np.testing.assert_array_equal(ours[key], expected[key], err_msg=key)


def test_an_encoding_error_on_one_process_is_raised_on_every_process(tmp_path, tokenizer):
    """A label out of range in process 1's block: both processes stop with its one-line message
    (process 0 would otherwise wait for process 1 in the exchange)."""
    from unified_petl.data import get_task, load_task

    path = tmp_path / "train.json"
    rows = [{"sentence": f"w{5 + i}", "label": i % 2} for i in range(10)]
    rows[8]["label"] = 7
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("sst2")
    dataset = load_task("sst2", "train", data_files=str(path))
    for p in (0, 1):
        with pytest.raises(ValueError, match=r"label 7 outside 0\.\.1"):
            _two_processes(task, dataset, tokenizer, max_source_len=16)


# ----------------------------------------------------------------------------- launch scripts
def test_slurm_script_drives_every_gpu_of_a_node_and_requeues(tmp_path):
    """launch/slurm.sbatch with a fake srun / scontrol: each task passes all the GPUs it sees
    as --config.local_device_ids (JAX's SLURM detection alone would give it one, [0]), and a
    preempted run (75) is requeued."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "scontrol.log"
    # srun: its options dropped, the command run once (one node's task)
    (fake / "srun").write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\n'
                               'exec "$@"\n')
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n'
                                   '[ "$1" = show ] && echo node1\nexit 0\n')
    (fake / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: H100"\necho "GPU 1: H100"\n')
    (fake / "run").write_text('#!/bin/sh\necho "$@"\nexit "$CODE"\n')
    for name in ("srun", "scontrol", "nvidia-smi", "run"):
        (fake / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE")}
    env.update(PATH=f"{fake}:{os.environ['PATH']}", UNIFIED_PETL="run", SLURM_JOB_ID="5",
               SLURM_JOB_NODELIST="node[1-2]", CODE="0")
    script = os.path.join(ROOT, "launch", "slurm.sbatch")
    workdir = str(tmp_path / "run")

    def launch(**extra):
        return subprocess.run(["bash", script, "c.py", workdir, "--config.optim.lr=1e-4"],
                              env={**env, **extra}, capture_output=True, text=True)

    for extra, ids in (({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, "(0,1,2,3,4,5,6,7,)"),
                       ({"SLURM_GPUS_ON_NODE": "4"}, "(0,1,2,3,)"), ({}, "(0,1,)")):
        done = launch(**extra)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [
            "train", f"--config.local_device_ids={ids}", "--config", "c.py", "--workdir",
            workdir, "--config.distributed=true", "--config.optim.lr=1e-4"]
    assert "requeue" not in log.read_text()
    done = launch(CODE="75")
    assert done.returncode == 75 and log.read_text().splitlines()[-1] == "requeue 5"


def test_launch_settings_are_checked_in_one_line():
    from unified_petl.train.config import ConfigError, base_config, check_launch, run_record

    def config(**kw):
        c = base_config()
        for key, value in kw.items():
            c[key] = value
        return c

    check_launch(config(distributed=True, coordinator_address="localhost:1234",
                        num_processes=2, process_id=1, local_device_ids=(0, 1)))
    for kw, message in (
            (dict(process_id=0), "without --config.distributed=true"),
            (dict(distributed=True, coordinator_address="localhost"), "HOST:PORT"),
            (dict(distributed=True, num_processes=2, process_id=2), "must be < num_processes"),
            (dict(distributed=True, local_device_ids=("a",)), "device numbers")):
        with pytest.raises(ConfigError, match=message):
            check_launch(config(**kw))
    # config.json and the checkpoints record the run, not how this process joined it
    record = run_record(config(distributed=True, num_processes=2, process_id=1,
                               coordinator_address="h:1", local_device_ids=(0,)))
    assert (record.coordinator_address, record.num_processes, record.process_id,
            record.local_device_ids, record.distributed) == ("", 0, -1, (), True)


def test_a_gpu_left_idle_by_slurm_detection_is_named():
    from unified_petl.train.loop import unused_gpus

    slurm = {"SLURM_JOB_ID": "1", "SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "1"}
    assert "8 GPUs but its 1 process(es) drive 1 each: 7 idle" in unused_gpus(slurm, 1, "gpu")
    assert unused_gpus(slurm, 8, "gpu") is None
    assert unused_gpus({**slurm, "SLURM_NTASKS_PER_NODE": "8"}, 1, "gpu") is None
    assert unused_gpus({k: v for k, v in slurm.items() if k != "SLURM_JOB_ID"}, 1, "gpu") is None
    assert unused_gpus(slurm, 1, "cpu") is None
