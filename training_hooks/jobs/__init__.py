"""Jobs that finish, each a W&B run: scorer training, testbed training, evaluation, the quality table (and Launch)."""
