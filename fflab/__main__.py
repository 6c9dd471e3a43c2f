"""The ``fflab`` console script and ``python -m fflab``: Ctrl-C is held from the first line on.

A Ctrl-C that arrives while Python is still importing the command line would be raised inside the import
machinery and end the process with a traceback. So the program records it here before anything else is
imported, and :func:`fflab.cli.main` honours it (exit status 130, one line) as soon as its own handler is in
place.
"""

import signal
import sys

_early: list[int] = []


def _record(signum, frame):
    _early.append(signum)


def main() -> int:
    """Run the command line with the arguments of this process; returns the exit status."""
    signal.signal(signal.SIGINT, _record)
    from fflab import cli

    return cli.main(interrupted=lambda: bool(_early))


if __name__ == "__main__":
    sys.exit(main())
