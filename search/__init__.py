"""The engine, the command line, models and data, export and run records."""
