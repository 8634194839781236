"""Peak memory and wall time of converting a 125M model both ways (GPT-2 small shape: 12
layers, hidden 768, vocabulary 50257, fp32, 498 MB of weights).

    python tests/bench/bench_hf_conversion.py [--layers 12 --hidden 768 --heads 12]

A random transformers GPT2LMHeadModel is saved as model.safetensors, then each conversion runs
as its own process: from_hf.py into the pipeline engine at TP1 and at TP2 x PP2 and into the
ZeRO engine at TP1, and to_hf.py back from each. For every run it prints the wall time, the
peak resident memory (ru_maxrss, which also counts the file pages of the memory-mapped
inputs) and the peak anonymous memory (RssAnon sampled every 10 ms: what the process itself
allocated), beside the size of the largest tensor and of one layer, and the memory of a
process that only imports the tools (the floor every run pays).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools" / "convert_checkpoint"


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(command):
    """(wall seconds, peak RSS MiB, peak anonymous MiB) of one process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak_anon = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _anon_kib(process.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    elapsed = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{output[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, peak_anon[0] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    options = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        subprocess.run([python, "-c", (
            "import torch, transformers, sys; torch.manual_seed(0); "
            f"c = transformers.GPT2Config(n_layer={options.layers}, n_embd={options.hidden}, "
            f"n_head={options.heads}); "
            "transformers.GPT2LMHeadModel(c).save_pretrained(sys.argv[1])"), str(hf_dir)],
            check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
        weights = (hf_dir / "model.safetensors").stat().st_size
        floor = measure([python, "-c", "import sys; sys.path.insert(0, '.'); "
                         "import tools.convert_checkpoint.from_hf, tools.convert_checkpoint.to_hf"])
        largest = 50257 * options.hidden * 4
        layer = (12 * options.hidden ** 2 + 13 * options.hidden) * 4
        print(f"weights {weights / 2**20:.0f} MiB; largest tensor {largest / 2**20:.0f} MiB; "
              f"one layer {layer / 2**20:.0f} MiB; importing the tools alone: "
              f"RSS {floor[1]:.0f} MiB, anonymous {floor[2]:.0f} MiB")
        print("| conversion | wall s | peak RSS MiB | peak anonymous MiB |")
        print("| --- | --- | --- | --- |")
        layouts = {"pipeline TP1": ["--tensor-model-parallel-size", "1"],
                   "pipeline TP2 x PP2": ["--tensor-model-parallel-size", "2",
                                          "--pipeline-model-parallel-size", "2"],
                   "ZeRO engine TP1": ["--no-pipeline-parallel"]}
        for label, flags in layouts.items():
            save = Path(tmp) / label.replace(" ", "_")
            result = measure([python, str(TOOLS / "from_hf.py"), "--hf", str(hf_dir),
                              "--save", str(save), *flags])
            print(f"| from_hf -> {label} | {result[0]:.1f} | {result[1]:.0f} | {result[2]:.0f} |")
            out = Path(tmp) / (save.name + "_out")
            result = measure([python, str(TOOLS / "to_hf.py"), "--load", str(save),
                              "--output", str(out)])
            print(f"| to_hf <- {label} | {result[0]:.1f} | {result[1]:.0f} | {result[2]:.0f} |")


if __name__ == "__main__":
    main()
