"""compile_cache: JAX's persistent compilation cache for the CLI and the demo, off in tests."""
import os

import jax
import pytest

from unified_petl import cli, compile_cache

KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


@pytest.fixture
def jax_settings():
    """Restore JAX's cache settings after the test (they are process-wide)."""
    saved = {k: getattr(jax.config, k) for k in KEYS}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_tests_run_without_the_users_cache():
    assert os.environ[compile_cache.ENV] == "0"  # tests/conftest.py
    assert compile_cache.folder_from_env() is None


def test_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for value in ("", "1", "on", " true "):
        assert compile_cache.folder_from_env({compile_cache.ENV: value}) == str(
            tmp_path / "unified-petl" / "jax")
    assert compile_cache.folder_from_env({}) == str(tmp_path / "unified-petl" / "jax")
    for value in ("0", "off", "False", "no"):
        assert compile_cache.folder_from_env({compile_cache.ENV: value}) is None
    assert compile_cache.folder_from_env({compile_cache.ENV: "/x/y"}) == "/x/y"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.default_folder() == os.path.expanduser("~/.cache/unified-petl/jax")


def test_setup_turns_the_cache_on_with_low_thresholds(monkeypatch, tmp_path, jax_settings):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "cache"))
    assert compile_cache.setup(enabled=False) is None  # the --no-compile-cache flag
    assert jax.config.jax_compilation_cache_dir is None
    assert compile_cache.setup() == str(tmp_path / "cache")
    assert os.path.isdir(tmp_path / "cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert jax.config.jax_persistent_cache_min_compile_time_secs < 1.0  # JAX's default: 1 s
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    assert jax.config.jax_compilation_cache_max_size == compile_cache.MAX_BYTES
    # a folder JAX already has (JAX_COMPILATION_CACHE_DIR, the caller's config) stands
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "other"))
    assert compile_cache.setup() == str(tmp_path / "cache")


def test_a_cache_that_cannot_be_created_is_one_warning(monkeypatch, tmp_path, capsys,
                                                       jax_settings):
    jax.config.update("jax_compilation_cache_dir", None)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file" / "cache"))
    assert compile_cache.setup() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: compilation cache")
    assert jax.config.jax_compilation_cache_dir is None


def test_every_command_takes_no_compile_cache():
    parser = cli._parser()
    args = parser.parse_args(["train", "--config", "c.py", "--workdir", "w",
                              "--no-compile-cache"])
    assert args.no_compile_cache
    assert not parser.parse_args(["report", "r"]).no_compile_cache
