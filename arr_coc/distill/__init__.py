"""Scorers taught by the VLM itself: teacher maps (attention, attribution), their shards, and the pairs they
are computed on. ``training_hooks.jobs.distill_job`` runs it as ``arr-coc distill-scorer``."""
