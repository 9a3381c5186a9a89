"""The page of `nst serve` (nst_core/serve/page/) in a real browser against a real server: a `nst serve` process
on 127.0.0.1 (tests/serving.py) and Debian's chromium, headless, driven by playwright-core (tests/serve_page.mjs,
which reuses hosts/web/test/browser.mjs: nothing downloads a browser).

Through the page's own controls: choose the photo and the painting (the shared JPEGs), pick the scream preset,
128 px and 100000 evaluations, submit, reload the page in the middle (it follows the same job again); the preview
must show at least 2 different pictures after the start while the job runs (the job is then cancelled from the page,
so the test takes the same time on a quiet and on a loaded machine); the downloaded PNG is the server's partial
result (the right size, painted, its recipe names the preset, size and evaluations the page sent). A GIF is refused
with the server's own one-line problem detail on the page; the job list shows, offers again and deletes the job; a
dropped file is taken. A second server, with --token-file, is used through the page's Token field; it is stopped
(SIGTERM) and started again on the same port and --data while a job runs, and the page follows that job through
the restart; a 20-evaluation job then runs to Done. Every request the browser made stays on the server's origin
(127.0.0.1), and the console has no errors (but the refused requests' own lines).

Without /usr/bin/chromium the browser test is skipped locally, with the reason; under CI it fails instead.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from nst_core.outputs.recipe import read_recipe
from nst_core.spec.presets import DEFAULT_PRESET, PRESETS

from browser import node_for_chromium
from serving import start_server, stop_server, submit

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "nst_core" / "serve" / "page"
SIZE = 128


@pytest.fixture(scope="module")
def node():
    return node_for_chromium(("playwright-core",), "the page's test")


@pytest.fixture(scope="module")
def server(tmp_path_factory, env):
    srv = start_server(tmp_path_factory.mktemp("serve_page"), "--workers", "1", env=env)  # one job at a time here
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def gif(tmp_path_factory):
    path = tmp_path_factory.mktemp("gif") / "photo.gif"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(path)
    return path


def drive(node, mode, url, out, *args) -> dict:
    """`node tests/serve_page.mjs MODE URL OUT *args`: its result.json."""
    r = subprocess.run([node, str(REPO / "tests" / "serve_page.mjs"), mode, url.rstrip("/") + "/", str(out),
                        *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=240)
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + json.dumps(result)[-3000:]
    return result


@pytest.fixture(scope="module")
def e2e(node, server, images_dir, gif, tmp_path_factory):
    return drive(node, "run", server["url"], tmp_path_factory.mktemp("serve_page_e2e"), images_dir / "tubingen.jpg",
                 images_dir / "starry_night.jpg", gif)


def foreign_requests(requests, url) -> list:
    """The URLs of `requests` that are not on the origin of `url` (its blob: URLs count as its own)."""
    origin = urlsplit(url)
    own = f"{origin.scheme}://{origin.netloc}"
    return [u for u in requests if not (u.startswith(own + "/") or u.startswith(f"blob:{own}/") or u.startswith("data:"))]


def expected_size(photo: Path) -> tuple:
    """(width, height) of the photo with its smaller edge at SIZE, the other edge in proportion (within 1 px)."""
    with Image.open(photo) as im:
        w, h = im.size
    return (SIZE, h * SIZE / w) if w <= h else (w * SIZE / h, SIZE)


def painted_against(path: Path, photo: Path) -> float:
    """Mean absolute difference (0..255) between the picture at `path` and the photo resized to its size."""
    with Image.open(path) as im, Image.open(photo) as ph:
        got = np.asarray(im.convert("RGB"), np.float64)
        ref = np.asarray(ph.convert("RGB").resize(im.size, Image.BILINEAR), np.float64)
    return float(np.abs(got - ref).mean())


def test_page_round_trip(e2e, images_dir, capsys):
    """Submit a 100000-evaluation job from the page; the preview shows >= 2 different pictures while it runs
    (the page reloaded after the first: it follows the same job again, and its download keeps the files' names);
    cancel; the download is the server's partial PNG: the photo's proportions, painted, and its recipe holds the
    preset, size and evaluations the page sent."""
    run = e2e["run"]
    previews = [p for p in run["previews"] if p["kind"] == "preview"]
    with capsys.disabled():
        print(f"\nserve page: {len(previews)} previews shown in {run['seconds']:.1f} s "
              f"(evaluations {[p['evaluation'] for p in previews]}), {len({p['sha256'] for p in previews})} different; "
              f"then {run['status']!r}")
    assert len({p["sha256"] for p in previews if int(p["evaluation"]) > 1}) >= 2, run["previews"]  # not the photo
    assert all(max(p["size"]) <= 256 for p in previews)
    assert run["previews"][-1]["kind"] == "result"
    assert run["reloaded"]["cancel"] and run["reloaded"]["status"].startswith("Running: evaluation"), run["reloaded"]
    done = int(re.match(r"Cancelled after (\d+) evaluations", run["status"]).group(1))
    assert int(previews[-1]["evaluation"]) <= done < 100000 and run["error"] == ""
    assert run["partial"] == "true" and run["suggested"] == "tubingen-starry_night-partial.png", run
    photo = images_dir / "tubingen.jpg"
    with Image.open(run["path"]) as im:
        assert im.format == "PNG"
        size = im.size
    assert all(abs(a - b) <= 1 for a, b in zip(size, expected_size(photo))), (size, expected_size(photo))
    assert tuple(run["previews"][-1]["size"]) == size  # the result itself is what the page showed last
    spec, _ = read_recipe(run["path"])
    assert (spec.preset, spec.size, spec.iterations) == ("scream", SIZE, 100000)
    assert painted_against(Path(run["path"]), photo) > 5.0  # scream's strokes, not the photo


def test_page_shows_the_servers_problem_detail(e2e, server, gif, images_dir):
    """A GIF as the photo: the page shows, in one line, the detail of the problem document the server answers to
    the same upload sent directly."""
    shown = e2e["refused"]["error"]
    r = submit(server["url"], gif.read_bytes(), [(images_dir / "starry_night.jpg").read_bytes()],
               {"preset": "scream", "size": SIZE, "iterations": 100})
    assert r.status_code in (400, 415, 422) and r.headers["content-type"].startswith("application/problem+json")
    assert shown == r.json()["detail"] and "\n" not in shown and shown
    assert e2e["refused"]["status"] == "Not submitted."
    # the browser itself logs the refused request; nothing else
    assert all(re.match(r"Failed to load resource: .* status of 4\d\d", m) for m in e2e["refusedConsole"]), e2e


def test_page_job_list(e2e, server):
    """The list shows the cancelled job (status, evaluations, preset and size); its Show button offers the same
    partial PNG again, its Delete button deletes the job on the server."""
    rows, run = e2e["list"]["before"], e2e["run"]
    assert len(rows) == 1 and rows[0]["status"] == "cancelled", rows
    cells = rows[0]["cells"]
    assert cells[1].startswith("cancelled (partial)") and cells[2].endswith(" / 100000") and cells[3] == "scream, 128 px", cells
    assert int(cells[2].split(" / ")[0]) == int(re.match(r"Cancelled after (\d+)", run["status"]).group(1))
    shown = e2e["list"]["shown"]
    assert shown["suggested"] == f"nst-{rows[0]['id'][:8]}-partial.png" and shown["partial"] == "true"
    assert Path(shown["path"]).read_bytes() == Path(run["path"]).read_bytes()
    after = e2e["list"]["after"]
    assert after["rows"] == [] and after["note"] == "None yet." and after["status"] == f"Deleted job {rows[0]['id']}."
    r = httpx.get(f"{server['url']}/v1/jobs/{rows[0]['id']}", timeout=10)
    listed = [j["id"] for j in httpx.get(f"{server['url']}/v1/jobs", timeout=10).json()["jobs"]]
    assert r.status_code == 404 and rows[0]["id"] not in listed


def test_page_switches_between_jobs(e2e, server):
    """Submitting while a job runs follows the new job (the first goes on on the server); the new one, cancelled
    while queued, has no picture; Watch in the list follows the first again, and its cancel gives its partial PNG."""
    sw = e2e["switching"]
    assert sw["first"] != sw["second"]
    assert sw["queuedCancel"]["status"] == "Cancelled before it started: there is no picture.", sw["queuedCancel"]
    assert sw["watched"]["partial"] == "true" and sw["watched"]["suggested"] == f"nst-{sw['first'][:8]}-partial.png"
    spec, _ = read_recipe(sw["watched"]["path"])
    assert spec.iterations == 100000
    rows = {r["id"]: r for r in sw["rows"]}
    assert rows[sw["first"]]["cells"][1].startswith("cancelled (partial)"), rows
    assert rows[sw["second"]]["status"] == "cancelled" and rows[sw["second"]]["cells"][2] == "0 / 100000", rows
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{server['url']}/v1/jobs/{sw['second']}/result").status_code == 409


def test_page_takes_a_dropped_file(e2e, images_dir):
    """The photo dropped on the painting's zone becomes the painting: its thumbnail shows the photo (its size)."""
    with Image.open(images_dir / "tubingen.jpg") as im:
        size = list(im.size)
    with Image.open(images_dir / "starry_night.jpg") as im:
        assert list(im.size) != size  # else the check below could not tell
    assert e2e["dropped"]["painting"] == size


def test_page_stays_on_its_server(e2e, server):
    """No request leaves the server's origin on 127.0.0.1 (no CDN, no font, no update check), and no console
    errors during the round trip and the cancel."""
    assert urlsplit(server["url"]).hostname == "127.0.0.1"
    assert foreign_requests(e2e["requests"], server["url"]) == [] and len(e2e["requests"]) > 5
    assert e2e["consoleErrors"] == []


def test_page_with_a_token_through_a_restart(node, env, images_dir, tmp_path):
    """A server with --token-file: before a token is typed the page says the server asks for one and shows the
    401's one-line detail on submitting; with the token typed, every /v1 request carries it as Bearer. While a job
    (64 px, 100000 evaluations) runs, the server is stopped (SIGTERM: the job goes back to the queue) and started
    again on the same port and --data: the page says it lost the server and follows the job again; cancelled
    there, its partial picture downloads. A 20-evaluation job then runs to its end: "Done", a full progress bar,
    the whole PNG (not partial) with its recipe."""
    token = "page-test-token-7f3a"
    (tmp_path / "tokens").write_text(f"alice {token}\n")
    args = ["--token-file", tmp_path / "tokens", "--workers", "1", "--data", tmp_path / "data"]
    srv = start_server(tmp_path, *args, env=env, token=token)
    out = tmp_path / "out"
    out.mkdir()
    page = subprocess.Popen([node, str(REPO / "tests" / "serve_page.mjs"), "token", srv["url"] + "/", str(out),
                             images_dir / "tubingen.jpg", images_dir / "starry_night.jpg", token],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = page.stdout.readline()  # "RUNNING" (or "" if the driver failed)
        refused = submit(srv["url"], (images_dir / "tubingen.jpg").read_bytes(),
                         [(images_dir / "starry_night.jpg").read_bytes()], {"size": 64})
        assert stop_server(srv) == 0
        if line.strip() == "RUNNING":
            port = urlsplit(srv["url"]).port
            srv = start_server(tmp_path, *args, "--port", port, env=env, token=token)
        stdout, stderr = page.communicate(timeout=240)
        jobs = httpx.get(srv["url"] + "/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    finally:
        page.kill()
        stop_server(srv)
    t = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    assert line.strip() == "RUNNING" and page.returncode == 0, line + stdout[-2000:] + stderr[-3000:] + json.dumps(t)
    assert "asks for a token" in t["before"]["server"], t["before"]
    assert refused.status_code == 401 and t["before"]["error"] == refused.json()["detail"], t["before"]
    assert all(re.match(r"Failed to load resource: .* status of 401", m) for m in t["beforeConsole"]), t
    assert t["auth"] and all(a == f"Bearer {token}" for _, a in t["auth"]), t["auth"]
    assert any(u.endswith("/result") for u, _ in t["auth"]) and any(u.endswith("/events") for u, _ in t["auth"])
    restarted = t["restarted"]
    lost = [k for k, s in enumerate(restarted["statuses"]) if s.startswith("The server does not answer")]
    assert lost and restarted["statuses"][0].startswith("Running"), restarted["statuses"]  # running, lost,
    assert restarted["statuses"][-1].startswith("Running"), restarted["statuses"]  # followed again
    rec = next(j for j in jobs["jobs"] if j["spec"]["iterations"] == 100000)
    assert rec["status"] == "cancelled" and rec["partial"], rec
    assert restarted["partial"] == "true" and restarted["status"].startswith("Cancelled after"), restarted
    spec, _ = read_recipe(restarted["path"])
    assert (spec.preset, spec.size, spec.iterations) == ("starry_night", 64, 100000)
    after = t["after"]
    assert after["status"].startswith("Done: 20 evaluations") and after["error"] == "", after
    assert after["progress"][0] == after["progress"][1] == 20
    assert after["partial"] == "false" and after["suggested"] == "tubingen-starry_night.png", after
    with Image.open(after["path"]) as im:
        assert im.format == "PNG" and min(im.size) == 64
    spec, _ = read_recipe(after["path"])
    assert (spec.preset, spec.size, spec.iterations) == ("starry_night", 64, 20)
    # while the server was away the browser logs the refused connections (and a 503 while it drained); else nothing
    assert all(re.match(r"Failed to load resource: (net::ERR_\w+|.* status of 503)", m) for m in t["restartConsole"]), t
    assert t["consoleErrors"] == [] and foreign_requests(t["requests"], srv["url"]) == []


def test_page_files_are_served(server):
    """GET / is the page; its script, modules and style sheet come from /page/ with types a browser accepts; the
    preset menu lists exactly nst's presets."""
    base = server["url"].rstrip("/")
    with httpx.Client(timeout=10) as client:
        page = client.get(base + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == (PAGE / "index.html").read_text()
        for name in sorted(p.name for p in PAGE.iterdir()):
            r = client.get(f"{base}/page/{name}")
            assert r.status_code == 200 and r.content == (PAGE / name).read_bytes(), name
            kind = {".mjs": "text/javascript", ".css": "text/css", ".html": "text/html"}[Path(name).suffix]
            assert r.headers["content-type"].split(";")[0] == kind, (name, r.headers["content-type"])
    assert re.findall(r'<option value="(\w+)"', page.text) == list(PRESETS)
    assert re.findall(r'<option value="(\w+)" selected>', page.text) == [DEFAULT_PRESET]


def test_page_event_stream_parser():
    """The page's event-stream parser (sse.mjs) under `node --test` on hand-written streams."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the page's parser tests need Node.js 20)")
    r = subprocess.run([node, "--test", "tests/serve_page_sse.test.mjs"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# pass 3" in r.stdout
