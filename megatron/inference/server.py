"""The REST text-generation server (upstream's `PUT /api`) over tensor-parallel ranks.

Rank 0 answers HTTP (Flask, on worker threads) and runs every model call from its main
thread: a request is checked and tokenized on the HTTP thread (`TextGenerationService.
prepare`; an invalid one gets HTTP 400 at once), queued, and taken by `Dispatcher.serve`,
which broadcasts it to the other ranks and runs it with them. Requests are therefore
serialized, one at a time, in arrival order. While no request comes, rank 0 broadcasts a
heartbeat every `heartbeat_s` seconds, so the followers (`follow`), blocked in that
broadcast, never reach the process group's timeout however long the server idles.

Deviations from upstream: invalid requests get HTTP 400 with `{"message": ...}` (upstream
answers many with HTTP 200 and a bare string); text, segments and logprobs end with the
stop token, as upstream's, but beam results are not padded with end-of-document tokens
after it; unknown request fields are refused (see `requests.py`); the newline
tokens of `stop_on_eol` / `stop_on_double_eol` / `prevent_newline_after_colon` come from the
tokenizer (upstream hard-codes GPT-2's ids 198, 628 and ":"), and the end-of-document token
stops a row in those modes too (upstream then ignores it).
"""
from __future__ import annotations

import datetime
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from megatron.inference.beam_search import beam_search
from megatron.inference.generation import generate, share_from_rank_0
from megatron.inference.requests import (BeamSearchRequest, GenerateRequest, Request,
                                         RequestError, parse_request)
from megatron.inference.sampling import SamplingParams

_HEARTBEAT, _STOP = "heartbeat", "stop"


@dataclass(frozen=True)
class Job:
    """A checked request with its prompts tokenized: what every rank runs."""

    request: Request
    prompts: Tuple[Tuple[int, ...], ...]


class TextGenerationService:
    """Requests -> jobs (rank 0) and jobs -> responses (every rank, together)."""

    def __init__(self, *, model, tokenizer, vocab_size: int, max_length: int,
                 max_tokens: Optional[int] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.max_tokens = max_tokens
        """At most this many tokens (batch x sequence) per request (None: no limit)."""

    def _single_token(self, text: str, option: str) -> int:
        try:
            ids = self.tokenizer.tokenize(text)
        except (ValueError, KeyError):
            ids = []
        if len(ids) != 1:
            raise RequestError(f"{option} needs a tokenizer that writes {text!r} as one token")
        return ids[0]

    def prepare(self, body: Any) -> Job:
        """Check `body` and tokenize its prompts; RequestError names what is wrong."""
        request = parse_request(body)
        prompts = []
        for index, text in enumerate(request.prompts):
            try:
                ids = self.tokenizer.tokenize(text) if text else []
            except (ValueError, KeyError) as error:
                raise RequestError(f"prompts[{index}] cannot be tokenized: {error}") from None
            if request.add_BOS:
                ids = [self.tokenizer.eod] + ids
            if not ids:
                raise RequestError(f"prompts[{index}] has no tokens; give text or add_BOS=true")
            if len(ids) > self.max_length:
                raise RequestError(f"prompts[{index}] has {len(ids)} tokens, more than the "
                                   f"model's maximum sequence length {self.max_length}")
            prompts.append(tuple(ids))
        if request.prevent_newline_after_colon:
            self._single_token(":", "prevent_newline_after_colon")
            self._single_token("\n", "prevent_newline_after_colon")
        if request.stop_token is not None and request.stop_token >= self.vocab_size:
            raise RequestError(f"stop_token must be below the vocabulary size "
                               f"{self.vocab_size}, got {request.stop_token}")
        if isinstance(request, GenerateRequest):
            if request.stop_on_eol or request.stop_on_double_eol:
                self._single_token("\n", "stop_on_eol" if request.stop_on_eol
                                   else "stop_on_double_eol")
            width = len(prompts)
        else:
            width = request.beam_width
        longest = min(max(len(p) for p in prompts) + request.tokens_to_generate, self.max_length)
        if self.max_tokens is not None and width * longest > self.max_tokens:
            raise RequestError(f"Too many tokens: {width} x {longest} is greater than "
                               f"--max-tokens-to-oom {self.max_tokens}")
        return Job(request=request, prompts=tuple(prompts))

    def _newlines(self) -> Tuple[int, Optional[int]]:
        """The ids of "\\n" and, when the tokenizer has one, "\\n\\n"."""
        newline = self._single_token("\n", "stop_on_eol")
        try:
            double = self._single_token("\n\n", "stop_on_eol")
        except RequestError:
            double = None
        return newline, double

    def _segments(self, tokens: List[int]) -> List[str]:
        return [self.tokenizer.detokenize([token]) for token in tokens]

    def _banned_pairs(self, request: Request) -> List[Tuple[int, int]]:
        if not request.prevent_newline_after_colon:
            return []
        return [(self._single_token(":", ""), self._single_token("\n", ""))]

    def run(self, job: Job) -> Dict[str, Any]:
        """The response body; every rank of the model must call it with the same job."""
        request = job.request
        prompts = [list(prompt) for prompt in job.prompts]
        if isinstance(request, BeamSearchRequest):
            stop_token = self.tokenizer.eod if request.stop_token is None else request.stop_token
            beams = beam_search(self.model, prompts[0], beam_width=request.beam_width,
                                tokens_to_generate=request.tokens_to_generate,
                                vocab_size=self.vocab_size, max_length=self.max_length,
                                stop_token=stop_token, length_penalty=request.length_penalty,
                                banned_pairs=self._banned_pairs(request))
            return {"text": [self.tokenizer.detokenize(beam.tokens) for beam in beams],
                    "segments": [self._segments(beam.tokens) for beam in beams],
                    "scores": [beam.score for beam in beams]}
        stop_tokens, stop_sequences = [self.tokenizer.eod], []
        if request.stop_token is not None:
            stop_tokens.append(request.stop_token)
        if request.stop_on_eol or request.stop_on_double_eol:
            newline, double = self._newlines()
            if double is not None:
                stop_tokens.append(double)
            if request.stop_on_eol:
                stop_tokens.append(newline)
            else:
                stop_sequences.append([newline, newline])
        results = generate(
            self.model, prompts, tokens_to_generate=request.tokens_to_generate,
            vocab_size=self.vocab_size, max_length=self.max_length,
            sampling=sampling_of(request), stop_tokens=stop_tokens,
            stop_sequences=stop_sequences, include_stop=True, seed=request.random_seed,
            return_logprobs=request.logprobs, banned_pairs=self._banned_pairs(request))
        return {"text": [self.tokenizer.detokenize(result.tokens) for result in results],
                "segments": [self._segments(result.tokens) for result in results],
                "logprobs": [result.logprobs for result in results] if request.logprobs
                else None}


def sampling_of(request: GenerateRequest) -> SamplingParams:
    """Upstream's sampling fields as SamplingParams (top_k 1 is greedy)."""
    if request.top_k == 1:
        return SamplingParams(greedy=True)
    return SamplingParams(temperature=request.temperature, top_k=request.top_k,
                          top_p=request.top_p, top_p_decay=request.top_p_decay,
                          top_p_bound=request.top_p_bound)


class Dispatcher:
    """Rank 0's queue between the HTTP threads and the main thread that runs the model."""

    def __init__(self, service: TextGenerationService, *, heartbeat_s: float) -> None:
        self.service = service
        self.heartbeat_s = heartbeat_s
        self._jobs: "queue.Queue[Tuple[Optional[Job], Future]]" = queue.Queue()
        self._stopping = threading.Event()

    def submit(self, job: Job) -> Dict[str, Any]:
        """Run `job` on all ranks (from any thread); its response, or its exception."""
        future: Future = Future()
        self._jobs.put((job, future))
        return future.result()

    def stop(self) -> None:
        """Make `serve` tell the followers to leave and return (from any thread)."""
        self._stopping.set()
        self._jobs.put((None, Future()))

    def serve(self) -> None:
        """Run queued jobs until `stop`; heartbeat the followers while idle."""
        last_broadcast = time.monotonic()
        while True:
            wait = max(0.0, self.heartbeat_s - (time.monotonic() - last_broadcast))
            try:
                job, future = self._jobs.get(timeout=wait)
            except queue.Empty:
                share_from_rank_0(_HEARTBEAT)
                last_broadcast = time.monotonic()
                continue
            if job is None or self._stopping.is_set():
                share_from_rank_0(_STOP)
                if job is not None:
                    future.set_exception(RuntimeError("the server is shutting down"))
                return
            share_from_rank_0(job)
            try:
                future.set_result(self.service.run(job))
            except BaseException as error:  # noqa: BLE001 - the HTTP thread reports it
                future.set_exception(error)
            last_broadcast = time.monotonic()


def follow(service: TextGenerationService) -> None:
    """Ranks other than 0: run each job rank 0 broadcasts, until it says stop."""
    while True:
        command = share_from_rank_0(None)
        if command == _STOP:
            return
        if command == _HEARTBEAT:
            continue
        try:
            service.run(command)
        except ValueError:  # rank 0 meets the same error and reports it
            pass


def create_app(prepare: Callable[[Any], Job], submit: Callable[[Job], Dict[str, Any]], *,
               log: Callable[[str], None] = print):
    """The Flask application: `PUT /api` with upstream's contract. `prepare` checks a body
    (`TextGenerationService.prepare`), `submit` runs a job (`Dispatcher.submit`)."""
    from flask import Flask, jsonify, request

    app = Flask("megatron_text_generation")

    def error(status: int, message: str):
        response = jsonify({"message": " ".join(str(message).split())})
        response.status_code = status
        return response

    @app.put("/api")
    def api():
        body = request.get_json(silent=True)
        try:
            job = prepare(body)
        except RequestError as problem:
            return error(400, str(problem))
        if not job.request.no_log:
            log(f"request from {request.remote_addr}: {json.dumps(body)} "
                f"(start {datetime.datetime.now().isoformat(timespec='seconds')})")
        started = time.monotonic()
        try:
            response = submit(job)
        except ValueError as problem:
            return error(400, str(problem))
        except Exception as problem:  # noqa: BLE001 - keep serving; say what happened
            return error(500, f"{type(problem).__name__}: {problem}")
        if not job.request.no_log:
            log(f"answered in {time.monotonic() - started:.2f} s")
        return jsonify(response)

    @app.errorhandler(404)
    def not_found(_):
        return error(404, "not found; the API is PUT /api")

    @app.errorhandler(405)
    def not_allowed(_):
        return error(405, "method not allowed; the API is PUT /api")

    return app
