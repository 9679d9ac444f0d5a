"""What the front service and the model runners share, neither importing the other.

- ``wire``: the pydantic types that cross between their processes (decoded pixels,
  runner items and outputs, a runner's input error).
- ``bentoml_helpers``: how a runner is declared to BentoML (resources, kept
  connections, batching, JSON media type) and how its process sets its torch threads.
- ``draining``: the SIGTERM drain every service process goes through.
- ``settings``: the server's ``ARR_COC_*`` settings, composed over the library's and tracking's.

Nothing here imports model code (``arr_coc.vlm.pipeline``, transformers' models): the front
process imports all of it and never loads a model.
"""
