"""How a model runner is declared to BentoML, and how its process shares the CPU.

``resources`` and ``kept_connections`` go to ``bentoml.service``, ``batching`` to
``bentoml.api``; ``json_media_type`` runs on the declared service, ``runner_threads``
in the runner's ``__init__`` (its own process).
"""

from __future__ import annotations


def resources(gpu_share: float) -> dict:
    return {"gpu": gpu_share} if gpu_share > 0 else {"cpu": "1"}


def kept_connections() -> dict:
    """``bentoml.service`` ``runner_connection`` config: the front keeps its client session to this runner.

    BentoML replaces a dependency's client session every 100 requests or 300 s (to find
    new replicas behind a DNS name) and awaits the old session's close inside the call
    that triggers the swap; under load that call sometimes never reached the runner
    (streams stalled until the front's idle timeout: 17 in 90 s at concurrency 16 here;
    once, a unary call waited out the 300 s timeout). The runners of this bundle live
    beside the front, on one address that never moves, so the session is kept.
    """
    return {"max_requests": 2**62, "max_age": float(2**62)}


def runner_threads(threads: int) -> None:
    """Set this runner's torch CPU threads: ``threads``, or with 0 the cores split between the two runners.

    Two model processes that each start a thread per core fight over every core; on a
    CPU host that cost the served pipeline about 15 % of its throughput.
    """
    import os

    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))


def json_media_type(service) -> None:
    """Declare the JSON media type of ``service``'s outputs up front.

    BentoML otherwise derives a list output's media type from its JSON schema, built
    anew for every response (a fifth of the relevance runner's CPU time here).
    """
    for api in service.apis.values():
        api.output_spec.media_type = api.output_spec.media_type or "application/json"


def batching(max_batch_size: int, max_latency_ms: int) -> dict:
    """``bentoml.api`` arguments: adaptive batching, or none when ``max_batch_size`` is 1.

    Without batching the API still takes a list (of one item), so callers do not change.
    """
    if max_batch_size <= 1:
        return {"batchable": False}
    return {"batchable": True, "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}
