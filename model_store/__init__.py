"""Where the runners' models come from: settings -> a checkpoint (``sources``), and the BentoML model store (``store``)."""
