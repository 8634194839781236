"""How the fused softmax extension is built: its sources and compiler flags.

Shared by setup.py (ahead of time, MEGATRON_BUILD_FUSED_KERNELS=1, which imports this file
by path) and by `loader.py` (just in time). It therefore imports nothing from `megatron`, and
torch's build helpers only inside `cuda_extensions()`. Target GPUs follow torch's usual rule:
TORCH_CUDA_ARCH_LIST if set, else the GPUs visible at build time.
"""
import os
from pathlib import Path
from typing import List, Optional

KERNEL_DIR = Path(__file__).resolve().parent
# The module setup.py installs; the JIT loader builds the same sources under JIT_NAME.
EXTENSION_NAME = "megatron.fused_kernels.fused_softmax_cuda"
JIT_NAME = "megatron_fused_softmax_cuda"
SOURCE_FILES = (
    "fused_softmax_bindings.cpp",
    "scaled_softmax.cu",
    "scaled_masked_softmax.cu",
    "scaled_upper_triang_masked_softmax.cu",
)
HEADER_FILES = ("fused_softmax.h", "softmax_kernels.cuh")
CXX_FLAGS: List[str] = ["-O3"]
# No fast-math: expf/division stay IEEE so that results track the torch path closely.
NVCC_FLAGS: List[str] = ["-O3", "-lineinfo"]


def source_paths() -> List[Path]:
    """Absolute paths of the translation units, bindings first."""
    return [KERNEL_DIR / name for name in SOURCE_FILES]


def cuda_extensions(root: Optional[Path] = None) -> list:
    """The CUDAExtension objects for setup.py; source paths are relative to `root`.

    `root` defaults to the repository root (where setup.py runs). Building needs nvcc and a
    CUDA build of torch, with setup.py's build_ext being torch's BuildExtension.
    """
    from torch.utils.cpp_extension import CUDAExtension

    base = Path(root) if root is not None else KERNEL_DIR.parents[1]
    sources = [os.path.relpath(path, base) for path in source_paths()]
    return [
        CUDAExtension(
            name=EXTENSION_NAME,
            sources=sources,
            extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)},
        )
    ]
