"""`python -m vmem.bench softmax|topk|conv|step ...`: the same as `vmem bench ...`."""

from __future__ import annotations

import sys

from vmem.cli import main as vmem_main


def main(argv: list[str] | None = None) -> int:
    return vmem_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
