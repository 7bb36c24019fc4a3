"""``python -m modelops.serving``: the same as ``python -m modelops serve``."""

from modelops.serving.app import main

raise SystemExit(main())
