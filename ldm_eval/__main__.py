"""``python -m ldm_eval``: the LDM Lab command line."""
from ldm_eval.cli import main

raise SystemExit(main())
