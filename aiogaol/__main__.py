"""``python -m aiogaol`` and the ``aiogaol`` console script; the commands live in ``_cli``."""

from __future__ import annotations

import sys

from ._cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
