"""ModelParallelConfig validation."""
import pytest
import torch

from megatron.core import ModelParallelConfig


def test_defaults():
    config = ModelParallelConfig()
    assert config.tensor_model_parallel_size == 1 and config.pipeline_model_parallel_size == 1
    assert config.params_dtype == torch.float32 and config.init_seed == 1234
    assert not config.sequence_parallel and not config.use_cpu_initialization


@pytest.mark.parametrize("kwargs,message", [
    ({"sequence_parallel": True}, "sequence_parallel.*tensor_model_parallel_size=1"),
    ({"tensor_model_parallel_size": 0}, "tensor_model_parallel_size"),
    ({"pipeline_model_parallel_size": -1}, "pipeline_model_parallel_size"),
    ({"gradient_accumulation_fusion": True}, "gradient_accumulation_fusion"),
    ({"params_dtype": torch.int32}, "params_dtype"),
    ({"init_seed": "1234"}, "init_seed"),
])
def test_invalid_combinations_name_the_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelParallelConfig(**kwargs)


def test_sequence_parallel_with_tensor_parallel_is_accepted():
    assert ModelParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True).sequence_parallel
