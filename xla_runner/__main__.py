"""``python -m xla_runner infer|train|bench ...``: see each command's ``--help``."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"infer": "xla_runner.infer", "train": "xla_runner.train", "bench": "xla_runner.bench"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m xla_runner {{{','.join(COMMANDS)}}} [--help] ...", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
