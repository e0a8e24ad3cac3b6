"""Command implementations of the `worldbagel` CLI: one module per command, each with `run(cfg)`."""
