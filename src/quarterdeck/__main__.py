"""Allow ``python -m quarterdeck``."""

from quarterdeck.cli import main

raise SystemExit(main())
