"""`python -m vmem.bench softmax|topk|conv|step ...`: the same as `vmem bench ...`
(one-line errors, exit code 2 without a GPU), usable before the CLI wires it in."""

from __future__ import annotations

import sys

from vmem.bench import add_bench_parser, run_bench
from vmem.cli import EXIT_USAGE, _Parser
from vmem.errors import VmemError


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="vmem")
    add_bench_parser(parser.add_subparsers(dest="command", required=True,
                                           parser_class=_Parser))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_bench(args)
    except VmemError as exc:
        print(f"vmem bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
