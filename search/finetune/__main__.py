"""`python -m search.finetune RUN_DIR`: see `search.finetune.command`."""
from search.cli import command_main

raise SystemExit(command_main("search.finetune.command"))
