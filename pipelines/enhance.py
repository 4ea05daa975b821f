"""Prompt enhancement: a causal LM with its chat template rewrites a short prompt into the detailed description
Wan was trained on, as Wan's own prompt extender does with Qwen2.5 instruct models.

The system prompts are ours, one per kind of job: text-to-video, image-to-video (the words describe what moves in a
given first frame), and image-to-video with no words. The model is a transformers checkpoint (a local directory or a
hub id) or the tiny twin: a Qwen2 with random weights and a tokenizer made in code, which writes noise, as the video
twins draw it.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from pipelines.reading import Reading

Kind = Literal["t2v", "i2v", "i2v_empty"]
TINY = "tiny"
_SHARED = (
    "Rewrite the user's request as one paragraph of 80 to 120 words in English that a video model will follow. "
    "Keep every subject, action, count, colour and style the user gave, and never contradict it. Add what a camera "
    "would see: the setting, the light, textures, the subject's motion and expression, and the camera's framing and "
    "movement. Describe one continuous shot of about five seconds. Write only the paragraph: no title, no list, "
    "no quotes, no preamble."
)
SYSTEM_PROMPTS: dict[Kind, str] = {
    "t2v": "You write prompts for a text-to-video model. " + _SHARED,
    "i2v": "You write prompts for an image-to-video model: the first frame is given and fixed, so describe what "
           "moves and how the camera moves from it, not a new scene. " + _SHARED,
    "i2v_empty": "You write prompts for an image-to-video model whose user gave a first frame and no words. Write "
                 "one paragraph of 60 to 80 words describing natural, gentle motion of the subject and a slow camera "
                 "movement that suit a still photograph; invent no new subjects. Write only the paragraph.",
}
INTENT_SYSTEM = (
    "You read requests sent to a video generation service. Answer with one JSON object and nothing else: "
    '{"generate": true or false, "modality": "video" or "image" or null, "seconds": a number or null, '
    '"prompt": "what to show, without the words of the request itself"}. generate is false when the request asks '
    "for no video or image (a question, a greeting, anything else)."
)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class Enhancer:
    """A loaded enhancer: not thread-safe (one `generate` at a time), so calls take the lock."""

    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    lock: threading.Lock

    def enhance(self, prompt: str, kind: Kind, seed: int, max_new_tokens: int) -> str:
        """The rewritten prompt (stripped; empty when the model wrote nothing usable). Same seed, same words."""
        return self.chat(SYSTEM_PROMPTS[kind], prompt, seed, max_new_tokens)

    def read(self, query: str, max_input_tokens: int, max_new_tokens: int, max_time: float) -> Reading:
        """`INTENT_SYSTEM`'s reading of `query`, within bounds so that a long query cannot hold the model: a query
        over `max_input_tokens` is not read at all (a reading of its start could miss what the rest asks, so it
        would not be used), and generation stops at `max_new_tokens` or after `max_time` seconds."""
        tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if tokens > max_input_tokens:
            return Reading("", tokens, bound=f"the query is {tokens:,} tokens, over its bound of {max_input_tokens:,}")
        started = time.monotonic()
        text, new_tokens = self._generate(INTENT_SYSTEM, query, 0, max_new_tokens, max_time)
        if time.monotonic() - started >= max_time:
            return Reading(text, tokens, new_tokens, f"it reached its bound of {max_time:g} s")
        if new_tokens >= max_new_tokens:
            return Reading(text, tokens, new_tokens, f"it reached its bound of {max_new_tokens} new tokens")
        return Reading(text, tokens, new_tokens)

    def chat(self, system: str, user: str, seed: int, max_new_tokens: int) -> str:
        """The model's answer to `user` under `system`, printable and on one line."""
        return self._generate(system, user, seed, max_new_tokens, None)[0]

    def _generate(self, system: str, user: str, seed: int, max_new_tokens: int,
                  max_time: float | None) -> tuple[str, int]:
        """(the answer, how many tokens the model wrote); it stops after `max_time` seconds of generation if set."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.model.device)
        with self.lock, torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, max_time=max_time, do_sample=True,
                                      temperature=0.7, top_p=0.9, pad_token_id=self.tokenizer.pad_token_id)
        written = out[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(written, skip_special_tokens=True)
        printable = "".join(c for c in text if not unicodedata.category(c).startswith("C") or c.isspace())
        return " ".join(printable.split()), len(written)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with ChatML's special tokens and template: any text encodes, nothing is downloaded."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_enhancer(seed: int = 0) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The tiny twin: Qwen2's architecture, two narrow layers, seeded random weights."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return Qwen2ForCausalLM(config).eval(), tokenizer


def load_enhancer(source: str, device: str | None = None) -> Enhancer:
    """`source`: "tiny", a local directory or a hub id of a causal LM with a chat template (e.g. a Qwen2.5 instruct)."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if source == TINY:
        model, tokenizer = build_tiny_enhancer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    return Enhancer(name=source, model=model.to(target), tokenizer=tokenizer, lock=threading.Lock())
