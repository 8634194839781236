"""ModelType must unpickle from upstream checkpoints, which store it inside `args`."""
import argparse
import pickle

import pytest

from megatron.core.enums import ModelType

# What pickle protocol 2 writes for upstream's ModelType.encoder_or_decoder inside an
# argparse Namespace: only the module path, the class name and the value 1 are recorded.
UPSTREAM_ARGS_PICKLE = (b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}q\x02X\n\x00\x00\x00"
                        b"model_typeq\x03cmegatron.core.enums\nModelType\nq\x04K\x01\x85q\x05"
                        b"Rq\x06sb.")


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_encoder_or_decoder_round_trips(protocol):
    restored = pickle.loads(pickle.dumps(ModelType.encoder_or_decoder, protocol=protocol))
    assert restored is ModelType.encoder_or_decoder


def test_upstream_args_stream_unpickles():
    args = pickle.loads(UPSTREAM_ARGS_PICKLE)
    assert isinstance(args, argparse.Namespace)
    assert args.model_type is ModelType.encoder_or_decoder


def test_members_and_values_are_upstreams():
    assert {member.name: member.value for member in ModelType} == {
        "encoder_or_decoder": 1, "encoder_and_decoder": 2,
        "retro_encoder": 3, "retro_decoder": 4}
