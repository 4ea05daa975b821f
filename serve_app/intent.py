"""A request in words: is it asking for a video or an image, of what, how long. Keyword rules, deterministic, so a
query always gets the same answer; the inputs a request carries (images, videos) still decide the task, as for
`POST /v1/videos`, and words only settle what inputs cannot: image or video, the prompt, the duration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ValidationError

Modality = Literal["video", "image"]

_VIDEO = r"videos?|clips?|animations?|animate|movies?|films?|footage|timelapse|time-lapse|gifs?|shots?|scenes?"
_IMAGE = r"images?|pictures?|photos?|photographs?|stills?|posters?|illustrations?|drawings?|paintings?|portraits?|" \
         r"wallpapers?|logos?|renders?|sketch(?:es)?|draw|paint"
_ASK = r"generate|create|make|render|produce|show|give|draw|paint|animate|film|shoot|turn|visuali[sz]e|design|want|" \
       r"need|imagine"
_INTO = re.compile(rf"^.*?\binto\s+(?:an?\s+)?({_VIDEO}|{_IMAGE})\b\s*(?:of|showing|with|where|in which|that)?\s*",
                   re.IGNORECASE)
_QUESTION = re.compile(r"^\s*(?:what|who|why|how|when|where|which|is|are|do|does|did|can|could|should|will|would|"
                       r"hi|hello|hey|thanks|thank you)\b|\?\s*$", re.IGNORECASE)
# a number starts after a non-digit: else a long run of digits is tried from each of its digits (quadratic)
_SECONDS = re.compile(r"(?<!\d)(\d+(?:\.\d+)?)\s*(?:-\s*)?(s|sec|secs|seconds?|min|mins|minutes?)\b", re.IGNORECASE)
_LEAD = re.compile(
    rf"^\s*(?:please\s+|can you\s+|could you\s+|i (?:want|need|would like)\s+(?:you to\s+)?)?"
    rf"(?:(?:{_ASK})\s+(?:me\s+)?)?(?:an?\s+|the\s+|some\s+)?(?:\d+(?:\.\d+)?\s*-?\s*(?:s|sec|seconds?)\s+(?:long\s+)?)?"
    rf"(?:(?:short|long|quick|cinematic|realistic)\s+)*(?:{_VIDEO}|{_IMAGE})\s*(?:of|showing|with|where|that shows|"
    rf"in which|about)?\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Intent:
    """What the words ask for; `generate` False means they ask for no video or image, and `answer` says so."""

    generate: bool
    modality: Modality | None = None
    prompt: str = ""
    seconds: float | None = None
    answer: str = ""
    reason: str = ""


def read_intent(query: str) -> Intent:
    """The intent of `query` by keyword rules."""
    text = " ".join(query.split())
    video = re.search(rf"\b(?:{_VIDEO})\b", text, re.IGNORECASE)
    image = re.search(rf"\b(?:{_IMAGE})\b", text, re.IGNORECASE)
    asks = re.search(rf"\b(?:{_ASK})\b", text, re.IGNORECASE)
    if not (video or image or asks) and _QUESTION.search(text):
        return Intent(generate=False, answer="This asks for no video or image: wan-serve generates videos and "
                                             "images. Describe what to show, e.g. 'a video of a cat in a garden'.",
                      reason="a question or a greeting, and no word asks for a video or an image")
    modality: Modality | None = None
    into = _INTO.match(text)
    if into:  # "turn this photo into a video": the target is what is asked for
        modality = "image" if re.fullmatch(_IMAGE, into.group(1), re.IGNORECASE) else "video"
        reason = f"'into ... {into.group(1)}' names what to make"
    elif video and not image:
        modality, reason = "video", f"'{video.group(0)}' asks for a video"
    elif image and not video:
        modality, reason = "image", f"'{image.group(0)}' asks for an image"
    elif video and image:  # "a video of this image": the first one named is what is asked for
        first = min(video, image, key=lambda m: m.start())
        modality = "video" if first is video else "image"
        reason = f"'{first.group(0)}' is named first"
    else:
        reason = "a description with no kind of media named: the inputs decide, else a video"
    seconds = None
    if modality != "image" and (match := _SECONDS.search(text)):
        seconds = float(match.group(1)) * (60 if match.group(2).lower().startswith("min") else 1)
    prompt = (_INTO.sub("", text, count=1) if into else _LEAD.sub("", text, count=1)).strip(" .!?") or text
    return Intent(generate=True, modality=modality, prompt=prompt[0].upper() + prompt[1:], seconds=seconds,
                  reason=reason)


class _Reading(BaseModel):
    generate: bool
    modality: Modality | None = None
    seconds: float | None = None
    prompt: str = ""


def parse_reading(text: str, source: str) -> Intent | None:
    """An LLM's reading of a query (`INTENT_SYSTEM`'s JSON object), checked; None when it is not one."""
    found = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        reading = _Reading.model_validate(json.loads(found.group(0))) if found else None
    except (ValueError, ValidationError):
        return None
    if reading is None or (reading.generate and not reading.prompt.strip()):
        return None
    seconds = reading.seconds if reading.seconds is None or 0 < reading.seconds <= 600 else None
    if not reading.generate:
        return Intent(generate=False, answer="This asks for no video or image: wan-serve generates videos and images.",
                      reason=f"{source} read no request for a video or an image")
    return Intent(generate=True, modality=reading.modality, prompt=reading.prompt.strip(), seconds=seconds,
                  reason=f"{source} read it as {reading.modality or 'a generation'}")
