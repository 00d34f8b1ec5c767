"""Allow ``python -m quarterdeck``, and ``python -I -S <this directory> hook ...``: the command
hook's lean start (no site-packages, no ``.pth`` files, no environment), with the directory's
parent, not the directory itself, on the path."""

import sys

if not __package__:  # run as a directory, not with -m
    import os

    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from quarterdeck.cli import main

raise SystemExit(main())
