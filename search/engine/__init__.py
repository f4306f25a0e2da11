"""The engine: the search loop and its records, the run's configuration, the pipeline that assembles a run.

- `loop`: ask -> price -> reject or score -> tell, journaled per candidate, resumable (`Engine`).
- `tune`: the same loop through Ray Tune (`--backend tune`).
- `records`: a run directory and what goes in it (run.json, journal.jsonl, trials.csv, best.json).
- `config`: `SearchConfig`, everything a run is; `budget`: `--budget` strings; `versions`: what a run ran with.
- `pipeline`: from a `SearchConfig` (and the user's own objects) to a searched, exported subnet; `prune()`.
"""
