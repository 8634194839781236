"""The extension loader without a GPU: CPU behaviour, the build lock, the fallback warning.

The CUDA build itself is replaced by fakes here; tests/gpu builds the real extension.
"""
import sys
import textwrap
import threading
import time
import types
import warnings

import filelock
import pytest
import torch

from megatron.fused_kernels import loader
from tests import processes
from tests.conftest import REPO_ROOT

# Tries the lock from another process: exits 3 when it is held, 0 when it could be taken.
_PROBE = textwrap.dedent("""
    import sys, filelock
    try:
        filelock.FileLock(sys.argv[1], timeout=0).acquire()
    except filelock.Timeout:
        sys.exit(3)
""")


def _lock_held_by_another_process(path) -> bool:
    probe = processes.run([sys.executable, "-c", _PROBE, str(path)], timeout=60)
    assert probe.returncode in (0, 3), f"lock probe failed with {probe.returncode}"
    return probe.returncode == 3


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """A loader that has not tried yet, building into tmp_path, on a pretend CUDA machine."""
    monkeypatch.setattr(loader, "_STATE", loader._LoadState())
    monkeypatch.setenv(loader.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_import_prebuilt", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    return tmp_path / "cache"


def _forbid_compile(build_dir, verbose):
    raise AssertionError("the loader tried to compile")


def test_cpu_machine_returns_none_and_never_compiles(monkeypatch):
    monkeypatch.setattr(loader, "_STATE", loader._LoadState())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "_compile_extension", _forbid_compile)
    monkeypatch.setattr(loader, "_import_prebuilt", lambda: pytest.fail("imported the module"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loader.load_fused_kernels() is None
        assert loader.fused_kernels_available() is False
    assert [str(w.message) for w in caught] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cpu_process_imports_nothing_cuda_specific():
    code = textwrap.dedent("""
        import sys
        import megatron.fused_kernels as fk
        assert fk.load_fused_kernels() is None and not fk.fused_kernels_available()
        loaded = [m for m in sys.modules if "cpp_extension" in m or "fused_softmax_cuda" in m
                  or m == "filelock"]
        print("LOADED", loaded)
    """)
    result = processes.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout


def test_build_failure_warns_once_and_falls_back(fresh_state, monkeypatch):
    calls = []

    def failing_build(build_dir, verbose):
        calls.append(build_dir)
        raise RuntimeError("Error building extension 'megatron_fused_softmax_cuda': nvcc fatal")

    monkeypatch.setattr(loader, "_compile_extension", failing_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loader.load_fused_kernels() is None
        assert loader.load_fused_kernels() is None  # decided once: no rebuild, no new warning
        assert not loader.fused_kernels_available()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert len(calls) == 1
    assert "Falling back to the torch softmax path" in messages[0]
    assert "nvcc fatal" in messages[0]
    assert str(calls[0]) in messages[0]  # says where the build ran


def test_build_runs_under_an_interprocess_lock(fresh_state, monkeypatch):
    built = types.ModuleType("fake_fused_softmax")
    seen = {}

    def fake_build(build_dir, verbose):
        seen["dir"] = build_dir
        seen["held"] = _lock_held_by_another_process(build_dir / loader.LOCK_FILE_NAME)
        return built

    monkeypatch.setattr(loader, "_compile_extension", fake_build)
    assert loader.load_fused_kernels() is built
    assert seen["held"] is True
    assert seen["dir"] == loader.fused_kernels_cache_dir()
    assert seen["dir"].parent == fresh_state
    assert not _lock_held_by_another_process(seen["dir"] / loader.LOCK_FILE_NAME)


def test_lock_timeout_falls_back_with_a_warning(fresh_state, monkeypatch):
    monkeypatch.setattr(loader, "_compile_extension", _forbid_compile)
    monkeypatch.setattr(loader, "LOCK_TIMEOUT_S", 0.05)
    build_dir = loader.fused_kernels_cache_dir()
    build_dir.mkdir(parents=True)
    with filelock.FileLock(str(build_dir / loader.LOCK_FILE_NAME)):  # another rank building
        with pytest.warns(RuntimeWarning, match="Timeout"):
            assert loader.load_fused_kernels() is None


def test_stale_torch_marker_is_removed_before_building(tmp_path, monkeypatch):
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / loader.TORCH_BATON_NAME).write_text("")
    seen = {}

    def fake_build(directory, verbose):
        seen["marker_present"] = (directory / loader.TORCH_BATON_NAME).exists()
        return types.ModuleType("fake")

    monkeypatch.setattr(loader, "_compile_extension", fake_build)
    loader.build_locked(build_dir)
    assert seen == {"marker_present": False}


def test_concurrent_first_calls_build_once(fresh_state, monkeypatch):
    built = types.ModuleType("fake_fused_softmax")
    calls = []

    def slow_build(build_dir, verbose):
        calls.append(build_dir)
        time.sleep(0.2)
        return built

    monkeypatch.setattr(loader, "_compile_extension", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(loader.load_fused_kernels()))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [built] * 4
    assert len(calls) == 1


def test_prebuilt_module_is_preferred(fresh_state, monkeypatch):
    prebuilt = types.ModuleType("prebuilt")
    monkeypatch.setattr(loader, "_import_prebuilt", lambda: prebuilt)
    monkeypatch.setattr(loader, "_compile_extension", _forbid_compile)
    assert loader.load_fused_kernels() is prebuilt


def test_rocm_falls_back_with_a_warning(fresh_state, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.0")
    monkeypatch.setattr(loader, "_compile_extension", _forbid_compile)
    with pytest.warns(RuntimeWarning, match="ROCm"):
        assert loader.load_fused_kernels() is None


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(loader.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    default = loader.fused_kernels_cache_dir()
    assert default.parent == tmp_path / "ext" / "megatron_fused_kernels"
    assert f"py{sys.version_info[0]}{sys.version_info[1]}" in default.name
    assert str(torch.version.cuda) in default.name
    assert all(ch.isalnum() or ch in "_.-" for ch in default.name)
    monkeypatch.setenv(loader.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert loader.fused_kernels_cache_dir().parent == tmp_path / "mine"
