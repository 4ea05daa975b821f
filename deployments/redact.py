"""Exception text made fit for a client: a job's `error.message` is read by whoever holds its key, so it says
what failed without the internals an attacker maps a deployment with (addresses, file paths, pids, Ray ids,
tracebacks)."""

from __future__ import annotations

import ipaddress
import re

MAX_CHARS = 500
# an absolute path: a `/` not inside a URL (after `:` or `/`) nor a word (`a/b`), with at least one segment
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+~-]+/)*[\w.@+~-]+/?")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?\]?(?::\d{1,5})?")
# Ray's `(pid=123, ip=10.0.0.1, actor_id=..., repr=...)` and the like
_IDS = re.compile(r"\b(?:pid|ip|actor_id|node_id|worker_id|task_id|job_id|replica_id|repr|address)"
                  r"\s*[=:]\s*[^\s,)]+", re.IGNORECASE)
_HEX_ID = re.compile(r"\b[0-9a-f]{24,}\b")  # Ray's actor, node and object ids (ours are prefixed: video_<hex>)


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    candidate = text.lstrip("[").split("]")[0].split("%")[0]
    if not re.search(r"[0-9A-Fa-f]", candidate):  # `ray::Replica` holds a `::`, which is also an address
        return text
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return text
    return "<address>"


def scrub(text: str) -> str:
    """The first line of `text`, with paths, addresses and process or actor ids replaced, at most 500 chars."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = _IDS.sub("", first)
    first = _PATH.sub("<path>", first)
    first = _IPV6.sub(_ipv6, first)
    first = _IPV4.sub("<address>", first)
    first = _HEX_ID.sub("<id>", first)
    return re.sub(r"\s+\((?:\s*,)*\s*\)", "", first).strip()[:MAX_CHARS]  # what is left of `(pid=.., ip=..)`
