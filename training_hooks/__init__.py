"""W&B around ARR-COC: inference tracking of the service, and reading runs back.

Modules are imported one by one on purpose (nothing here imports wandb):
``tracker`` (the serving worker's run, off the request path; it imports wandb
only in its owner thread), ``serve_events`` (what request events become),
``runfile`` (reader of offline ``.wandb`` run files), ``jobrun`` (mode, Launch
overrides and start of a job's run), ``train_job`` and ``eval_job`` (the
``train-scorer`` and ``eval`` jobs), ``compare`` and ``plots`` (variants x
metrics from runs). Their command-line parsers live in ``arr_coc_cli``.
"""
