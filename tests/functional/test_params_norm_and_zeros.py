"""--log-params-norm and --log-num-zeros-in-grad through the real program, per engine.

The printed params norm must equal the norm of the weights the same run saves after that
step (replicated tensor-parallel copies and the tied embedding of the last pipeline stage
counted once), within the printed precision. The zero count is known exactly: the data uses
only the ids 1, 2, 3 and EOD, so with untied embeddings every other row of the input word
embedding gets an exactly-zero gradient (tied, the output layer gives every row one), and
nothing else does (every other gradient is a sum over hundreds of token positions). Linear
biases are off: the key bias has an analytically-zero gradient (softmax ignores a shift that
is the same for every key), so its entries are rounding noise, now and then exactly 0.
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, index_file_path
from tests.functional.launch import VOCAB_SIZE, field_by_iteration, run_pretrain, tiny_gpt_args

pytestmark = pytest.mark.slow

PADDED_VOCAB = 512  # 511 ids + EOD; already a multiple of 128 x TP for TP 1 and 2
HIDDEN = 64  # tiny_gpt_args
USED_IDS = (1, 2, 3, VOCAB_SIZE)  # VOCAB_SIZE is the NullTokenizer's EOD
ITERATIONS = 2
LAYOUTS = {  # name: (processes, flags, untied embeddings)
    "pp2-pipeline-engine": (2, ["--pipeline-model-parallel-size", "2"], True),
    # The last stage's copy of the tied embedding module (DeepSpeed's `ds_pipe_replicated`)
    # counts nothing: its position embeddings there never get a gradient.
    "pp2-tied-embeddings": (2, ["--pipeline-model-parallel-size", "2"], False),
    # Without ZeRO: whole gradients in `.grad`, the same on every data-parallel rank.
    "tp2-zero-engine-stage0": (2, ["--tensor-model-parallel-size", "2", "--no-pipeline-parallel",
                                   "--zero-stage", "0"], True),
    "dp2-zero1-partitioned": (2, [], True),  # pipeline engine with one stage, ZeRO-1 over two ranks
}


@pytest.fixture(scope="module")
def few_ids_dataset(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("few-ids") / "few_ids_text_document")
    rng = np.random.RandomState(0)
    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(300):
        # Documents of at most 15 ids: every 32-token input holds an EOD, and every global
        # batch holds each of the ids 1, 2 and 3 many times.
        builder.add_document([int(i) for i in rng.randint(1, 4, size=rng.randint(5, 16))] + [VOCAB_SIZE])
    builder.finalize(index_file_path(prefix))
    return prefix


def _saved_params_norm(tag_dir: Path) -> float:
    """L2 norm of every saved weight; a tensor saved identically under the same name in
    several files (a replicated tensor-parallel parameter, a tied embedding) counts once."""
    groups = {}
    for path in sorted(tag_dir.glob("*model_states.pt")):
        content = torch.load(path, map_location="cpu", weights_only=False)
        module = content.get("module") if "module" in content else content
        for name, value in (module or {}).items():
            if torch.is_tensor(value) and value.is_floating_point():
                groups.setdefault(name, []).append(value.double())
    assert groups, f"no weights saved in {tag_dir}"
    total = 0.0
    for tensors in groups.values():
        unique = []
        for tensor in tensors:
            if not any(torch.equal(tensor, seen) for seen in unique):
                unique.append(tensor)
        total += sum(float(tensor.pow(2).sum()) for tensor in unique)
    return math.sqrt(total)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_printed_params_norm_and_zero_count_match_the_model(few_ids_dataset, tmp_path, layout):
    procs, layout_args, untied = LAYOUTS[layout]
    save_dir = tmp_path / "ckpt"
    extra = [*layout_args, *(["--untie-embeddings-and-output-weights"] if untied else []),
             "--disable-bias-linear", "--log-params-norm", "--log-num-zeros-in-grad",
             "--lr-warmup-iters", "1", "--save", str(save_dir), "--save-interval", str(ITERATIONS)]
    if layout == "pp2-pipeline-engine":
        extra += ["--tensorboard-dir", str(tmp_path / "tb")]
    output = run_pretrain(tiny_gpt_args(few_ids_dataset, train_iters=ITERATIONS, extra=extra),
                          num_procs=procs)

    zeros = field_by_iteration(output, "num zeros")
    expected_zeros = (PADDED_VOCAB - len(USED_IDS)) * HIDDEN if untied else 0
    assert zeros == {i: float(expected_zeros) for i in range(1, ITERATIONS + 1)}, output[-3000:]

    params_norms = field_by_iteration(output, "params norm")
    assert sorted(params_norms) == list(range(1, ITERATIONS + 1)), output[-3000:]
    saved = _saved_params_norm(save_dir / f"global_step{ITERATIONS}")
    assert abs(params_norms[ITERATIONS] - saved) <= 6e-4, (params_norms, saved)
    # The fields sit where upstream prints them: after grad norm (when DeepSpeed reports one).
    assert re.search(r"(grad norm: [0-9.]+|lm loss: [0-9.E+-]+) \| num zeros: [0-9.]+ \| "
                     r"params norm: [0-9.]+ \| actual seqlen:", output)

    if layout == "pp2-pipeline-engine":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(tmp_path / "tb"))
        accumulator.Reload()
        scalars = {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
                   for tag in accumulator.Tags()["scalars"]}
        assert scalars["num-zeros/num-zeros"] == [(i, float(expected_zeros))
                                                  for i in range(1, ITERATIONS + 1)]
        assert [step for step, _ in scalars["num-zeros/num-zeros vs samples"]] == [8, 16]
        norms = scalars["params-norm/params-norm"]
        assert [step for step, _ in norms] == [1, 2]
        assert abs(norms[-1][1] - saved) <= 1e-4 * saved
        assert [step for step, _ in scalars["params-norm/params-norm vs samples"]] == [8, 16]
        assert [step for step, _ in scalars["params-norm/params-norm vs tokens"]] == [256, 512]

