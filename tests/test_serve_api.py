"""nst serve's HTTP API against a real server process on 127.0.0.1 (tests/serving.py): one server for the module,
with a token file of three clients and two embedded Dask workers; small images (96 x 72 px) and small budgets.
What is checked comes from outside the code under test: the images' bytes and SHA-256 as uploaded, PIL's decoding
of what comes back, the evaluation counts the events carry, the HTTP statuses the issue names."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import socket
import struct
import subprocess
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("distributed")

import serving  # noqa: E402  (tests/serving.py)
from nst_core.outputs.recipe import read_recipe  # noqa: E402
from nst_core.serve import uploads  # noqa: E402
from nst_core.serve.command import listen  # noqa: E402

TOKENS = {"alice": "alice-" + "a1" * 16, "bob": "bob-" + "b2" * 16, "carol": "carol-" + "c3" * 16}
SIZE = 72  # the smaller edge of the jobs' outputs (content 96 x 72)
ITERATIONS = 600  # the round trip's budget: about 4 s on two quiet cores (~9 s at load average 9), 8 progress events


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
    s = serving.start_server(tmp, "--workers", "2", "--token-file", tokens, "--max-queued", "3",
                             "--max-evaluations", "5000", env=env,
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


def _events(url, job_id, token, last_id=None, timeout=120, stop=None) -> list:
    """[(event, id, data), ...] of a job's SSE stream, read until it ends or ``stop(events)`` is true."""
    headers = dict(serving.auth(token), **({"Last-Event-ID": str(last_id)} if last_id is not None else {}))
    out, fields = [], {}
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "event" in fields:
                    out.append((fields["event"], int(fields["id"]), json.loads(fields["data"])))
                    if stop is not None and stop(out):
                        break
                fields = {}
            elif not line.startswith(":") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
    return out


# ---------------------------------------------------------------------------------------------- round trip


def test_round_trip_events_and_a_painted_result_with_its_recipe(server, images, tmp_path):
    url, token = server["url"], TOKENS["alice"]
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": ITERATIONS}, token=token)
    assert r.status_code == 202, r.text
    job = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", job["id"]) and job["status"] in ("queued", "running")
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and int(r.headers["retry-after"]) >= 1
    events = _events(url, job["id"], token)
    progress = [(i, d) for e, i, d in events if e == "progress" and d["status"] == "running"]
    counts = [d["progress"]["evaluations"] for _, d in progress]
    assert all(i == d["progress"]["evaluations"] for i, d in progress)  # the event id is the evaluation count
    assert len({c for c in counts if c > 0}) >= 3 and counts == sorted(counts), counts
    assert [e for e, _, _ in events].count("status") == 1 and events[-1][0] == "status"
    final = events[-1][2]
    assert final["status"] == "succeeded" and counts[-1] <= final["progress"]["evaluations"] <= ITERATIONS, final

    r = httpx.get(f"{url}/v1/jobs/{job['id']}/result", headers=serving.auth(token), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["nst-partial"] == "false"
    picture = Image.open(io.BytesIO(r.content))
    assert picture.size == (96, 72)
    (tmp_path / "result.png").write_bytes(r.content)
    recipe_job, provenance = read_recipe(tmp_path / "result.png")
    assert recipe_job.size == SIZE and recipe_job.iterations == ITERATIONS
    sha = {i["role"]: i["sha256"] for i in provenance["inputs"]}
    assert sha == {"content": hashlib.sha256(images["content"]).hexdigest(),
                   "style": hashlib.sha256(images["style"]).hexdigest()}
    mean = lambda a: a.reshape(-1, 3).mean(axis=0)  # noqa: E731
    # painted: far from the photo, and its colours moved towards the painting's
    got = np.asarray(picture.convert("RGB"), dtype=np.float64)
    photo = np.asarray(Image.open(io.BytesIO(images["content"])).convert("RGB"), dtype=np.float64)
    paint = np.asarray(Image.open(io.BytesIO(images["style"])).convert("RGB"), dtype=np.float64)
    assert np.abs(got - photo).mean() > 15.0  # 29.6 measured (out of 255)
    assert np.abs(mean(got) - mean(paint)).sum() < 0.5 * np.abs(mean(photo) - mean(paint)).sum()  # 0.5 vs 59

    r = httpx.get(f"{url}/v1/jobs/{job['id']}/preview", headers=serving.auth(token), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256


# ---------------------------------------------------------------------------------------------- cancel


def test_cancel_a_running_job_gives_a_partial_valid_result(server, images, tmp_path):
    url, token = server["url"], TOKENS["alice"]
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 1000}, token=token)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    serving.wait_final(url, job_id, token, until=lambda j: j["progress"]["evaluations"] >= 5 or
                       j["status"] not in ("queued", "running"))
    seen = _events(url, job_id, token, stop=lambda ev: ev[-1][1] > 0)[-1][1]  # then the client goes away
    resumed = _events(url, job_id, token, last_id=seen, stop=lambda ev: True)
    assert resumed[0][0] == "progress" and resumed[0][1] > seen, (seen, resumed)  # Last-Event-ID: only newer ones
    early = httpx.get(f"{url}/v1/jobs/{job_id}/result", headers=serving.auth(token), timeout=30)
    assert "running" in _problem(early, 409) and int(early.headers["retry-after"]) >= 1
    r = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=serving.auth(token), timeout=30)
    assert r.status_code == 202, r.text
    job = serving.wait_final(url, job_id, token)
    assert job["status"] == "cancelled" and job["partial"] is True, job
    stopped, asked = map(int, re.fullmatch(r"cancelled at evaluation (\d+) \(asked at evaluation (\d+)\)",
                                           job["error"]).groups())
    assert 5 <= asked <= stopped <= asked + 1 < 1000  # within one evaluation of the cancel reaching the worker
    r = httpx.get(f"{url}/v1/jobs/{job_id}/result", headers=serving.auth(token), timeout=30)
    assert r.status_code == 200 and r.headers["nst-partial"] == "true", r.headers
    assert Image.open(io.BytesIO(r.content)).size == (96, 72)
    (tmp_path / "partial.png").write_bytes(r.content)
    assert read_recipe(tmp_path / "partial.png")[0].iterations == 1000
    again = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=serving.auth(token), timeout=30)
    assert again.status_code == 202 and again.json()["status"] == "cancelled"  # cancelling twice is no error


# ---------------------------------------------------------------------------------------------- bad input


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width=50000, height=50000) -> bytes:
    """A PNG whose header declares width x height RGB pixels (its data would inflate to ~7.5 GB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + _png_chunk(b"IEND", b""))


def _gif(images) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(images["content"])).save(buffer, "GIF")
    return buffer.getvalue()


BAD = [  # (what, content, spec, status, words in the detail)
    ("bomb", lambda im: _bomb_png(), {}, 422, ("50000x50000", "2500000000 pixels")),
    ("truncated jpeg", lambda im: im["content"][:len(im["content"]) // 2], {}, 422, ("truncated",)),
    ("gif", _gif, {}, 422, ("GIF", "JPEG, PNG or WebP")),
    ("30 MB body", lambda im: b"\xff\xd8\xff" + b"\0" * (30 * 2**20), {}, 413, ("limit",)),
    ("unknown spec key", lambda im: im["content"], {"colour": "blue"}, 400, ("unknown key 'colour'",)),
    ("negative weight", lambda im: im["content"], {"content-weight": -1}, 400, ("content weight", ">= 0")),
    ("size 0", lambda im: im["content"], {"size": 0}, 400, ("size",)),
    ("a server path", lambda im: im["content"], {"model": "/etc/passwd"}, 400, ("'model' is not an option",)),
    ("over the evaluation limit", lambda im: im["content"], {"iterations": 6000}, 400, ("over this server's limit of 5000",)),
    ("too large for any worker", lambda im: im["content"], {"size": 40000}, 422, ("memory", "smaller size")),
]


@pytest.mark.parametrize("what, content, spec, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_one_line_problem(server, images, what, content, spec, status, words):
    url, token = server["url"], TOKENS["alice"]
    before = {j["id"] for j in httpx.get(f"{url}/v1/jobs?limit=100", headers=serving.auth(token)).json()["jobs"]}
    r = serving.submit(url, content(images), [images["style"]], spec, token=token)
    detail = _problem(r, status)
    assert all(w in detail for w in words), detail
    after = {j["id"] for j in httpx.get(f"{url}/v1/jobs?limit=100", headers=serving.auth(token)).json()["jobs"]}
    assert after == before  # refused before a job was made
    assert httpx.get(f"{url}/v1/health", headers=serving.auth(token), timeout=30).status_code == 200


def test_limits_hold_before_anything_is_decoded(server, images):
    url, token = server["url"], TOKENS["alice"]
    # 42 MP declared: under Pillow's own limit (89 MP), over the server's (40 MP); its data would not decode
    detail = _problem(serving.submit(url, _bomb_png(7000, 6000), [images["style"]], {}, token=token), 422)
    assert "7000x6000" in detail and "over this server's limit of 40000000 pixels" in detail
    part = b'--x\r\nContent-Disposition: form-data; name="content"; filename="a.jpg"\r\n\r\n\xff\xd8\xff'
    chunks = iter([part] + [b"\0" * 2**20] * 30 + [b"\r\n--x--\r\n"])  # no Content-Length: counted as read
    r = httpx.post(f"{url}/v1/jobs", content=chunks, timeout=60,
                   headers=dict(serving.auth(token), **{"Content-Type": "multipart/form-data; boundary=x"}))
    assert "limit" in _problem(r, 413)
    assert _problem(httpx.get(f"{url}/v1/nothing", headers=serving.auth(token)), 404)


def test_files_must_match_the_task(server, images):
    url, token = server["url"], TOKENS["alice"]
    assert "style image" in _problem(serving.submit(url, images["content"], [], {}, token=token), 400)
    assert "no style image" in _problem(serving.submit(url, images["content"], [images["style"]],
                                                       {"task": "invert"}, token=token), 400)
    assert "no content image" in _problem(serving.submit(url, images["content"], [images["style"]],
                                                         {"task": "texture"}, token=token), 400)
    assert "not valid JSON" in _problem(httpx.post(f"{url}/v1/jobs", files={"content": ("a", images["content"])},
                                                   data={"spec": "{size: 3"}, headers=serving.auth(token)), 400)


# ---------------------------------------------------------------------------------------------- clients


def test_tokens_and_ownership(server, images):
    url = server["url"]
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 10},
                       token=TOKENS["alice"])
    assert r.status_code == 202
    job_id = r.json()["id"]
    for token, words in ((None, "needs a token"), ("x" * 40, "not one this server knows")):
        for method, path in (("GET", f"/v1/jobs/{job_id}"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
                             ("GET", "/v1/health"), ("GET", "/v1/openapi.json")):
            r = httpx.request(method, url + path, headers=serving.auth(token), timeout=30)
            assert words in _problem(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
    bob = serving.auth(TOKENS["bob"])
    for method, suffix in (("GET", ""), ("GET", "/events"), ("GET", "/preview"), ("GET", "/result"),
                           ("POST", "/cancel"), ("DELETE", "")):
        r = httpx.request(method, f"{url}/v1/jobs/{job_id}{suffix}", headers=bob, timeout=30)
        assert "not yours" in _problem(r, 404), (method, suffix)
    unknown = httpx.get(f"{url}/v1/jobs/{'0' * 32}", headers=bob, timeout=30)
    assert _problem(unknown, 404)  # looks the same as another client's job
    assert job_id not in {j["id"] for j in httpx.get(f"{url}/v1/jobs", headers=bob).json()["jobs"]}
    job = serving.wait_final(url, job_id, TOKENS["alice"])
    assert job["status"] == "succeeded"  # bob's cancel and delete did nothing


def test_non_loopback_host_without_tokens_is_refused(tmp_path, env):
    for args, words in ((["--host", "0.0.0.0"], "not a loopback address"),
                        (["--token-file", tmp_path / "none.txt"], "no such file")):
        r = subprocess.run(serving.CLI + ["serve", "--port", "0", "--data", tmp_path / "d", *map(str, args)],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nst: error:") and words in lines[0], r.stderr
    short = tmp_path / "short.txt"
    short.write_text("eve abc\n")
    r = subprocess.run(serving.CLI + ["serve", "--host", "0.0.0.0", "--port", "0", "--token-file", str(short)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "use at least 16" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------- idempotency, limits


def test_idempotency_key_returns_the_same_job(server, images):
    url, token = server["url"], TOKENS["bob"]
    spec = {"size": SIZE, "iterations": 10}
    first = serving.submit(url, images["content"], [images["style"]], spec, token=token, key="order-17")
    again = serving.submit(url, images["content"], [images["style"]], spec, token=token, key="order-17")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = serving.submit(url, images["style"], [images["style"]], spec, token=token, key="order-17")
    assert "Idempotency-Key" in _problem(other, 422)
    alice = serving.submit(url, images["content"], [images["style"]], spec, token=TOKENS["alice"], key="order-17")
    assert alice.status_code == 202 and alice.json()["id"] != first.json()["id"]  # keys are per client
    mine = [j["id"] for j in httpx.get(f"{url}/v1/jobs?limit=100", headers=serving.auth(token)).json()["jobs"]]
    assert mine.count(first.json()["id"]) == 1
    for job_id, who in ((first.json()["id"], token), (alice.json()["id"], TOKENS["alice"])):
        assert serving.wait_final(url, job_id, who)["status"] == "succeeded"


def test_queue_limit_then_delete(server, images):
    url, token = server["url"], TOKENS["carol"]
    ids = []
    for _ in range(3):
        r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 1000},
                           token=token)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE}, token=token)
    assert "3 jobs queued or running" in _problem(r, 429) and int(r.headers["retry-after"]) >= 1
    listed = httpx.get(f"{url}/v1/jobs", headers=serving.auth(token)).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]  # newest first
    for job_id in ids:
        assert httpx.delete(f"{url}/v1/jobs/{job_id}", headers=serving.auth(token)).status_code == 204
        _problem(httpx.get(f"{url}/v1/jobs/{job_id}", headers=serving.auth(token)), 404)
    r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 5}, token=token)
    assert r.status_code == 202  # room again
    assert serving.wait_final(url, r.json()["id"], token)["status"] == "succeeded"


def test_list_pages_and_status_filter(server, images):
    url, token = server["url"], TOKENS["alice"]
    for _ in range(3):  # jobs of its own, so that it runs alone too
        r = serving.submit(url, images["content"], [images["style"]], {"size": SIZE, "iterations": 3}, token=token)
        serving.wait_final(url, r.json()["id"], token)
    everything = httpx.get(f"{url}/v1/jobs?limit=100", headers=serving.auth(token)).json()["jobs"]
    assert len(everything) >= 3
    seen, path = [], "/v1/jobs?limit=2"
    while path:
        r = httpx.get(url + path, headers=serving.auth(token))
        assert r.status_code == 200
        page = r.json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        path = page["next"]
    assert seen == [j["id"] for j in everything]
    created = [j["created"] for j in everything]
    assert created == sorted(created, reverse=True)
    done = httpx.get(f"{url}/v1/jobs?status=succeeded&status=cancelled&limit=100",
                     headers=serving.auth(token)).json()["jobs"]
    assert {j["status"] for j in done} <= {"succeeded", "cancelled"}
    assert {j["id"] for j in done} == {j["id"] for j in everything if j["status"] in ("succeeded", "cancelled")}
    assert "'done'" in _problem(httpx.get(f"{url}/v1/jobs?status=done", headers=serving.auth(token)), 400)


def test_health_and_openapi(server):
    url, token = server["url"], TOKENS["alice"]
    health = httpx.get(f"{url}/v1/health", headers=serving.auth(token)).json()
    assert health["status"] == "ok" and len(health["workers"]) == 2 and set(health["queue"]) == {"queued", "running"}
    spec = httpx.get(f"{url}/v1/openapi.json", headers=serving.auth(token)).json()
    paths = spec["paths"]
    for path, methods in (("/v1/jobs", {"get", "post"}), ("/v1/jobs/{job_id}", {"get", "delete"}),
                          ("/v1/jobs/{job_id}/events", {"get"}), ("/v1/jobs/{job_id}/preview", {"get"}),
                          ("/v1/jobs/{job_id}/result", {"get"}), ("/v1/jobs/{job_id}/cancel", {"post"}),
                          ("/v1/health", {"get"})):
        assert methods <= set(paths[path]), path
    assert "multipart/form-data" in paths["/v1/jobs"]["post"]["requestBody"]["content"]


# ---------------------------------------------------------------------------------------------- headers


def _rotated() -> bytes:
    """EXIF saying "rotate 90 degrees" (the header's size is the stored one; the pixel count is the same)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


def _encoded(fmt: str, size, mode="RGB", **options) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, mode, options", [
    ("PNG", "RGB", {}), ("JPEG", "RGB", {}), ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "RGB", {"exif": _rotated()}), ("WEBP", "RGB", {"lossless": False}),
    ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {"lossless": False}), ("WEBP", "RGBA", {"exif": b"Exif"}),
])
def test_header_sizes_agree_with_pillow(fmt, mode, options):
    for size in ((1, 1), (97, 61), (16383, 2)):
        data = _encoded(fmt, size, mode, **options)
        assert uploads.sniff(data) == fmt
        with Image.open(io.BytesIO(data)) as im:
            assert uploads.header_size(data, fmt) == im.size == size
    assert uploads.sniff(b"GIF89a" + bytes(20)) is None and uploads.header_size(b"\xff\xd8\xff", "JPEG") is None


def test_connections_of_the_listening_socket_have_nagle_off():
    """asyncio (which uvicorn serves with) sets TCP_NODELAY only on connections whose socket says IPPROTO_TCP;
    with Nagle on, each request after the first on a kept-alive connection waited for a delayed ACK (~40 ms)."""
    async def main():
        seen = asyncio.get_running_loop().create_future()

        def accepted(reader, writer):
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(seen, 30)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(main()) != 0


def test_page_files_need_no_token_and_no_name_becomes_a_path(server):
    url = server["url"]
    page = httpx.get(url + "/", timeout=30)  # no token: the page carries no data
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(url + "/v1/health").headers["x-content-type-options"] == "nosniff"
    for name in ("..%2fapp.py", "..%2f..%2fcli.py", "%2e%2e", "app.py", ".", "..%2F__init__.py"):
        r = httpx.get(f"{url}/page/{name}", timeout=30)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), name
