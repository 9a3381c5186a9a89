"""nst batch and the job engine, with real processes: a Dask scheduler and two worker processes on 127.0.0.1, a real
PostgreSQL server (and SQLite), ``nst batch`` run as a command. Faults for real: a worker SIGKILLed mid-job, the
driver SIGKILLed and rerun, SIGTERM to the driver, a cancel through the engine. Tiny jobs (64-128 px)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("distributed")
pytest.importorskip("sqlalchemy")

import servers  # noqa: E402  (tests/servers.py)
from servers import wait_for  # noqa: E402
from nst_core.jobs import manifest as mf  # noqa: E402
from nst_core.outputs.recipe import read_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
WAIT = 120  # seconds any one wait may take before the test fails (they end much sooner)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def jobs_env(env):
    return dict(env, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))


@pytest.fixture(scope="module")
def cluster(jobs_env):
    """A scheduler and two single-threaded worker processes (with nannies) on 127.0.0.1."""
    c = servers.start_dask(jobs_env, workers=2)
    yield c
    servers.stop_dask(c)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """None (the default SQLite file under OUTDIR) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server = request.getfixturevalue("postgres")
    return servers.new_database(server, f"t{os.getpid()}_{abs(hash(str(tmp_path))) % 10**9}")


@pytest.fixture(scope="module")
def pictures(images_dir):
    return {name: str(images_dir / f"{name}.jpg") for name in ("tubingen", "starry_night", "the_scream",
                                                               "composition_vii")}


def write_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def start_batch(args, env) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["batch", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def open_store(outdir: Path, url):
    from nst_core.jobs.store import open_store as _open

    return _open(url or str(outdir / "nst-jobs.sqlite"))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_picture(path, smaller_edge: int, pictures_used: list) -> None:
    """A complete PNG of the right size whose recipe names the inputs by their real SHA-256."""
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) == smaller_edge
    _, provenance = read_recipe(path)
    assert sorted(i["sha256"] for i in provenance["inputs"]) == sorted(sha256(p) for p in pictures_used)


def wrote_lines(stderr: str) -> list:
    return re.findall(r"line \d+: wrote (\S+)", stderr)


# ---------------------------------------------------------------------------------------------- manifest


def test_manifest_reports_bad_rows_by_line(tmp_path, pictures):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(pictures["tubingen"]).read_bytes()[:2000])
    (tmp_path / "out").mkdir()
    t, s = pictures["tubingen"], pictures["starry_night"]
    rows = [{"content": t, "style": s, "output": "a.png", "size": 64},
            {"content": "nope.jpg", "style": s, "output": "b.png"},
            "{not json",
            {"content": t, "style": s, "output": "c.png", "colour": "red"},
            "",
            {"content": t, "style": s, "output": "d.png", "size": 0},
            {"content": str(truncated), "style": s, "output": "e.png"},
            {"content": t, "style": s, "output": "../f.png"},
            {"content": t, "style": s, "output": "a.png"},
            {"task": "texture", "style": "starry_night.jpg", "output": "sub/g.png", "style-layers": "1,4",
             "style-weights": "1,2"},
            {"content": t, "style": [s, pictures["the_scream"]], "style_blend": [1, 3], "output": "h.jpg"}]
    (tmp_path / "starry_night.jpg").write_bytes(Path(s).read_bytes())  # relative to the manifest
    good, bad = mf.read_manifest(str(write_manifest(tmp_path / "m.jsonl", rows)), str(tmp_path / "out"))
    assert [r.line for r in good] == [1, 10, 11]
    assert good[1].job.styles == (str(tmp_path / "starry_night.jpg"),) and good[1].job.style_layers == (1, 4)
    errors = {b.line: b.error for b in bad}
    assert sorted(errors) == [2, 3, 4, 6, 7, 8, 9]
    assert "nope.jpg: no such file" in errors[2]
    assert "not valid JSON" in errors[3]
    assert "unknown key 'colour'" in errors[4]
    assert "size must be >= 1" in errors[6]
    assert "truncated" in errors[7]
    assert "leaves OUTDIR" in errors[8]
    assert "also line 1's" in errors[9]
    assert all("\n" not in e for e in errors.values())
    # the key: the same row again is the same job; another image under the same path is another job
    again, _ = mf.read_manifest(str(tmp_path / "m.jsonl"), str(tmp_path / "out"))
    assert [r.key for r in again] == [r.key for r in good]
    (tmp_path / "starry_night.jpg").write_bytes(Path(pictures["the_scream"]).read_bytes())
    changed, _ = mf.read_manifest(str(tmp_path / "m.jsonl"), str(tmp_path / "out"))
    assert changed[1].key != good[1].key and changed[0].key == good[0].key


def test_output_names_stay_inside_outdir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    assert mf.output_path(str(out), "a/b.png") == str(out / "a" / "b.png")
    for name in ("/etc/x.png", "../x.png", "a/../../x.png", "link/x.png", "summary.json", "", "."):
        with pytest.raises(Exception) as info:
            mf.output_path(str(out), name)
        assert "OUTDIR" in str(info.value) or "nst batch" in str(info.value) or "file name" in str(info.value)


# ---------------------------------------------------------------------------------------------- embedded cluster


def test_batch_six_jobs_two_bad_rows_summary_and_rerun(tmp_path, pictures, jobs_env):
    """6 jobs at 128 px and 2 bad rows on the embedded cluster: 6 pictures, the bad rows by line, exit 1; a rerun
    runs nothing again."""
    t, styles = pictures["tubingen"], [pictures[n] for n in ("starry_night", "the_scream", "composition_vii")]
    rows = [{"content": t, "style": styles[k % 3], "output": f"p{k}.png", "size": 128, "iterations": 8}
            for k in range(5)]
    rows.insert(2, {"content": t, "style": "missing.jpg", "output": "bad.png"})
    rows.insert(4, {"content": t, "style": styles[0], "output": "x.png", "optimiser": "adam"})
    rows.append({"task": "texture", "style": styles[1], "output": "tex.png", "size": 128, "iterations": 8})
    manifest, out = write_manifest(tmp_path / "m.jsonl", rows), tmp_path / "out"
    code, _, err = finish(start_batch([manifest, "-o", out, "--workers", "2"], jobs_env))
    assert code == 1, err
    assert "line 3: " in err and "missing.jpg: no such file" in err
    assert "line 5: unknown key 'optimiser'" in err
    assert sorted(wrote_lines(err)) == sorted([f"p{k}.png" for k in range(5)] + ["tex.png"])
    for k in range(5):
        check_picture(out / f"p{k}.png", 128, [t, styles[k % 3]])
    check_picture(out / "tex.png", 128, [styles[1]])
    summary = json.loads((out / "summary.json").read_text())
    assert [j["line"] for j in summary["jobs"]] == list(range(1, 9))
    by_line = {j["line"]: j for j in summary["jobs"]}
    assert by_line[3]["status"] == "failed" and "no such file" in by_line[3]["error"]
    good = [j for j in summary["jobs"] if j["line"] not in (3, 5)]
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 and j["seconds"] > 0 and j["loss"] > 0
               and j["worker"].startswith("tcp://127.0.0.1:") for j in good)
    assert len({j["worker"] for j in good}) == 2  # both processes worked
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "p1.png"}
    (out / "p1.png").unlink()  # a lost output comes back from the store, not from a new run

    code, _, err = finish(start_batch([manifest, "-o", out, "--workers", "2"], jobs_env))
    assert code == 1 and "6 of 6 jobs done before; running 0" in err and wrote_lines(err) == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "p1.png"} == mtimes
    assert "line 2: rewrote p1.png from the store" in err
    check_picture(out / "p1.png", 128, [t, styles[1]])


def test_ctrl_c_saves_partial_pictures_and_a_rerun_finishes(tmp_path, pictures, jobs_env):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the embedded cluster's workers get it
    too): the running jobs stop with their best pictures written, exit 130; the rerun runs the three jobs."""
    t, s = pictures["tubingen"], pictures["starry_night"]
    rows = [{"content": t, "style": s, "output": f"p{k}.png", "size": 64, "iterations": 100000} for k in range(3)]
    manifest, out = write_manifest(tmp_path / "m.jsonl", rows), tmp_path / "out"
    proc = start_batch([manifest, "-o", out, "--workers", "2"], jobs_env)
    store = wait_for("the store", lambda: (out / "nst-jobs.sqlite").exists() and open_store(out, None))
    wait_for("two running jobs", lambda: sum(r.evaluations > 3 for r in store.jobs(status="running")) == 2)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    summary = json.loads((out / "summary.json").read_text())["jobs"]
    assert sorted(j["status"] for j in summary) == ["cancelled"] * 3
    partial = [j for j in summary if j["attempts"] == 1]
    assert len(partial) == 2 and all(re.match(r"cancelled at evaluation \d+", j["error"]) for j in partial)
    for j in partial:
        check_picture(out / j["output"], 64, [t, s])
    rows = [dict(r, iterations=5) for r in rows]  # the rerun: the same outputs, short jobs this time
    code, _, err = finish(start_batch([write_manifest(tmp_path / "m.jsonl", rows), "-o", out, "--workers", "2"],
                                      jobs_env))
    assert code == 0 and sorted(wrote_lines(err)) == ["p0.png", "p1.png", "p2.png"]
    store.close()


# ---------------------------------------------------------------------------------------------- a real cluster


def test_a_worker_killed_mid_job(tmp_path, pictures, jobs_env, cluster, store_url):
    """SIGKILL of the worker process running a job: every job still succeeds, each output is written once and is
    a valid PNG, and the killed job's record shows 2 attempts."""
    t, s = pictures["tubingen"], pictures["the_scream"]
    rows = [{"content": t, "style": s, "output": f"p{k}.png", "size": 64, "iterations": 300 if k == 0 else 20}
            for k in range(4)]
    manifest, out = write_manifest(tmp_path / "m.jsonl", rows), tmp_path / "out"
    args = [manifest, "-o", out, "--scheduler", cluster["address"]] + (["--store", store_url] if store_url else [])
    proc = start_batch(args, jobs_env)
    store = wait_for("the store", lambda: (store_url or (out / "nst-jobs.sqlite").exists()) and open_store(out,
                                                                                                        store_url))
    first = wait_for("the long job's progress", lambda: [r for r in store.jobs(status="running")
                                                         if r.line == 1 and r.evaluations > 0])[0]
    pids = servers.worker_pids(cluster["address"])
    os.kill(pids[first.worker], signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 0, err
    assert sorted(wrote_lines(err)) == [f"p{k}.png" for k in range(4)]  # each once
    for k in range(4):
        check_picture(out / f"p{k}.png", 64, [t, s])
    killed = store.get(first.id)
    assert killed.status == "succeeded" and killed.attempts == 2 and killed.worker != first.worker
    assert [r.attempts for r in store.jobs() if r.id != first.id] == [1, 1, 1]
    assert len(store.jobs()) == 4
    store.close()
    wait_for("two workers", lambda: len(servers.worker_pids(cluster["address"])) == 2)


def test_the_driver_killed_then_rerun(tmp_path, pictures, jobs_env, cluster, store_url):
    """SIGKILL of nst batch after some jobs finished, then the same command: the finished jobs are not run again,
    all outputs are valid, none is lost or duplicated."""
    t, s = pictures["tubingen"], pictures["composition_vii"]
    rows = [{"content": t, "style": s, "output": f"p{k}.png", "size": 64, "iterations": 40} for k in range(6)]
    manifest, out = write_manifest(tmp_path / "m.jsonl", rows), tmp_path / "out"
    args = [manifest, "-o", out, "--scheduler", cluster["address"]] + (["--store", store_url] if store_url else [])
    proc = start_batch(args, jobs_env)
    store = wait_for("the store", lambda: (store_url or (out / "nst-jobs.sqlite").exists()) and open_store(out,
                                                                                                        store_url))
    wait_for("two finished jobs", lambda: len(store.jobs(status="succeeded")) >= 2, every=0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=WAIT)
    done = {r.id: (r.finished, r.result_sha256) for r in store.jobs(status="succeeded")}
    written = {p.name for p in out.glob("p*.png")}
    code, _, err = finish(start_batch(args, jobs_env))
    assert code == 0, err
    assert f"{len(done)} of 6 jobs done before" in err or "rewrote" in err
    after = {r.id: r for r in store.jobs()}
    assert len(after) == 6  # no job duplicated
    for job_id, (finished, digest) in done.items():  # not run again
        assert after[job_id].finished == finished and after[job_id].result_sha256 == digest
    rerun = wrote_lines(err)
    assert not set(rerun) & written and len(rerun) == len(set(rerun))
    assert sorted(written | set(rerun) | set(re.findall(r"rewrote (\S+)", err))) == [f"p{k}.png" for k in range(6)]
    for k in range(6):
        check_picture(out / f"p{k}.png", 64, [t, s])
        assert sha256(out / f"p{k}.png") == next(r.result_sha256 for r in after.values() if r.line == k + 1)
    print(f"note: {len(done)} jobs finished before the SIGKILL were not run again; {len(rerun)} ran in the rerun")
    store.close()


def test_engine_cancel_admission_and_bad_input(tmp_path, pictures, cluster):
    """Through the engine's API: a running job cancelled stops within one evaluation with its best picture; a
    queued one is cancelled before it starts; a job that fits no worker fails at once; a truncated image fails
    once with its message."""
    from nst_core.jobs.engine import Engine, Input
    from nst_core.jobs.store import open_store as _open
    from nst_core.spec.spec import make

    t, s = pictures["tubingen"], pictures["starry_night"]
    content, style = Input("content", t, Path(t).read_bytes()), Input("style", s, Path(s).read_bytes())
    engine = Engine(_open(str(tmp_path / "jobs.sqlite")), scheduler=cluster["address"])
    try:
        long = [engine.submit(make("stylize", content=t, styles=(s,), size=64, iterations=100000), [content, style])
                for _ in range(3)]  # two run, the third waits
        wait_for("two running", lambda: sum(engine.status(j).evaluations > 3 for j in long) == 2)
        queued = next(j for j in long if engine.status(j).status == "queued")
        assert engine.cancel(queued) and engine.status(queued).status == "cancelled"
        running = [j for j in long if j != queued]
        for j in running:
            assert engine.cancel(j)
        wait_for("the cancelled jobs", lambda: all(engine.status(j).final for j in running))
        for j in running:
            rec = engine.status(j)
            stopped, asked = map(int, re.match(r"cancelled at evaluation (\d+) \(asked at evaluation (\d+)\)",
                                               rec.error).groups())
            assert rec.status == "cancelled" and rec.partial and 0 <= stopped - asked <= 1
            png = tmp_path / f"{j}.png"
            png.write_bytes(engine.result(j))
            check_picture(png, 64, [t, s])
            with Image.open(io.BytesIO(engine.preview(j))) as im:  # the best image so far, while it ran
                assert im.format == "JPEG" and im.size == (85, 64)
        assert engine.status(queued).attempts == 0 and engine.result(queued) is None
        assert engine.preview(queued) is None
        assert not engine.cancel(queued)
        assert engine.delete(queued) and engine.status(queued) is None and not engine.delete(queued)

        huge = engine.submit(make("stylize", content=t, styles=(s,), size=4000, iterations=5), [content, style])
        rec = engine.status(huge)
        assert rec.status == "failed" and rec.attempts == 0 and "largest worker has 2.0 GB" in rec.error

        broken = Input("content", "broken.jpg", Path(t).read_bytes()[:3000])
        bad = engine.submit(make("stylize", content=t, styles=(s,), size=64, iterations=5), [broken, style])
        wait_for("the bad job", lambda: engine.status(bad).final)
        rec = engine.status(bad)
        assert rec.status == "failed" and rec.attempts == 1 and rec.error.startswith("broken.jpg: truncated")
        assert {j["address"] for j in engine.workers()} == set(servers.worker_pids(cluster["address"]))
    finally:
        engine.close()


def test_style_targets_are_kept_per_network_and_image(features_model, pictures):
    """A worker's second job with the same style at the same size reuses the Gram targets (no forward pass), a
    different image or weight computes new ones, and an entry goes with its network."""
    import gc
    import importlib

    import numpy as np

    from nst_core.inputs.images import open_image, preprocess
    from nst_core.network import cache

    tg = importlib.import_module("nst_core.objective.targets")  # the package's "targets" is the function

    class Counting:  # the real network, its forward passes counted
        def __init__(self, net):
            self.net, self.calls = net, 0

        def features(self, x):
            self.calls += 1
            return self.net.features(x)

    net = Counting(cache.network(features_model, (1, 4), "cpu"))
    a = preprocess(open_image(pictures["starry_night"]), 64)
    b = preprocess(open_image(pictures["the_scream"]), 64)
    first = tg.blended_grams(net, [a], [1.0], [1, 4])
    again = tg.blended_grams(net, [a.copy()], [1.0], [1, 4])
    assert net.calls == 1 and all(np.array_equal(first[k], again[k]) for k in (1, 4))
    _, direct = tg.targets(net.net, None, a, 0, [1, 4])
    assert all(np.array_equal(direct[k], first[k]) for k in (1, 4))
    other = tg.blended_grams(net, [b], [1.0], [1, 4])
    assert net.calls == 2 and not np.array_equal(other[1], first[1])
    tg.blended_grams(net, [a, b], [1.0, 2.0], [1, 4])
    assert net.calls == 4
    entries = len(tg._GRAMS)
    del net
    gc.collect()
    assert len(tg._GRAMS) <= entries - 3


def test_engine_resume_runs_a_dead_engines_jobs_from_the_store(tmp_path, pictures, cluster):
    """An engine closed (as a server killed) with a job running and one queued: a new engine on the same store
    submits both again from their kept bytes, and both succeed; the running one counts 2 attempts."""
    from nst_core.jobs.engine import Engine, Input
    from nst_core.jobs.store import open_store as _open
    from nst_core.spec.spec import make

    t, s = pictures["tubingen"], pictures["the_scream"]
    inputs = [Input("content", t, Path(t).read_bytes()), Input("style", s, Path(s).read_bytes())]
    path = str(tmp_path / "jobs.sqlite")
    first = Engine(_open(path), scheduler=cluster["address"])
    ids = [first.submit(make("stylize", content=t, styles=(s,), size=64, iterations=n), inputs, owner="me")
           for n in (150, 150, 10)]
    wait_for("a running job", lambda: any(first.status(j).evaluations > 0 for j in ids))
    first.close()
    second = Engine(_open(path), scheduler=cluster["address"])
    started = [j for j in ids if second.status(j).attempts == 1 and not second.status(j).final]
    try:
        assert sorted(second.resume(owner="me")) == sorted(j for j in ids if not second.status(j).final)
        wait_for("the resumed jobs", lambda: all(second.status(j).final for j in ids))
        for j in ids:
            rec = second.status(j)
            assert rec.status == "succeeded", rec.error
            assert rec.attempts == (2 if j in started else 1)
            (tmp_path / f"{j}.png").write_bytes(second.result(j))
            check_picture(tmp_path / f"{j}.png", 64, [t, s])
        assert started  # the case at stake happened
    finally:
        second.close()


def test_bad_invocations_are_one_line_exit_2(tmp_path, pictures, capsys):
    """Each before any cluster starts (the command's main, in this process)."""
    import fcntl

    import cli

    t, s = pictures["tubingen"], pictures["starry_night"]
    good = write_manifest(tmp_path / "m.jsonl", [{"content": t, "style": s, "output": "a.png", "size": 64}])
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [([tmp_path / "none.jsonl", "-o", tmp_path / "o1"], "none.jsonl: no such manifest file"),
             ([tmp_path / "empty.jsonl", "-o", tmp_path / "o2"], "no jobs"),
             ([good, "-o", tmp_path / "file"], "file: not a directory"),
             ([good, "-o", tmp_path / "o3", "--workers", "0"], "--workers must be >= 1"),
             ([good, "-o", tmp_path / "o4", "--store", "nosuchdb://x/y"], "cannot open the job store"),
             ([good, "-o", locked], "another nst batch is running on this directory")]
    with open(locked / ".nst-batch.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for args, message in cases:
            code = cli.main(["batch", *map(str, args)])
            err = capsys.readouterr().err
            assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
