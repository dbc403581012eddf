"""``python -m d2``: run the ``d2`` command line (installed by ``d2-sdk[cli]``)."""

import sys


def main() -> int:
    """Run the CLI, or explain how to install it."""
    import importlib

    try:
        cli_main = importlib.import_module("d2.cli").main
    except ImportError:
        sys.stderr.write('the d2 command line is not installed: pip install "d2-sdk[cli]"\n')
        return 2
    return int(cli_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
