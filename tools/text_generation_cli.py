"""Talk to tools/run_text_generation_server.py from a terminal (upstream's client).

    python tools/text_generation_cli.py localhost:5000

Reads a prompt and a number of tokens to generate, sends them to `PUT /api` and prints
`Megatron Response:` and the text (the prompt and its continuation), until end of input
(Ctrl-D). URL is HOST:PORT as upstream's, or a full http:// address. An answer other than
200 is printed as `Error STATUS: MESSAGE` and the loop goes on; a server that cannot be
reached ends the client with exit status 1. Unlike upstream, the number of tokens is read
as an integer (never evaluated as Python).
"""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import List, Optional, Tuple

PROGRAM = "text_generation_cli.py"


def api_url(address: str) -> str:
    """`host:port` or `http://host:port[/api]` -> the API's URL."""
    url = address if "://" in address else "http://" + address
    url = url.rstrip("/")
    return url if url.endswith("/api") else url + "/api"


def put(url: str, body: dict, *, timeout: float = 600.0) -> Tuple[int, dict]:
    """(HTTP status, decoded JSON answer) of `PUT url` with `body`."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"message": text.strip()}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        sys.stderr.write(f"usage: {PROGRAM} HOST:PORT\n")
        return 2
    url = api_url(argv[0])
    while True:
        try:
            prompt = input("Enter prompt: ")
            count = input("Enter number of tokens to generate: ")
        except EOFError:
            print()
            return 0
        try:
            tokens_to_generate = int(count)
        except ValueError:
            print(f"Error: the number of tokens must be an integer, got {count!r}")
            continue
        try:
            status, answer = put(url, {"prompts": [prompt],
                                       "tokens_to_generate": tokens_to_generate})
        except (urllib.error.URLError, OSError) as error:
            sys.stderr.write(f"{PROGRAM}: error: cannot reach {url}: "
                             f"{getattr(error, 'reason', error)}\n")
            return 1
        if status != 200:
            print(f"Error {status}: {answer.get('message', answer)}")
        else:
            print("Megatron Response: ")
            print(answer["text"][0], flush=True)


if __name__ == "__main__":
    sys.exit(main())
