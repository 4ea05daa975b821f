"""An LLM's reading of a query in words, as the prompt enhancer (`enhance.py`) answers it: a plain record with no
torch in it, so the HTTP layer (`serve_app/query.py`) takes it without loading a model's libraries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    """`INTENT_SYSTEM`'s JSON text and the bound that cut it short, in words ("" when none did): a reading cut short
    is not used, and the keyword rules answer instead."""

    text: str
    query_tokens: int
    new_tokens: int = 0
    bound: str = ""
