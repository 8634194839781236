"""The CUDA sources compile (no GPU needed): nvcc object files for sm_80 and sm_90, and the
bindings through the host compiler against torch's headers. Linking needs a CUDA build of
torch and happens only on a CUDA machine (tests/gpu)."""
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from megatron.fused_kernels import build_spec
from tests import processes

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
ARCHS = ("80", "90")
TIMEOUT_S = 600


def _torch_includes():
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _cuda_include():
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    if NVCC:
        roots.append(str(Path(NVCC).resolve().parent.parent))
    for root in roots:
        if root and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


def _nvcc_command(source: Path, obj: Path):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS  # the defines torch builds with

    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    return [NVCC, "-c", str(source), "-o", str(obj), "-std=c++17", "-Xcompiler", "-fPIC",
            *COMMON_NVCC_FLAGS, *build_spec.NVCC_FLAGS, *gencode]


def _bindings_command(source: Path, cuda_include: Path):
    includes = [f"-I{path}" for path in _torch_includes()]
    includes += [f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_include}"]
    defines = ["-DTORCH_EXTENSION_NAME=fused_softmax_cuda"]
    torch_include = Path(_torch_includes()[0])
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # A CPU build of torch lacks this generated header; it only sets export macros.
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    compiler = os.environ.get("CXX", "c++")
    return [compiler, "-fsyntax-only", "-std=c++17", "-Wall", str(source), *defines, *includes]


def test_sources_compile(tmp_path):
    jobs = {}
    for source in build_spec.source_paths():
        if source.suffix == ".cu":
            command = _nvcc_command(source, tmp_path / f"{source.stem}.o")
        else:
            cuda_include = _cuda_include()
            if cuda_include is None or shutil.which(os.environ.get("CXX", "c++")) is None:
                continue  # no CUDA headers for the host compiler: only the .cu files
            command = _bindings_command(source, cuda_include)
        jobs[source.name] = processes.start(command, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
    failures = []
    try:
        for name, job in jobs.items():
            output, _ = job.communicate(timeout=TIMEOUT_S)
            if job.returncode != 0:
                failures.append(f"{name}:\n{output[-4000:]}")
    finally:  # a timed-out nvcc leaves no cicc/ptxas behind
        for job in jobs.values():
            processes.kill_group(job)
    assert not failures, "\n\n".join(failures)

    cuobjdump = shutil.which("cuobjdump")
    for source in build_spec.source_paths():
        if source.suffix != ".cu":
            continue
        obj = tmp_path / f"{source.stem}.o"
        assert obj.stat().st_size > 0
        if cuobjdump:
            listing = processes.run([cuobjdump, "--list-elf", str(obj)], capture_output=True,
                                    text=True, timeout=60).stdout
            for arch in ARCHS:
                assert f"sm_{arch}" in listing, f"{obj.name} has no sm_{arch} code:\n{listing}"
