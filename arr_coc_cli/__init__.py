"""The ``arr-coc`` command line: the top floor, above the library, the serving layer and the W&B jobs.

It imports downward only; nothing imports it. ``main.py`` builds the parser from
``commands/`` (one module per sub-command, each light to import: the model library
loads only when a command runs).
"""
