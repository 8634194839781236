"""The server's pieces in one process: the service (checks, tokenization, response) on a
bigram table with hand-computed answers, the dispatcher (serialized jobs, heartbeats while
idle, stop) and the Flask app (status codes, one-line messages) through Flask's test client.
Log-probability tolerance: 1e-6 absolute (fp32)."""
import math
import threading
import time

import pytest

import megatron.inference.server as server
from megatron.inference.requests import RequestError
from megatron.inference.server import Dispatcher, TextGenerationService, create_app
from megatron.tokenizer.tokenizer import NullTokenizer
from tests.unit.inference.toy_models import Bigram, one_process  # noqa: F401 - fixture

# NullTokenizer(3): ids 0..2 are words "0".."2", 3 is the end of document.
TABLE = [[0.01, 0.30, 0.09, 0.60],
         [0.01, 0.05, 0.04, 0.90],
         [0.01, 0.01, 0.97, 0.01],
         [0.10, 0.80, 0.05, 0.05]]
ATOL = 1e-6


def make_service(**kwargs):
    return TextGenerationService(model=Bigram(TABLE), tokenizer=NullTokenizer(3), vocab_size=4,
                                 max_length=8, **kwargs)


def test_greedy_response_includes_prompt_and_stop_token(one_process):
    service = make_service()
    response = service.run(service.prepare({"prompts": ["1", "2 2"], "tokens_to_generate": 3,
                                            "top_k": 1, "logprobs": True}))
    assert response["text"] == ["1 3", "2 2 2 2 2"]
    assert response["segments"] == [["1", "3"], ["2", "2", "2", "2", "2"]]
    assert response["logprobs"][0] == pytest.approx([math.log(0.9)], abs=ATOL)
    assert response["logprobs"][1] == pytest.approx([math.log(0.97)] * 4, abs=ATOL)
    assert service.run(service.prepare({"prompts": ["1"], "top_k": 1}))["logprobs"] is None
    # stop_token ends a sampled row too (kept in the text, like the end of document).
    stopped = service.run(service.prepare({"prompts": ["0"], "tokens_to_generate": 3,
                                           "top_k": 1, "stop_token": 3}))
    assert stopped["text"] == ["0 3"]
    stopped = service.run(service.prepare({"prompts": ["2"], "tokens_to_generate": 3,
                                           "top_k": 1, "stop_token": 2}))
    assert stopped["text"] == ["2 2"]


def test_scoring_bos_and_beam_search(one_process):
    service = make_service()
    scored = service.run(service.prepare({"prompts": ["1 2 2"], "tokens_to_generate": 0,
                                          "logprobs": True}))
    assert scored["text"] == ["1 2 2"]
    assert scored["logprobs"][0] == pytest.approx([math.log(0.04), math.log(0.97)], abs=ATOL)
    with_bos = service.run(service.prepare({"prompts": [""], "add_BOS": True,
                                            "tokens_to_generate": 1, "top_k": 1}))
    assert with_bos["text"] == ["3 1"]  # end of document, then its likeliest successor
    beams = service.run(service.prepare({"prompts": ["0"], "beam_width": 2,
                                         "tokens_to_generate": 5}))
    assert set(beams) == {"text", "segments", "scores"}
    assert beams["text"] == ["0 3", "0 1 3"]
    assert beams["scores"] == pytest.approx([math.log(0.6), math.log(0.27) / 2], abs=ATOL)


def test_checks_that_need_the_tokenizer_or_model():
    service = make_service(max_tokens=20)
    cases = {
        "prompts[0] has 9 tokens, more than the model's maximum sequence length 8":
            {"prompts": ["1 " * 9]},
        "prompts[1] cannot be tokenized": {"prompts": ["1", "one"]},
        "stop_on_eol needs a tokenizer that writes '\\n' as one token":
            {"prompts": ["1"], "stop_on_eol": True},
        "prevent_newline_after_colon needs":
            {"prompts": ["1"], "prevent_newline_after_colon": True},
        "stop_token must be below the vocabulary size 4, got 4":
            {"prompts": ["1"], "beam_width": 2, "stop_token": 4},
        "Too many tokens: 3 x 8 is greater than --max-tokens-to-oom 20":
            {"prompts": ["1", "2", "1"], "tokens_to_generate": 10},
    }
    for message, body in cases.items():
        with pytest.raises(RequestError) as error:
            service.prepare(body)
        assert message in str(error.value)


class _SlowService(TextGenerationService):
    """Records how many jobs run at once."""

    def __init__(self):
        base = make_service()
        super().__init__(model=base.model, tokenizer=base.tokenizer, vocab_size=4, max_length=8)
        self.active = self.most_active = 0

    def run(self, job):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        time.sleep(0.02)
        try:
            return super().run(job)
        finally:
            self.active -= 1


@pytest.fixture
def broadcasts(monkeypatch):
    sent = []
    monkeypatch.setattr(server, "share_from_rank_0", lambda value: sent.append(value) or value)
    return sent


def test_concurrent_requests_are_serialized(one_process, broadcasts):
    service = _SlowService()
    dispatcher = Dispatcher(service, heartbeat_s=0.05)
    app = create_app(service.prepare, dispatcher.submit, log=lambda line: None)
    loop = threading.Thread(target=dispatcher.serve)
    loop.start()
    bodies = [{"prompts": [f"{i % 3}", "2"], "tokens_to_generate": 2 + i % 3,
               "random_seed": i, "top_k": 2} for i in range(8)]
    answers = [None] * len(bodies)

    def ask(index):
        answers[index] = app.test_client().put("/api", json=bodies[index])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    time.sleep(0.3)  # idle: heartbeats
    dispatcher.stop()
    loop.join(10)
    assert not loop.is_alive()
    assert service.most_active == 1
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200
        assert answer.get_json() == make_service().run(make_service().prepare(body))
    jobs = [value for value in broadcasts if isinstance(value, server.Job)]
    assert len(jobs) == len(bodies)
    assert broadcasts.count("heartbeat") >= 2 and broadcasts[-1] == "stop"


def test_http_errors_are_one_line_json_and_serving_goes_on(one_process):
    service = make_service()
    failures = iter([ValueError("a prompt\nis too long"), RuntimeError("boom")])

    def submit(job):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return service.run(job)

    client = create_app(service.prepare, submit, log=lambda line: None).test_client()
    body = {"prompts": ["1"], "top_k": 1, "tokens_to_generate": 1}
    answer = client.put("/api", data="{not json", content_type="application/json")
    assert (answer.status_code, answer.get_json()) == (
        400, {"message": "the request body must be a JSON object"})
    answer = client.put("/api", json={"prompts": ["1"], "top_k": 5000})
    assert answer.status_code == 400 and "top_k" in answer.get_json()["message"]
    answer = client.put("/api", json=body)
    assert (answer.status_code, answer.get_json()) == (400, {"message": "a prompt is too long"})
    answer = client.put("/api", json=body)
    assert (answer.status_code, answer.get_json()) == (500, {"message": "RuntimeError: boom"})
    assert client.get("/api").status_code == 405
    assert client.put("/other", json=body).status_code == 404
    answer = client.put("/api", json=body)
    assert answer.status_code == 200 and answer.get_json()["text"] == ["1 3"]
