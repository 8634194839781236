"""Serve text generation over HTTP (upstream Megatron-DeepSpeed's server and `PUT /api`).

    python tools/run_text_generation_server.py --load DIR --use-checkpoint-args --port 5000
    deepspeed --num_gpus 2 tools/run_text_generation_server.py --load DIR \\
        --use-checkpoint-args --tensor-model-parallel-size 2
    curl -X PUT localhost:5000/api -H 'Content-Type: application/json' \\
        -d '{"prompts": ["Hello"], "tokens_to_generate": 16, "top_k": 1}'

Rank 0 listens on --host/--port (upstream's fixed 0.0.0.0:5000 are the defaults; --port 0
picks a free port) and prints `serving on http://HOST:PORT/api` once it accepts requests;
the other tensor-parallel ranks follow it (megatron/inference/server.py has the request
fields, the response and the deviations from upstream). --temperature, --top_k, --top_p and
--out-seq-length are accepted as upstream's tool accepts them, and unused: every request
carries its own. Ctrl-C (or SIGTERM) on rank 0 stops every rank.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROGRAM = "run_text_generation_server.py"


def add_server_args(parser):
    """Upstream's flags of this tool, plus --host, --port and --max-tokens-to-oom."""
    group = parser.add_argument_group("text generation server")
    group.add_argument("--temperature", type=float, default=1.0, help="Unused (per request).")
    group.add_argument("--top_p", type=float, default=0.0, help="Unused (per request).")
    group.add_argument("--top_k", type=int, default=0, help="Unused (per request).")
    group.add_argument("--out-seq-length", type=int, default=1024, help="Unused (per request).")
    group.add_argument("--host", type=str, default="0.0.0.0", help="Address to listen on.")
    group.add_argument("--port", type=int, default=5000,
                       help="Port to listen on (0: a free one, printed at start).")
    group.add_argument("--max-tokens-to-oom", type=int, default=12000,
                       help="Refuse requests of more tokens (prompts x longest sequence).")
    return parser


def parse(argv: Optional[List[str]] = None):
    from megatron.arguments import parse_args

    return parse_args(argv, extra_args_provider=add_server_args,
                      defaults={"tokenizer_type": "GPT2BPETokenizer"})


def heartbeat_seconds(timeout_minutes: float) -> float:
    """How often rank 0 pings idle followers: well inside the process-group timeout."""
    return min(30.0, timeout_minutes * 60.0 / 4.0)


def _error(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: error: {message}\n")
    sys.stderr.flush()


def _listen(args):
    """Rank 0's HTTP socket, bound before the model loads so a taken port fails fast."""
    from werkzeug.serving import make_server

    from megatron.inference.server import create_app

    holder = {}
    app = create_app(lambda body: holder["service"].prepare(body),
                     lambda job: holder["dispatcher"].submit(job),
                     log=lambda line: print(line, flush=True))
    try:
        http = make_server(args.host, args.port, app, threaded=True)
    except OSError as error:
        raise ValueError(f"--host {args.host} --port {args.port}: {error}") from None
    return http, holder


def _serve_on_rank_0(http, dispatcher, args) -> None:
    threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"serving on http://{args.host}:{http.server_port}/api", flush=True)
    try:
        dispatcher.serve()
    except KeyboardInterrupt:  # between requests the followers wait in the broadcast
        dispatcher.stop()
        dispatcher.serve()
    finally:
        http.shutdown()


def serve(args, *, heartbeat_s: Optional[float] = None) -> int:
    """Load the model and serve until stopped; `heartbeat_s` overrides the interval."""
    try:
        if args.max_tokens_to_oom <= 0:
            raise ValueError(f"--max-tokens-to-oom must be positive, got {args.max_tokens_to_oom}")
        from megatron.inference.server import Dispatcher, TextGenerationService, follow
        from megatron.inference.setup import finish_generation, setup_generation

        leader = int(os.environ.get("RANK", "0")) == 0
        http, holder = _listen(args) if leader else (None, None)
        setup = setup_generation(args)
        service = TextGenerationService(model=setup.model, tokenizer=setup.tokenizer,
                                        vocab_size=setup.vocab_size,
                                        max_length=setup.max_length,
                                        max_tokens=args.max_tokens_to_oom)
        if leader:
            if heartbeat_s is None:
                heartbeat_s = heartbeat_seconds(args.distributed_timeout_minutes)
            holder["service"] = service
            holder["dispatcher"] = Dispatcher(service, heartbeat_s=heartbeat_s)
            _serve_on_rank_0(http, holder["dispatcher"], args)
        else:
            follow(service)
        finish_generation()
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return serve(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
