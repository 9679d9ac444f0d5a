"""Sub-commands of the ``arr-coc`` CLI, one module each."""
