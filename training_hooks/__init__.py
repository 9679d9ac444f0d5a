"""W&B around ARR-COC, by idea; modules are imported one by one (nothing here imports wandb at import).

- ``tracking/``: the service's runs. ``tracker`` (a worker's run, fed off the request
  path; wandb only in its owner thread), ``serve_events`` (what request events
  become), ``service_tracking`` (one bounded tracker per registered variant),
  ``settings`` (the ``ARR_COC_WANDB*`` settings, read by the service and the jobs).
- ``jobs/``: runs that finish. ``jobrun`` (mode, Launch overrides, start and
  finish of a job's run), ``train_job``, ``train_testbed_job``, ``eval_job``,
  ``quality_job``.
- ``comparison/``: reading runs back. ``runfile`` (offline ``.wandb`` files),
  ``compare`` (variants x metrics), ``plots``.

Their command-line parsers live in ``arr_coc_cli``.
"""
