"""`python -m search.export RUN_DIR`: see `search.export.command`."""
from search.cli import command_main

raise SystemExit(command_main("search.export.command"))
