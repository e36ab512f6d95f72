"""All terminal I/O: rich on a TTY, plain text otherwise."""
