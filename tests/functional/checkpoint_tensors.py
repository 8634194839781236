"""Every tensor of a checkpoint folder, for exact (or toleranced) comparisons in tests."""
from pathlib import Path
from typing import Any, Dict

import torch


def collect_tensors(value: Any, name: str,
                    found: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists/tuples, added to `found` keyed by its path."""
    if torch.is_tensor(value):
        found[name] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            collect_tensors(item, f"{name}.{key}", found)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            collect_tensors(item, f"{name}[{index}]", found)
    return found


def checkpoint_tensors(tag_dir: Path, *, with_rng: bool = True) -> Dict[str, torch.Tensor]:
    """'<file>:<path in its dict>' -> tensor for every .pt file of `tag_dir`: the weights,
    ZeRO's fp32 partitions, the optimizer moments and step counts, and (`with_rng`) the
    per-rank random states."""
    found: Dict[str, torch.Tensor] = {}
    for path in sorted(tag_dir.glob("*.pt")):
        if not with_rng and path.name.startswith("rng_state"):
            continue
        collect_tensors(torch.load(path, map_location="cpu", weights_only=False), path.name, found)
    return found


def assert_same_tensors(expected: Dict[str, torch.Tensor], actual: Dict[str, torch.Tensor]) -> None:
    """The same names, and every tensor bit-identical (dtype and shape included)."""
    assert expected.keys() == actual.keys(), sorted(set(expected) ^ set(actual))[:10]
    different = [name for name, tensor in expected.items()
                 if tensor.dtype != actual[name].dtype or not torch.equal(tensor, actual[name])]
    assert not different, different[:10]
