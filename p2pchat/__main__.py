"""Run p2pchat as ``python -m p2pchat`` (the same as the ``p2pchat`` command)."""

from p2pchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
