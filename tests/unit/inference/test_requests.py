"""The `PUT /api` request body: upstream's defaults, and one-line errors for bad fields."""
import pytest

from megatron.inference.requests import (BeamSearchRequest, GenerateRequest, RequestError,
                                         parse_request)


def test_defaults_are_upstreams():
    request = parse_request({"prompts": ["a"]})
    assert request == GenerateRequest(prompts=["a"], tokens_to_generate=64, logprobs=False,
                                      temperature=1.0, top_k=0, top_p=0.0, top_p_decay=0.0,
                                      top_p_bound=0.0, add_BOS=False, stop_on_eol=False,
                                      stop_on_double_eol=False,
                                      prevent_newline_after_colon=False, random_seed=None,
                                      no_log=False)


def test_every_generate_field():
    body = {"prompts": ["a", ""], "tokens_to_generate": 0, "logprobs": True, "temperature": 2,
            "top_p": 0.9, "top_p_decay": 0.5, "top_p_bound": 0.2, "add_BOS": True,
            "stop_on_eol": True, "stop_on_double_eol": False,
            "prevent_newline_after_colon": True, "random_seed": 7, "no_log": True}
    request = parse_request(body)
    assert isinstance(request, GenerateRequest)
    assert (request.tokens_to_generate, request.temperature, request.top_p, request.top_p_decay,
            request.top_p_bound, request.random_seed) == (0, 2.0, 0.9, 0.5, 0.2, 7)
    assert request.add_BOS and request.stop_on_eol and request.no_log


def test_beam_search_fields():
    request = parse_request({"prompts": ["a"], "beam_width": 3, "stop_token": 5,
                             "length_penalty": 0.5, "tokens_to_generate": 4})
    assert request == BeamSearchRequest(prompts=["a"], beam_width=3, tokens_to_generate=4,
                                        stop_token=5, length_penalty=0.5)
    assert parse_request({"prompts": ["a"], "beam_width": 2}).stop_token is None


BAD = [
    ([], "the request body must be a JSON object"),
    (None, "the request body must be a JSON object"),
    ({}, "prompts argument required"),
    ({"sentences": ["a"]}, "sentences is no longer used.  Replace with prompts"),
    ({"prompts": ["a"], "max_len": 3}, "max_len is no longer used"),
    ({"prompts": "a"}, "prompts is not a list of strings"),
    ({"prompts": ["a", 1]}, "prompts is not a list of strings"),
    ({"prompts": []}, "prompts is empty"),
    ({"prompts": ["a"] * 129}, "Maximum number of prompts is 128, got 129"),
    ({"prompts": ["a"], "temprature": 1.0}, "unknown field(s) temprature"),
    ({"prompts": ["a"], "tokens_to_generate": -1}, "tokens_to_generate must be an integer >= 0"),
    ({"prompts": ["a"], "tokens_to_generate": 2.0}, "tokens_to_generate must be an integer"),
    ({"prompts": ["a"], "tokens_to_generate": True}, "tokens_to_generate must be an integer"),
    ({"prompts": ["a"], "tokens_to_generate": 0}, "tokens_to_generate=0 implies logprobs"),
    ({"prompts": ["a"], "logprobs": "yes"}, "logprobs must be a boolean value"),
    ({"prompts": ["a"], "temperature": 0}, "temperature must be a positive number"),
    ({"prompts": ["a"], "temperature": 100.5}, "less than or equal to 100.0, got 100.5"),
    ({"prompts": ["a"], "temperature": "hot"}, "temperature must be a number"),
    ({"prompts": ["a"], "top_k": 1001}, "top_k must be an integer >= 0 and <= 1000, got 1001"),
    ({"prompts": ["a"], "top_k": -1}, "top_k must be an integer >= 0 and <= 1000"),
    ({"prompts": ["a"], "top_p": 1.5}, "top_p must be in [0, 1], got 1.5"),
    ({"prompts": ["a"], "top_p": 0.5, "top_k": 5}, "cannot set both top-k and top-p"),
    ({"prompts": ["a"], "top_p_decay": 0.5}, "top_p_decay cannot be set without top_p"),
    ({"prompts": ["a"], "top_p_bound": 0.5}, "top_p_bound cannot be set without top_p"),
    ({"prompts": ["a"], "top_p": 0.5, "top_p_decay": 2.0}, "top_p_decay must be in [0, 1]"),
    ({"prompts": ["a"], "top_p": 0.5, "top_p_bound": 0.6}, "at most top_p (0.5), got 0.6"),
    ({"prompts": ["a"], "top_p": 0.5, "top_p_bound": 0.0}, "top_p_bound must be greater than 0"),
    ({"prompts": ["", "a"]}, "Empty prompts require add_BOS=true"),
    ({"prompts": ["a"], "random_seed": -1}, "random_seed must be an integer >= 0, got -1"),
    ({"prompts": ["a"], "no_log": 1}, "no_log must be a boolean value"),
    ({"prompts": ["a"], "stop_on_eol": "true"}, "stop_on_eol must be a boolean value"),
    ({"prompts": ["a"], "beam_width": 0}, "beam_width must be an integer >= 1, got 0"),
    ({"prompts": ["a", "b"], "beam_width": 2}, "batch size must be 1, got 2 prompts"),
    ({"prompts": ["a"], "beam_width": 2, "top_k": 3}, "top_k cannot be combined with beam_width"),
    ({"prompts": ["a"], "beam_width": 2, "stop_token": -3}, "stop_token must be an integer >= 0"),
    ({"prompts": ["a"], "beam_width": 2, "length_penalty": "x"}, "length_penalty must be a number"),
    ({"prompts": ["a"], "beam_width": 2, "tokens_to_generate": 0}, "tokens_to_generate >= 1"),
    ({"prompts": ["a"], "stop_token": -1}, "stop_token must be an integer >= 0"),
    ({"prompts": ["a"], "length_penalty": "x"}, "length_penalty must be a number"),
]


def test_beam_fields_without_beam_width_are_accepted_as_upstream():
    request = parse_request({"prompts": ["a"], "stop_token": 5, "length_penalty": 1.5})
    assert isinstance(request, GenerateRequest) and request.stop_token == 5


@pytest.mark.parametrize("body, message", BAD, ids=[m for _, m in BAD])
def test_bad_requests_name_the_field(body, message):
    with pytest.raises(RequestError) as error:
        parse_request(body)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
