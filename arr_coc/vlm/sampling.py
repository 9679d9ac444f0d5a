"""Choosing each next token, and turning token ids into answer text.

Each request of a batch owns a :class:`RowDecoder`: its own settings and its own
seeded ``torch.Generator`` on the model's device, so a sampled answer depends only
on its request (and the device), never on its batch mates. Tokens are chosen on the
device; the batch's choices reach the host once per step. Stop strings are matched on the decoded text; the
answer ends before the first match and the ids that produced the stop string
are dropped.
"""

from __future__ import annotations

import torch

from arr_coc.vlm.types import GenerationParams

_INCOMPLETE = "\ufffd"  # what a byte-level decoder shows for a cut UTF-8 sequence


def sample_token(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> torch.Tensor:
    """A token id drawn from ``logits [V]`` with temperature and top-p, as a 0-d tensor on the logits' device.

    ``generator`` lives on that device, so drawing needs no host round trip.
    """
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= params.top_p] = 0.0  # the top token always survives (before == 0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]


class RowDecoder:
    """Generation state of one request: ids so far, stop conditions, text so far.

    ``push(token)`` returns whether the row is finished. End-of-sequence ids are
    not part of the answer; neither is a stop string or anything after it. With
    ``keep_first_logprobs`` the decode loop stores the first step's log-softmax ``[V]``
    (float32, CPU) in ``first_logprobs``.
    """

    def __init__(
        self,
        tokenizer,
        params: GenerationParams,
        eos_token_ids: tuple[int, ...],
        device: str | torch.device = "cpu",
        *,
        keep_first_logprobs: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.keep_first_logprobs = keep_first_logprobs
        self.first_logprobs: torch.Tensor | None = None
        self.params = params
        self.eos = set(eos_token_ids)
        self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.ids: list[int] = []
        self.finished = False
        self.finish_reason: str | None = None
        self._cut: int | None = None  # character offset of the first stop string
        self._max_stop = max((len(s) for s in params.stop), default=0)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Draw this row's next token from ``logits [V]`` (0-d tensor, on the logits' device)."""
        return sample_token(logits, self.params, self.generator)

    def push(self, token: int) -> bool:
        if self.finished:
            return True
        if token in self.eos:
            self.finished, self.finish_reason = True, "eos"
            return True
        self.ids.append(token)
        if self.params.stop:
            text = self._decode(self.ids)
            window = text[-(self._max_stop + 64) :]
            hits = [window.find(s) for s in self.params.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                self._cut = len(text) - len(window) + min(hits)
                self.finished, self.finish_reason = True, "stop"
                return True
        if len(self.ids) >= self.params.max_new_tokens:
            self.finished, self.finish_reason = True, "length"
        return self.finished

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @property
    def text(self) -> str:
        """The answer so far, cut before a stop string."""
        text = self._decode(self.ids)
        return text if self._cut is None else text[: self._cut]

    @property
    def answer_ids(self) -> list[int]:
        """The longest prefix of the generated ids whose text lies within the answer."""
        if self._cut is None:
            return list(self.ids)
        answer = self.text
        count = len(self.ids)
        while count > 0 and not answer.startswith(self._decode(self.ids[:count])):
            count -= 1
        return self.ids[:count]

    def stable_text(self) -> str:
        """The part of the answer that can no longer change: for streaming.

        Holds back a trailing incomplete character and, until the row ends, any
        tail that could still grow into a stop string.
        """
        text = self.text
        if self.finished:
            return text
        if text.endswith(_INCOMPLETE):
            text = text.rstrip(_INCOMPLETE)
        for stop in self.params.stop:
            for length in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:length]):
                    text = text[:-length]
                    break
        return text
