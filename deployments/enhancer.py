"""PromptEnhancer: a causal LM rewriting prompts (`pipelines/enhance.py`), its own deployment on a GPU fraction or a
CPU, composed by handle: the flow runner asks it before the generate stage, within the job's timeout."""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from pipelines.enhance import Kind, load_enhancer
from pipelines.reading import Reading

log = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=4)
class PromptEnhancer:
    def __init__(self, model: str, max_new_tokens: int, max_chars: int, device: str | None = None) -> None:
        started = time.perf_counter()
        self._enhancer = load_enhancer(model, device)
        self._max_new_tokens = max_new_tokens
        self._max_chars = max_chars
        log.info("prompt enhancer %s loaded in %.1f s", model, time.perf_counter() - started)

    async def enhance(self, prompt: str, kind: Kind, seed: int) -> tuple[str, str]:
        """(the rewritten prompt, cut to the service's prompt limit; the model's name). Generation holds a lock, so
        concurrent calls queue here rather than on the GPU."""
        text = await asyncio.to_thread(self._enhancer.enhance, prompt, kind, seed, self._max_new_tokens)
        return text[: self._max_chars].strip(), self._enhancer.name

    async def read_intent(self, query: str, max_input_tokens: int, max_new_tokens: int, max_time: float) -> Reading:
        """The model's reading of a query in words, as JSON text (`serve_app/intent.py` parses and checks it). The
        caller's bounds hold here too, so a reading it gave up on does not keep this replica busy for long."""
        return await asyncio.to_thread(self._enhancer.read, query, max_input_tokens, max_new_tokens, max_time)
