"""``python -m fulcrum``: the same as the ``fulcrum`` command."""

from fulcrum.cli import main

raise SystemExit(main())
