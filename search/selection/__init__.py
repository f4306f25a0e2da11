"""After the search: what is exported is picked here. Filling the budget, the finalists (a short fine-tune of
the best few, scored again) and the final latency check; a new selection stage is a module here."""
