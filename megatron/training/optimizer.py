"""Parameter groups and the torch optimizer handed to `deepspeed.initialize(optimizer=...)`.

Adam here always means decoupled weight decay (torch.optim.AdamW), as apex's FusedAdam gives
upstream on GPUs; upstream's CPU fallback (Adam with L2 decay) is deliberately not reproduced.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Union

import torch

from megatron.config.schema import OptimizerConfig

ParamGroup = Dict[str, Any]


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and normalization weights (and any other 1-D parameter) are not decayed."""
    lowered = name.lower()
    return param.ndim <= 1 or lowered.endswith("bias") or "norm" in lowered


def get_param_groups(model_or_modules: Union[torch.nn.Module, Sequence[torch.nn.Module]], *,
                     weight_decay: float) -> List[ParamGroup]:
    """Two groups: decayed weights (`wd_mult` 1) and biases/norms (`wd_mult` 0, weight decay 0).

    Shared parameters (tied embeddings) appear once; frozen parameters and empty groups are
    left out. The scheduler multiplies its weight decay by `wd_mult` and its lr by `lr_mult`.
    """
    modules = [model_or_modules] if isinstance(model_or_modules, torch.nn.Module) else list(model_or_modules)
    decay: List[torch.nn.Parameter] = []
    no_decay: List[torch.nn.Parameter] = []
    seen = set()
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if _no_weight_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "wd_mult": 1.0, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0, "lr_mult": 1.0},
    ]
    return [group for group in groups if group["params"]]


def _fused_supported(device_type: str) -> bool:
    # torch has fused AdamW kernels for CUDA and for the CPU (about 6x the per-tensor loop on
    # a CPU, where the optimizer step otherwise dominates a 125M-parameter iteration).
    return device_type == "cpu" or (device_type == "cuda" and torch.cuda.is_available())


def _deepspeed_cpu_adam(groups: List[ParamGroup], config: OptimizerConfig) -> torch.optim.Optimizer:
    """DeepSpeed's AVX Adam for ZeRO-Offload (--cpu-optimizer), in AdamW mode like the torch one.

    Its C++ extension is compiled on first use (ninja, -march=native) into DeepSpeed's
    extension cache ($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions); later runs load it.
    """
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    try:
        return DeepSpeedCPUAdam(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                eps=config.adam_eps, weight_decay=config.weight_decay, adamw_mode=True)
    except (ImportError, OSError, RuntimeError) as error:
        raise RuntimeError(f"--cpu-optimizer: DeepSpeed's cpu_adam extension could not be built or "
                           f"loaded ({type(error).__name__}: {error}); it needs a C++ compiler and "
                           "ninja") from error


def build_optimizer(param_groups: Iterable[ParamGroup], optimizer_config: OptimizerConfig, *,
                    device_type: str) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA and CPU; DeepSpeed's CPU Adam with --cpu-optimizer) or SGD with
    the configured hyper-parameters.

    `device_type` is the accelerator's device name ("cpu", "cuda", ...). Gradient clipping is
    DeepSpeed's job (`gradient_clipping` in the DeepSpeed config), not the optimizer's.
    """
    groups = list(param_groups)
    if not groups:
        raise ValueError("no trainable parameters to optimize")
    config = optimizer_config
    if config.cpu_optimizer:
        return _deepspeed_cpu_adam(groups, config)
    if config.optimizer == "adam":
        extra = {"fused": True} if _fused_supported(device_type) else {}
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                 eps=config.adam_eps, weight_decay=config.weight_decay, **extra)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.sgd_momentum,
                               weight_decay=config.weight_decay)
    raise ValueError(f"--optimizer {config.optimizer!r} is not one of adam, sgd")
