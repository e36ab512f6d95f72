"""chatcli: a command-line chat tool for local language models."""

__version__ = "0.1.0"
