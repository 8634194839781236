"""The text-generation server's request body (upstream's `PUT /api` contract), checked.

`parse_request(body)` turns the decoded JSON into a `GenerateRequest` or, with
`beam_width`, a `BeamSearchRequest`, or raises `RequestError` with a one-line message (the
server answers it with HTTP 400). The checks and defaults are upstream's; the deviations:
unknown fields are refused (a misspelt option is not silently ignored), numbers may be
given as integers where upstream insists on floats (`top_p`, `length_penalty`, ...), and
booleans are never accepted as numbers. Checks that need the tokenizer or the model
(prompt lengths, newline tokens, `stop_token` range) are the server's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Union

MAX_PROMPTS = 128
DEFAULT_TOKENS_TO_GENERATE = 64

_FIELDS = {
    "prompts", "tokens_to_generate", "logprobs", "temperature", "top_k", "top_p",
    "top_p_decay", "top_p_bound", "add_BOS", "stop_on_eol", "stop_on_double_eol",
    "prevent_newline_after_colon", "random_seed", "no_log", "beam_width", "stop_token",
    "length_penalty",
}
_RENAMED = {"max_len": "tokens_to_generate", "sentences": "prompts"}


class RequestError(ValueError):
    """An invalid request; the message is one line, meant for the client."""


@dataclass(frozen=True)
class GenerateRequest:
    """Sampling (or scoring, with tokens_to_generate 0) of a batch of prompts."""

    prompts: List[str]
    tokens_to_generate: int = DEFAULT_TOKENS_TO_GENERATE
    logprobs: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    top_p_decay: float = 0.0
    top_p_bound: float = 0.0
    add_BOS: bool = False
    stop_on_eol: bool = False
    stop_on_double_eol: bool = False
    prevent_newline_after_colon: bool = False
    random_seed: Optional[int] = None
    """None: the server's random state continues (upstream's -1)."""
    stop_token: Optional[int] = None
    """Also stop a row at this id (upstream accepts the field here and ignores it)."""
    no_log: bool = False


@dataclass(frozen=True)
class BeamSearchRequest:
    """Beam search over a single prompt."""

    prompts: List[str]
    beam_width: int
    tokens_to_generate: int = DEFAULT_TOKENS_TO_GENERATE
    stop_token: Optional[int] = None
    """None: the tokenizer's end-of-document id (upstream's default 50256 is GPT-2's)."""
    length_penalty: float = 1.0
    add_BOS: bool = False
    prevent_newline_after_colon: bool = False
    no_log: bool = False


Request = Union[GenerateRequest, BeamSearchRequest]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


class _Fields:
    """Typed access to the body's fields, each check raising RequestError."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise RequestError(f"{name} must be a boolean value")
        return value

    def integer(self, name: str, default: Optional[int], *, low: Optional[int] = None,
                high: Optional[int] = None) -> Optional[int]:
        if name not in self.body:
            return default
        value = self.body[name]
        if not _is_int(value) or (low is not None and value < low) \
                or (high is not None and value > high):
            bounds = " and ".join(part for part in (
                f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "")
                if part)
            raise RequestError(f"{name} must be an integer{' ' + bounds if bounds else ''}, "
                               f"got {value!r}")
        return value

    def number(self, name: str, default: float) -> float:
        if name not in self.body:
            return default
        value = self.body[name]
        if not _is_number(value):
            raise RequestError(f"{name} must be a number, got {value!r}")
        return float(value)


def _prompts(body: Mapping[str, Any]) -> List[str]:
    if "prompts" not in body:
        raise RequestError("prompts argument required")
    prompts = body["prompts"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompts is not a list of strings")
    if not prompts:
        raise RequestError("prompts is empty")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"Maximum number of prompts is {MAX_PROMPTS}, got {len(prompts)}")
    return prompts


def parse_request(body: Any) -> Request:
    """The request in `body` (decoded JSON), checked; RequestError says what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for old, new in _RENAMED.items():
        if old in body:
            raise RequestError(f"{old} is no longer used.  Replace with {new}")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; the fields are "
                           f"{', '.join(sorted(_FIELDS))}")
    prompts = _prompts(body)
    fields = _Fields(body)
    tokens_to_generate = fields.integer("tokens_to_generate", DEFAULT_TOKENS_TO_GENERATE, low=0)
    add_bos = fields.flag("add_BOS")
    if not add_bos and any(len(prompt) == 0 for prompt in prompts):
        raise RequestError("Empty prompts require add_BOS=true")
    common = dict(prompts=prompts, tokens_to_generate=tokens_to_generate, add_BOS=add_bos,
                  prevent_newline_after_colon=fields.flag("prevent_newline_after_colon"),
                  no_log=fields.flag("no_log"))
    if "beam_width" in body:
        return _beam_search_request(fields, common)
    return _generate_request(fields, common)


def _generate_request(fields: _Fields, common: dict) -> GenerateRequest:
    # Upstream clients may send the beam-search fields with every request: they are checked;
    # length_penalty only matters to beam search, stop_token also ends sampled rows.
    fields.number("length_penalty", 1.0)
    logprobs = fields.flag("logprobs")
    if common["tokens_to_generate"] == 0 and not logprobs:
        raise RequestError("tokens_to_generate=0 implies logprobs should be True")
    temperature = fields.number("temperature", 1.0)
    if not 0.0 < temperature <= 100.0:
        raise RequestError(f"temperature must be a positive number less than or equal to "
                           f"100.0, got {temperature}")
    top_k = fields.integer("top_k", 0, low=0, high=1000)
    top_p = fields.number("top_p", 0.0)
    if not 0.0 <= top_p <= 1.0:
        raise RequestError(f"top_p must be in [0, 1], got {top_p}")
    if top_p > 0.0 and top_k > 0:
        raise RequestError("cannot set both top-k and top-p samplings.")
    top_p_decay = fields.number("top_p_decay", 0.0)
    top_p_bound = fields.number("top_p_bound", 0.0)
    for name in ("top_p_decay", "top_p_bound"):
        if name in fields.body and top_p == 0.0:
            raise RequestError(f"{name} cannot be set without top_p")
    if not 0.0 <= top_p_decay <= 1.0:
        raise RequestError(f"top_p_decay must be in [0, 1], got {top_p_decay}")
    if "top_p_bound" in fields.body and not 0.0 < top_p_bound <= top_p:
        raise RequestError(f"top_p_bound must be greater than 0 and at most top_p "
                           f"({top_p}), got {top_p_bound}")
    stop_on_eol = fields.flag("stop_on_eol")
    stop_on_double_eol = fields.flag("stop_on_double_eol")
    random_seed = fields.integer("random_seed", None, low=0)
    return GenerateRequest(logprobs=logprobs, temperature=temperature, top_k=top_k, top_p=top_p,
                           top_p_decay=top_p_decay, top_p_bound=top_p_bound,
                           stop_on_eol=stop_on_eol, stop_on_double_eol=stop_on_double_eol,
                           random_seed=random_seed,
                           stop_token=fields.integer("stop_token", None, low=0), **common)


def _beam_search_request(fields: _Fields, common: dict) -> BeamSearchRequest:
    sampling_only = sorted(name for name in (
        "logprobs", "temperature", "top_k", "top_p", "top_p_decay", "top_p_bound",
        "stop_on_eol", "stop_on_double_eol", "random_seed") if name in fields.body)
    if sampling_only:
        raise RequestError(f"{', '.join(sampling_only)} cannot be combined with beam_width")
    beam_width = fields.integer("beam_width", None, low=1)
    if len(common["prompts"]) > 1:
        raise RequestError(f"When doing beam_search, batch size must be 1, got "
                           f"{len(common['prompts'])} prompts")
    if common["tokens_to_generate"] == 0:
        raise RequestError("beam search needs tokens_to_generate >= 1")
    return BeamSearchRequest(beam_width=beam_width,
                             stop_token=fields.integer("stop_token", None, low=0),
                             length_penalty=fields.number("length_penalty", 1.0), **common)
