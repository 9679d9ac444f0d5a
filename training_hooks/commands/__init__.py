"""CLI sub-commands that need W&B, registered by ``arr_coc.cli``.

Each module only builds its argparse parser at import; the job code (and wandb)
is imported inside the command function, so ``arr-coc --help`` and the other
sub-commands never load wandb.
"""
