"""The `vmem` command's entry point. It imports the command line (and with it
NumPy and the runtime) inside its own guard, so that a Ctrl-C while modules
still import exits 130 quietly, as an interrupt later in a run does."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


def main() -> int:
    try:
        from vmem.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
