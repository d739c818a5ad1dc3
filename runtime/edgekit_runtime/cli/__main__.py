"""`python -m edgekit_runtime.cli`: the same as `edgekit-run`."""

from .main import main

raise SystemExit(main())
