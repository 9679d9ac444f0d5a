"""Training the relevance scorer against a frozen VLM, with no W&B.

``config`` (:class:`TrainConfig`, config files), ``data`` (per-sample cache of
what the VLM's processor and embeddings give), ``loss`` (relevance vs target
mask), ``recall`` (held-out recall@budget of every selection method), ``loop``
(:func:`train_scorer`). ``training_hooks.jobs.train_job`` wraps them in a W&B run.

``testbed`` trains the VQA testbed VLM itself; ``recipe`` reads a recipe of training
stages; ``audit`` is the event a training run raises as it starts.
"""
