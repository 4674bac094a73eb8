"""One module per ``ctsgan`` subcommand; each exposes ``register(subparsers)``."""
