"""The package layers import downwards only: core <- model/data/tokenizer <- config <-
training/checkpointing/inference <- entry points (pretrain_gpt.py, tools/).

Every `import`/`from ... import` of a megatron module, at any depth (function-level imports
included), is checked against the layer table below; a failure names the file, the line and
the offending import.
"""
import ast
from pathlib import Path
from typing import Iterator, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "megatron"

# What each top-level part of `megatron` may import (itself always).
ALLOWED = {
    "core": set(),
    "fused_kernels": set(),
    "tokenizer": {"core"},
    "data": {"core"},
    "model": {"core", "fused_kernels"},
    "arguments": set(),
    "config": {"arguments", "core", "model"},
    "initialize": {"core"},
    "checkpointing": {"core"},
    "conversion": {"core", "model", "checkpointing", "tokenizer"},
    "inference": {"core", "model", "tokenizer", "config", "checkpointing", "conversion",
                  "initialize", "fused_kernels"},
    "training": {"core", "model", "data", "tokenizer", "fused_kernels", "config", "arguments",
                 "checkpointing", "conversion", "initialize"},
}


def _part(module: str) -> str:
    """`megatron.model.gpt_model` -> `model`; the package itself -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _megatron_imports(path: Path, package_root: Path) -> Iterator[Tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(package_root.parent).with_suffix("").parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "megatron":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = package.split(".")[:-node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "megatron":
                continue
            if module == "megatron":  # `from megatron import fused_kernels`
                for alias in node.names:
                    yield node.lineno, f"megatron.{alias.name}"
            else:
                yield node.lineno, module


def _violations(package_root: Path = PACKAGE):
    found = []
    for path in sorted(package_root.rglob("*.py")):
        relative = path.relative_to(package_root)
        if relative == Path("__init__.py"):
            continue
        own = relative.parts[0].removesuffix(".py")
        if own not in ALLOWED:
            found.append(f"megatron/{relative}: part {own!r} has no row in ALLOWED; add one")
            continue
        for line, module in _megatron_imports(path, package_root):
            target = _part(module)
            if target and target != own and target not in ALLOWED[own]:
                found.append(f"megatron/{relative}:{line} imports {module} "
                             f"({own} may import only {sorted(ALLOWED[own]) or 'nothing'})")
    return found


def test_imports_point_down_the_layers():
    violations = _violations()
    assert not violations, "imports against the layer direction:\n" + "\n".join(violations)


def test_the_checker_sees_violations(tmp_path):
    """Deep, relative and `from megatron import x` imports against the direction are reported."""
    fake = tmp_path / "megatron"
    (fake / "core").mkdir(parents=True)
    (fake / "model").mkdir()
    (fake / "core" / "bad.py").write_text(
        "import os\n\ndef f():\n    from megatron.training.loop import train\n")
    (fake / "model" / "worse.py").write_text(
        "from ..checkpointing import layout\nfrom megatron import data\nimport megatron.core\n")
    (fake / "odd.py").write_text("")
    assert _violations(fake) == [
        "megatron/core/bad.py:4 imports megatron.training.loop (core may import only nothing)",
        "megatron/model/worse.py:1 imports megatron.checkpointing "
        "(model may import only ['core', 'fused_kernels'])",
        "megatron/model/worse.py:2 imports megatron.data "
        "(model may import only ['core', 'fused_kernels'])",
        "megatron/odd.py: part 'odd' has no row in ALLOWED; add one",
    ]


@pytest.mark.parametrize("module,expected", [("megatron.core.utils", "core"), ("megatron", "")])
def test_part_of_a_module(module, expected):
    assert _part(module) == expected
