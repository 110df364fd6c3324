"""The ``edgeskd`` console script. Light on purpose: a Ctrl-C while the app's libraries are still
being imported (typer, rich, numpy: about half a second) ends like any other interruption, one
line and exit 130, instead of a KeyboardInterrupt traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from edgeskd.cli.app import main as app_main

        app_main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
