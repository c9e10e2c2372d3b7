"""`python -m adadiff.policy inspect FILE` and `python -m adadiff.policy init --out FILE ...`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PolicyFileError
from .describe import describe, printable
from .fileformat import save_policy
from .network import PAPER_OPTIONS, PolicyConfig, init_policy


def _parse_options(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"step options must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adadiff.policy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print a policy file's metadata and size")
    inspect.add_argument("file", type=Path)
    init = commands.add_parser("init", help="write an untrained, randomly initialised policy")
    init.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    init.add_argument("--token-dim", type=int, required=True, help="width of the host's token states (768 SD1.x)")
    init.add_argument("--pooled-dim", type=int, default=0, help="width of the pooled vector (1280 SDXL; 0 = none)")
    init.add_argument("--options", type=_parse_options, default=PAPER_OPTIONS, help="comma-separated step options")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed")
    init.add_argument("--model-family", default="unknown", help="recorded in the file, e.g. sd15 or sdxl")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            print(describe(args.file))
            return 0
        if args.out.exists() and not args.force:
            print(f"error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
            return 2
        config = PolicyConfig(options=args.options, token_dim=args.token_dim, pooled_dim=args.pooled_dim)
        policy = init_policy(config, args.seed, info={"model_family": args.model_family, "summary": {"trained": False}})
        print(f"wrote untrained policy {save_policy(policy, args.out)}")
        return 0
    except (PolicyFileError, ValueError) as error:
        print(f"error: {printable(error, limit=2000)}", file=sys.stderr)
        return 2
    except OSError as error:  # init: a folder that cannot be made or written
        print(f"error: cannot write {args.out} ({error.strerror}); pick another --out", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
