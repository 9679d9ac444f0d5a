"""BentoML services that each own one model: the relevance scorer and the VLM.

``RelevanceRunner`` and ``VLMRunner`` are composed by the front service
(``service.py``) through ``bentoml.depends``; each has its own workers, resources
and adaptive batching from :mod:`serving.settings`. What they share with the front
(wire types, BentoML helpers, the drain) is in :mod:`serving`.
"""
