"""`python -m search.export RUN_DIR`: see `search.export.command`."""
from search.export.command import main

raise SystemExit(main())
