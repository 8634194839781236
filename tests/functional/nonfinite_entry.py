"""Test-only entry point: pretrain_gpt.py with a NaN injected into the loss.

INJECT_NAN_ITERATIONS="3,5-7" makes every micro batch of those (1-based) iterations return a
NaN loss, as a diverging model would: the ZeRO engine's loss, or under the pipeline engine the
last stage's loss function (the other stages then receive NaN gradients, as they would). Used by test_training.py; not part of the product.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _iterations(spec: str) -> set:
    chosen = set()
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    return chosen


def main() -> int:
    import pretrain_gpt
    from megatron.model import gpt_model_pipe
    from megatron.training.engine import TrainingEngine

    poisoned = _iterations(os.environ.get("INJECT_NAN_ITERATIONS", ""))
    original_step, original_loss = TrainingEngine.train_step, TrainingEngine._forward_loss
    counter = {"iteration": 0}

    def train_step(self, data_iterator):
        counter["iteration"] += 1
        return original_step(self, data_iterator)

    def forward_loss(self, data_iterator):
        loss = original_loss(self, data_iterator)
        return loss * float("nan") if counter["iteration"] in poisoned else loss

    original_pipe_loss = gpt_model_pipe.pipe_loss

    def pipe_loss(output, labels):
        loss = original_pipe_loss(output, labels)
        return loss * float("nan") if counter["iteration"] in poisoned else loss

    TrainingEngine.train_step, TrainingEngine._forward_loss = train_step, forward_loss
    gpt_model_pipe.pipe_loss = pipe_loss  # read when the pipeline model is built
    return pretrain_gpt.main(sys.argv[1:])


if __name__ == "__main__":
    import pretrain_gpt

    pretrain_gpt.exit_process(main())  # as pretrain_gpt.py itself ends
