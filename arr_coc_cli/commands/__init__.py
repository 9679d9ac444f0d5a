"""One module per ``arr-coc`` sub-command; each exposes ``register(subparsers)``, which sets ``func(args) -> int``."""
