"""The build description setup.py and the loader share: sources, includes, extension objects."""
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from megatron.fused_kernels import build_spec
from tests.conftest import REPO_ROOT

KERNEL_DIR = REPO_ROOT / "megatron" / "fused_kernels"


def _cuda_home():
    """A CUDA toolkit root holding cuda_runtime_api.h, or None."""
    nvcc = shutil.which("nvcc")
    candidates = [Path("/usr/local/cuda")]
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    for root in candidates:
        if (root / "include" / "cuda_runtime_api.h").exists():
            return root
    return None


def test_every_source_and_header_exists():
    for name in build_spec.SOURCE_FILES + build_spec.HEADER_FILES:
        assert (KERNEL_DIR / name).is_file(), name
    assert [p.name for p in build_spec.source_paths()] == list(build_spec.SOURCE_FILES)


def test_local_includes_resolve_to_listed_headers():
    for name in build_spec.SOURCE_FILES + build_spec.HEADER_FILES:
        for included in re.findall(r'#include "([^"]+)"', (KERNEL_DIR / name).read_text()):
            assert included in build_spec.HEADER_FILES, f"{name} includes {included}"


def test_setup_py_can_import_it_standalone():
    # setup.py loads the file by path, outside the megatron package.
    spec = importlib.util.spec_from_file_location("standalone_build_spec",
                                                  KERNEL_DIR / "build_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.EXTENSION_NAME == "megatron.fused_kernels.fused_softmax_cuda"
    assert callable(module.cuda_extensions)


def test_package_data_ships_the_sources():
    setup_text = (REPO_ROOT / "setup.py").read_text()
    for pattern in ('"fused_kernels/*.cu"', '"fused_kernels/*.cpp"', '"fused_kernels/*.h"',
                    '"fused_kernels/*.cuh"'):
        assert pattern in setup_text, f"setup.py package_data lacks {pattern}"


@pytest.mark.skipif(_cuda_home() is None, reason="needs a CUDA toolkit (nvcc)")
def test_cuda_extensions_returns_torch_cuda_extensions(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(_cuda_home()))
    extensions = build_spec.cuda_extensions()
    assert len(extensions) == 1
    extension = extensions[0]
    assert extension.name == "megatron.fused_kernels.fused_softmax_cuda"
    assert all(not Path(src).is_absolute() for src in extension.sources)
    assert sorted((REPO_ROOT / src).resolve() for src in extension.sources) == sorted(
        build_spec.source_paths())
    assert "cudart" in extension.libraries
    assert extension.extra_compile_args["nvcc"] == build_spec.NVCC_FLAGS
