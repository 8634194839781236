"""Installs the `megatron` package.

The C++ data helpers (pybind11) are compiled here when a compiler is available; if that
fails the package still installs and compiles them once on first use instead
(`megatron/data/helpers_loader.py`). The fused CUDA kernels are opt-in:
set MEGATRON_BUILD_FUSED_KERNELS=1 on a CUDA machine to build them ahead of time;
otherwise they are built on first use there, and never on a CPU machine.
"""
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _read_requirements() -> list:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _extensions() -> list:
    extensions = []
    helpers_source = ROOT / "megatron" / "data" / "helpers.cpp"
    if helpers_source.exists():
        from pybind11.setup_helpers import Pybind11Extension

        extensions.append(
            Pybind11Extension(
                "megatron.data.helpers_cpp",
                [str(helpers_source.relative_to(ROOT))],
                extra_compile_args=["-O3"],
                cxx_std=17,
            )
        )
    if os.environ.get("MEGATRON_BUILD_FUSED_KERNELS") == "1":
        import sys

        sys.path.insert(0, str(ROOT / "megatron" / "fused_kernels"))
        from build_spec import cuda_extensions  # the kernels' own build description

        extensions.extend(cuda_extensions())
    return extensions


def _build_ext_class():
    if os.environ.get("MEGATRON_BUILD_FUSED_KERNELS") == "1":
        # torch's build_ext compiles .cu files with nvcc (needs --no-build-isolation).
        from torch.utils.cpp_extension import BuildExtension as build_ext
    else:
        from setuptools.command.build_ext import build_ext

    class OptionalBuildExt(build_ext):
        def run(self):
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any compiler failure
                print(f"WARNING: C++ helpers not built at install ({error}); "
                      "they will be compiled on first use.")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001
                print(f"WARNING: could not build {ext.name} ({error}); "
                      "it will be compiled on first use.")

    return OptionalBuildExt


setup(
    name="megatron-ds",
    version="0.1.0",
    description="GPT pretraining on DeepSpeed: a clean-room successor of Megatron-DeepSpeed",
    packages=find_packages(include=["megatron", "megatron.*"]),
    package_data={"megatron": ["data/*.cpp", "fused_kernels/*.cu", "fused_kernels/*.cpp",
                               "fused_kernels/*.h", "fused_kernels/*.cuh"]},
    python_requires=">=3.9",
    install_requires=_read_requirements(),
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext_class()},
)
