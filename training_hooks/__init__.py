"""W&B around ARR-COC: inference tracking of the service, and reading runs back.

Modules are imported one by one on purpose (nothing here imports wandb):
``tracker`` (the serving worker's run, off the request path; it imports wandb
only in its owner thread), ``serve_events`` (what request events become),
``runfile`` (reader of offline ``.wandb`` run files).
"""
