"""Tracking of the service: one W&B run per (deployment, variant, worker), fed off the request path."""
