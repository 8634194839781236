"""tools/run_text_generation_server.py and tools/text_generation_cli.py end to end, on the
checkpoint test_generate_samples.py trains (PP2, read whole, --use-checkpoint-args).

Three servers start together: TP1 (plain python), TP2 (torchrun) and a TP2 server without
heartbeats; both TP2 servers run under tests/functional/server_entry.py with a process-group
timeout of TIMEOUT_S seconds. The references are direct calls of the library (`generate`,
`beam_search`) on the same checkpoint in this test's own worker; prompts and texts are
NullTokenizer ids, written and read here independently (space-separated integers).
Tolerances: TP1 log-probabilities and beam scores 1e-5 absolute (the same fp32 computation
in another process); TP2 1e-4 (reduction order differs).
"""
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import processes
from tests.functional.launch import REPO_ROOT, VOCAB_SIZE, pretrain_command
from tests.functional.test_generate_samples import checkpoint  # noqa: F401 - module fixture
from tests.harness import run_on_ranks

pytestmark = pytest.mark.slow
SERVER = REPO_ROOT / "tools" / "run_text_generation_server.py"
ENTRY = REPO_ROOT / "tests" / "functional" / "server_entry.py"
CLI = REPO_ROOT / "tools" / "text_generation_cli.py"
TIMEOUT_S = 6.0
EOD = VOCAB_SIZE
GREEDY_BODIES = [
    {"prompts": ["5 6 7 8 9", "100 101 102"], "tokens_to_generate": 6, "top_k": 1,
     "logprobs": True},
    {"prompts": [""], "add_BOS": True, "tokens_to_generate": 4, "top_k": 1, "logprobs": True},
    {"prompts": ["7 8 9 10"], "tokens_to_generate": 0, "logprobs": True},
    {"prompts": ["200 201"], "beam_width": 3, "tokens_to_generate": 5},
]
SAMPLED_BODIES = [
    {"prompts": ["300", "20 21"], "tokens_to_generate": 8, "temperature": 1.5, "top_k": 20,
     "random_seed": 11, "logprobs": True},
    {"prompts": ["42 43"], "tokens_to_generate": 5, "top_p": 0.9, "top_p_decay": 0.9,
     "top_p_bound": 0.5, "random_seed": 3, "logprobs": True},
]


class Server:
    """A server process group; its output is collected until it prints its address."""

    def __init__(self, command, env):
        self.process = processes.start(command, cwd=REPO_ROOT, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines, self.url = [], None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.search(r"serving on http://\S+:(\d+)/api", line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}/api"
                self._ready.set()
        self._ready.set()

    @property
    def output(self):
        return "".join(self.lines)

    def wait_ready(self, timeout):
        self._ready.wait(timeout)
        assert self.url, f"the server did not start:\n{self.output[-4000:]}"


def put(url, body, timeout=120):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def servers(checkpoint):  # noqa: F811 - the imported fixture
    common = ["--load", str(checkpoint), "--use-checkpoint-args", "--host", "127.0.0.1",
              "--port", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               SERVER_TIMEOUT_S=str(TIMEOUT_S))

    def tp2():  # each on its own free rendezvous port
        return pretrain_command(num_procs=2, script=ENTRY) + common + [
            "--tensor-model-parallel-size", "2"]

    started = {
        "tp1": Server(pretrain_command(num_procs=1, script=SERVER) + common, env),
        "tp2": Server(tp2(), env),
        "tp2_no_heartbeat": Server(tp2(), dict(env, SERVER_HEARTBEAT_S="3600")),
    }
    try:
        for name in ("tp1", "tp2"):
            started[name].wait_ready(240)
        yield started
    finally:
        for server in started.values():
            processes.kill_group(server.process)


def library_answers(checkpoint_dir, bodies):
    """Direct `generate` / `beam_search` calls for each body (one rank)."""
    from megatron.arguments import parse_args
    from megatron.inference.beam_search import beam_search
    from megatron.inference.generation import generate
    from megatron.inference.sampling import SamplingParams
    from megatron.inference.setup import setup_generation

    setup = setup_generation(parse_args(["--load", str(checkpoint_dir),
                                         "--use-checkpoint-args"]))
    answers = []
    for body in bodies:
        prompts = [([EOD] if body.get("add_BOS") else []) + [int(t) for t in text.split()]
                   for text in body["prompts"]]
        common = dict(tokens_to_generate=body["tokens_to_generate"], vocab_size=EOD + 1,
                      max_length=32)
        if "beam_width" in body:
            beams = beam_search(setup.model, prompts[0], beam_width=body["beam_width"],
                                stop_token=EOD, **common)
            answers.append(([b.tokens for b in beams], [b.score for b in beams]))
            continue
        sampling = SamplingParams(
            temperature=body.get("temperature", 1.0), top_k=body.get("top_k", 0),
            top_p=body.get("top_p", 0.0), top_p_decay=body.get("top_p_decay", 0.0),
            top_p_bound=body.get("top_p_bound", 0.0))
        results = generate(setup.model, prompts, sampling=sampling, stop_tokens=[EOD],
                           include_stop=True, seed=body.get("random_seed"),
                           return_logprobs=True, **common)
        answers.append(([r.tokens for r in results], [r.logprobs for r in results]))
    return answers


@pytest.fixture(scope="module")
def reference(checkpoint):  # noqa: F811
    bodies = GREEDY_BODIES + SAMPLED_BODIES
    return dict(zip(map(json.dumps, bodies),
                    run_on_ranks(library_answers, checkpoint, bodies, world_size=1,
                                 timeout=180)[0]))


def check_answer(body, answer, reference, atol):
    tokens, numbers = reference[json.dumps(body)]
    assert answer["text"] == [" ".join(map(str, row)) for row in tokens]
    assert answer["segments"] == [[str(t) for t in row] for row in tokens]
    if "beam_width" in body:
        assert answer["scores"] == pytest.approx(numbers, abs=atol)
        return
    for got, expected in zip(answer["logprobs"], numbers):
        assert got == pytest.approx(expected, abs=atol)


def ask_concurrently(url, bodies, threads=6):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda body: put(url, body), bodies))


def test_tp1_answers_concurrent_requests_as_the_library(servers, reference):
    bodies = (GREEDY_BODIES + SAMPLED_BODIES) * 2
    for body, (status, answer) in zip(bodies, ask_concurrently(servers["tp1"].url, bodies)):
        assert status == 200, answer
        check_answer(body, answer, reference, atol=1e-5)
    first = reference[json.dumps(GREEDY_BODIES[0])][0]
    assert first[0][5:7] == [10, 11] and first[1][3] == 103  # it learned to count


def test_tp2_answers_as_one_rank_and_survives_bad_requests(servers, reference):
    url = servers["tp2"].url
    for body, (status, answer) in zip(GREEDY_BODIES, ask_concurrently(url, GREEDY_BODIES)):
        assert status == 200, answer
        check_answer(body, answer, reference, atol=1e-4)
    bad = {
        "prompts argument required": {"tokens_to_generate": 3},
        "top_k must be an integer >= 0 and <= 1000": {"prompts": ["1"], "top_k": 2000},
        "more than the model's maximum sequence length 32": {"prompts": ["1 " * 40]},
        "prompts[0] cannot be tokenized": {"prompts": ["one two"]},
        "stop_on_eol needs a tokenizer": {"prompts": ["1"], "stop_on_eol": True},
    }
    for message, body in bad.items():
        status, answer = put(url, body)
        assert status == 400 and message in answer["message"], answer
        assert "\n" not in answer["message"]
    status, answer = put(url, GREEDY_BODIES[0])
    assert status == 200
    check_answer(GREEDY_BODIES[0], answer, reference, atol=1e-4)


def test_cli_prints_the_continuation_and_errors(servers):
    address = servers["tp1"].url[len("http://"):-len("/api")]
    completed = processes.run(
        [str(pretrain_command()[0]), str(CLI), address], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60, input="5 6 7\n3\n\n4\n1 2\nmany\n")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.replace("Enter number of tokens to generate: ", "\n").replace(
        "Enter prompt: ", "\n").splitlines()
    response = lines[lines.index("Megatron Response: ") + 1].split()
    assert response[:3] == ["5", "6", "7"] and 3 < len(response) <= 6  # sampled continuation
    assert all(0 <= int(token) <= EOD for token in response)
    assert "Error 400: Empty prompts require add_BOS=true" in lines
    assert "Error: the number of tokens must be an integer, got 'many'" in lines
    unreachable = processes.run([str(pretrain_command()[0]), str(CLI), "127.0.0.1:9"],
                                capture_output=True, text=True, timeout=60, input="1\n2\n")
    assert unreachable.returncode == 1
    assert re.fullmatch(r"text_generation_cli\.py: error: cannot reach http://127\.0\.0\.1:9/api"
                        r": .*\n", unreachable.stderr)


def test_idle_followers_outlive_the_process_group_timeout(servers, reference):
    time.sleep(2.5 * TIMEOUT_S)
    server = servers["tp2"]
    status, answer = put(server.url, GREEDY_BODIES[0])
    assert status == 200, server.output[-3000:]
    check_answer(GREEDY_BODIES[0], answer, reference, atol=1e-4)
    assert server.process.poll() is None
    # The control: the same server without heartbeats loses its follower to the timeout.
    control = servers["tp2_no_heartbeat"]
    control.process.wait(timeout=120)
    assert control.process.returncode != 0
    assert "Timed out" in control.output, control.output[-3000:]
