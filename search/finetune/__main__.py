"""`python -m search.finetune RUN_DIR`: see `search.finetune.command`."""
from search.finetune.command import main

raise SystemExit(main())
