"""``python -m ldm_eval``: the LDM Lab command line."""
from .cli import main

raise SystemExit(main())
