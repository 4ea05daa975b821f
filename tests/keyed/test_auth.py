"""API keys: a 401 without one, every record its key's own (another key's id is a 404 and never listed), an
admin key that sees all, and per-key admission; the key check itself in-process."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from httpx_sse import connect_sse
from openai import OpenAI

from serve_app.auth import Keys
from serve_app.errors import APIError
from tests.media import png
from tests.support.app import ADMIN, KEY_A, KEY_B, KEYED_APP, as_key
from tests.support.cli import wan
from tests.support.jobs import ENDED, ended, wait_for


def test_keys_from_config_digests_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAN_KEYS", " sk-env-1 ,sk-env-2,")
    keys = Keys.resolve(["sk-plain", "sha256:" + hashlib.sha256(b"sk-hashed").hexdigest()], [ADMIN], "WAN_KEYS")
    callers = {k: keys.caller(f"Bearer {k}") for k in ("sk-plain", "sk-hashed", "sk-env-1", "sk-env-2", ADMIN)}
    assert len({c.key_id for c in callers.values()}) == 5 and [c.admin for c in callers.values()].count(True) == 1
    assert all(len(c.key_id or "") == 16 for c in callers.values()), "an id, never the key"
    for header in (None, "", "Bearer", "Basic c2stcGxhaW4=", "Bearer sk-wrong"):
        with pytest.raises(APIError) as refused:
            keys.caller(header)
        assert refused.value.status == 401 and refused.value.headers == {"WWW-Authenticate": "Bearer"}
    assert Keys.resolve([], [], "WAN_NO_SUCH_VAR").caller(None).admin, "no keys: open, one anonymous admin"


def test_another_keys_or_unknown_job_has_no_events(keyed_url: str) -> None:
    with as_key(keyed_url, KEY_A) as alice, as_key(keyed_url, KEY_B) as bob:
        video = alice.post("/v1/videos", json={"prompt": "alice's", "num_frames": 5}).json()
        for caller, video_id in ((bob, video["id"]), (alice, "video_nope")):
            r = caller.get(f"/v1/videos/{video_id}/events")
            assert r.status_code == 404 and r.json()["error"]["param"] == "video_id", (video_id, r.text)
        # the same stream is there for the key that made the job, and it ends with the job's end
        with connect_sse(alice, "GET", f"/v1/videos/{video['id']}/events") as source:
            names = [event.event for event in source.iter_sse() if event.data]
        assert names[-1] == "video.completed", names


def test_without_a_valid_key_only_health_answers(keyed_url: str) -> None:
    with as_key(keyed_url, None) as anonymous, as_key(keyed_url, "sk-guess") as guesser:
        for client in (anonymous, guesser):
            for method, path in (("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", "/v1/models"),
                                 ("GET", "/v1/queue"), ("POST", "/v1/sessions"), ("GET", "/v1/videos/video_x"),
                                 ("GET", "/v1/videos/video_x/events")):
                r = client.request(method, path, json={"prompt": "x"})
                assert r.status_code == 401, (method, path, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"]["type"] == "authentication_error"
        assert anonymous.get("/health").json() == {"status": "ok"}


def test_another_key_s_records_are_not_there(keyed_url: str) -> None:
    with as_key(keyed_url, KEY_A) as alice, as_key(keyed_url, KEY_B) as bob, as_key(keyed_url, ADMIN) as admin:
        video = alice.post("/v1/videos", json={"prompt": "alice's", "num_frames": 5}).json()
        ended(alice, f"/v1/videos/{video['id']}")
        session = alice.post("/v1/sessions", json={"metadata": {"who": "alice"}}).json()
        upload = alice.post(f"/v1/sessions/{session['id']}/uploads", files={"file": ("a.png", png(), "image/png")})
        assert upload.status_code == 200, upload.text
        batch = alice.post("/v1/images/batches", json={"prompts": ["a"]}).json()
        ended(alice, f"/v1/images/batches/{batch['id']}")
        image_url = alice.post("/v1/images/generations", json={"prompt": "a", "response_format": "url"}).json()
        image_path = httpx.URL(image_url["data"][0]["url"]).path.removeprefix(f"/{KEYED_APP}")
        assert alice.get(image_path).status_code == 200

        vid, sid, bid = video["id"], session["id"], batch["id"]
        for method, path in (("GET", f"/v1/videos/{vid}"), ("GET", f"/v1/videos/{vid}/content"),
                             ("POST", f"/v1/videos/{vid}/cancel"), ("DELETE", f"/v1/videos/{vid}"),
                             ("GET", f"/v1/sessions/{sid}"), ("GET", f"/v1/images/batches/{bid}"),
                             ("GET", f"/v1/images/batches/{bid}/content"), ("DELETE", f"/v1/images/batches/{bid}"),
                             ("GET", image_path), ("DELETE", f"/v1/sessions/{sid}"),
                             ("DELETE", image_path.removesuffix("/content"))):
            assert bob.request(method, path).status_code == 404, (method, path)
        into = bob.post(f"/v1/sessions/{sid}/uploads", files={"file": ("b.png", png(), "image/png")})
        assert into.status_code == 404
        reuse = bob.post("/v1/videos", json={"prompt": "x", "session_id": sid, "video": upload.json()["id"]})
        assert reuse.status_code == 404 and reuse.json()["error"]["param"] == "session_id"
        assert vid not in [v["id"] for v in bob.get("/v1/videos", params={"limit": 100}).json()["data"]]

        assert vid in [v["id"] for v in admin.get("/v1/videos", params={"limit": 100}).json()["data"]]
        assert admin.get(f"/v1/sessions/{sid}").json()["uploads"][0]["id"] == upload.json()["id"]
        assert alice.get(f"/v1/videos/{vid}").json()["status"] == "completed", "untouched by bob's attempts"
        assert alice.get(f"/v1/sessions/{sid}").status_code == alice.get(image_path).status_code == 200


def test_one_key_cannot_take_every_slot(keyed_url: str) -> None:
    slow = {"prompt": "slow", "num_frames": 81, "num_inference_steps": 200}
    with as_key(keyed_url, KEY_A) as alice, as_key(keyed_url, KEY_B) as bob:
        first = alice.post("/v1/videos", json=slow).json()
        second = alice.post("/v1/videos", json=slow)
        assert second.status_code == 429 and second.headers["retry-after"] == "30"
        assert "API key" in second.json()["error"]["message"]
        other = bob.post("/v1/videos", json={"prompt": "bob's turn", "num_frames": 5})
        assert other.status_code == 200, "another key still gets in"
        alice.post(f"/v1/videos/{first['id']}/cancel")
        wait_for(alice, first["id"], ENDED)
        wait_for(bob, other.json()["id"], ENDED)


def test_the_openai_sdk_sends_its_key(keyed_url: str) -> None:
    client = OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY_A)
    video = client.videos.create(prompt="with a key", size="64x32", seconds="4", extra_body={"num_frames": 5})
    assert client.videos.retrieve(video.id).id == video.id
    client.videos.delete(video.id)


def test_the_cli_takes_its_key_from_the_environment_and_exits_3_without_one(keyed_url: str) -> None:
    assert wan(keyed_url, "list").returncode == 3
    assert wan(keyed_url, "list", key="sk-guess").returncode == 3
    assert wan(keyed_url, "list", key=KEY_A).returncode == 0
