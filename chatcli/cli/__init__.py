"""The command line: thin Typer wiring, one module per command group."""
