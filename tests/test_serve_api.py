"""nst serve's HTTP API against a real server process on 127.0.0.1 (tests/serving.py): one server for the module,
with a token file of three clients and two embedded Dask workers; small images (96 x 72 px) and small budgets.
What is checked comes from outside the code under test: the images' bytes and SHA-256 as uploaded, PIL's decoding
of what comes back, the evaluation counts the events carry, the HTTP statuses the issue names."""
from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("distributed")

import serving  # noqa: E402  (tests/serving.py)
from nst_core.outputs.recipe import read_recipe  # noqa: E402

TOKENS = {"alice": "alice-" + "a1" * 16, "bob": "bob-" + "b2" * 16, "carol": "carol-" + "c3" * 16}
SIZE = 72  # the smaller edge of the jobs' outputs (content 96 x 72)


# ---------------------------------------------------------------------------------------------- fixtures


def _jpeg(path, width, height) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(buffer, "JPEG",
                                                                                           quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(images_dir):
    return {"content": _jpeg(images_dir / "tubingen.jpg", 96, 72),
            "style": _jpeg(images_dir / "starry_night.jpg", 96, 72)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, env):
    tmp = tmp_path_factory.mktemp("serve-api")
    tokens = tmp / "tokens.txt"
    tokens.write_text("# test clients\n" + "".join(f"{name} {token}\n" for name, token in TOKENS.items()))
    s = serving.start_server(tmp, "--workers", "2", "--token-file", tokens, "--max-queued", "3", env=env,
                             token=TOKENS["alice"])
    yield s
    status = serving.stop_server(s)
    assert status == 0, s["stderr"].read_text()[-2000:]


def _problem(r: httpx.Response, status: int) -> str:
    """The one-line detail of a problem document answer with ``status``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    assert body["detail"] and "\n" not in body["detail"], body
    return body["detail"]


def _events(url, job_id, token, last_id=None, timeout=120) -> list:
    """[(event, id, data), ...] of a job's SSE stream, read until it ends."""
    headers = dict(serving.auth(token), **({"Last-Event-ID": str(last_id)} if last_id is not None else {}))
    out, fields = [], {}
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "event" in fields:
                    out.append((fields["event"], int(fields["id"]), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
    return out


# ---------------------------------------------------------------------------------------------- round trip


def test_round_trip_events_and_a_painted_result_with_its_recipe(server, images, tmp_path):
    url, token = server["url"], TOKENS["alice"]
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 240}, token=token)
    assert r.status_code == 202, r.text
    job = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", job["id"]) and job["status"] in ("queued", "running")
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and int(r.headers["retry-after"]) >= 1
    events = _events(url, job["id"], token)
    progress = [(i, d) for e, i, d in events if e == "progress" and d["status"] == "running"]
    counts = [d["progress"]["evaluations"] for _, d in progress]
    assert all(i == d["progress"]["evaluations"] for i, d in progress)  # the event id is the evaluation count
    assert len(set(counts)) >= 3 and counts == sorted(counts), counts
    assert [e for e, _, _ in events].count("status") == 1 and events[-1][0] == "status"
    final = events[-1][2]
    assert final["status"] == "succeeded" and final["progress"]["evaluations"] == 240, final

    r = httpx.get(f"{url}/v1/jobs/{job['id']}/result", headers=serving.auth(token), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["nst-partial"] == "false"
    picture = Image.open(io.BytesIO(r.content))
    assert picture.size == (96, 72)
    (tmp_path / "result.png").write_bytes(r.content)
    recipe_job, provenance = read_recipe(tmp_path / "result.png")
    assert recipe_job.size == SIZE and recipe_job.iterations == 240
    sha = {i["role"]: i["sha256"] for i in provenance["inputs"]}
    assert sha == {"content": hashlib.sha256(images["content"]).hexdigest(),
                   "style": hashlib.sha256(images["style"]).hexdigest()}
    # painted: far from the photo, and its colours moved towards the painting's
    got = np.asarray(picture.convert("RGB"), dtype=np.float64)
    photo = np.asarray(Image.open(io.BytesIO(images["content"])).convert("RGB"), dtype=np.float64)
    paint = np.asarray(Image.open(io.BytesIO(images["style"])).convert("RGB"), dtype=np.float64)
    assert np.abs(got - photo).mean() > 10.0
    mean = lambda a: a.reshape(-1, 3).mean(axis=0)  # noqa: E731
    assert np.abs(mean(got) - mean(paint)).sum() < np.abs(mean(photo) - mean(paint)).sum()

    r = httpx.get(f"{url}/v1/jobs/{job['id']}/preview", headers=serving.auth(token), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256
