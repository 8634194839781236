"""Test-only entry point: many refused command lines in one process per rank.

    python bad_input_entry.py cases.json

`cases.json` is a list of argument lists. Each is given to `pretrain_gpt.main` in turn (the
real program, with this rank's WORLD_SIZE), and one line per case is printed on stdout:

    bad-input-result <json: {"case": i, "code": exit code, "stderr": what main wrote}>

Only for inputs refused before any process group exists (build_config and argparse), where
nothing is left behind between cases; it saves an `import torch` + `import deepspeed` per case
and rank. Used by test_bad_inputs.py.
"""
import io
import json
import sys
from pathlib import Path

MARKER = "bad-input-result "


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    sys.argv[0] = str(root / "pretrain_gpt.py")  # argparse names the program after it
    import pretrain_gpt

    cases = json.loads(Path(sys.argv[1]).read_text())
    for index, argv in enumerate(cases):
        captured, real_stderr = io.StringIO(), sys.stderr
        sys.stderr = captured
        try:
            code = pretrain_gpt.main(argv)
        except SystemExit as stop:  # argparse: exit code 2 after its message
            code = stop.code
        finally:
            sys.stderr = real_stderr
        print(MARKER + json.dumps({"case": index, "code": code, "stderr": captured.getvalue()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
