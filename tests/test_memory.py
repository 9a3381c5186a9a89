"""How ORT's buffers are allocated (nst_core.process.memory): the choice of arena, the re-execution with glibc's huge-page
tunable, and that the real `nst` command ends up with it where the kernel offers THP on request."""
import subprocess
import sys

import pytest

from nst_core.process import memory


@pytest.fixture
def linux_madvise(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(memory, "_glibc_has_hugetlb_tunable", lambda: True)


def test_arena_follows_huge_pages(linux_madvise, monkeypatch):
    assert memory.arena_mode({}) == "shared"
    assert memory.arena_mode({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == "off"
    assert memory.arena_mode({"GLIBC_TUNABLES": "glibc.malloc.check=1:glibc.malloc.hugetlb=1"}) == "off"
    assert memory.arena_mode({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == "shared"
    for mode in memory.ARENA_MODES:  # the user's choice wins
        assert memory.arena_mode({"NST_ORT_ARENA": mode, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == mode
    monkeypatch.setattr(memory, "_thp_mode", lambda: "always")
    assert memory.arena_mode({}) == "off"
    monkeypatch.setattr(memory, "_thp_mode", lambda: "never")
    assert memory.arena_mode({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == "shared"


def test_reexec_env(linux_madvise, monkeypatch):
    env = memory.reexec_env({"GLIBC_TUNABLES": "glibc.malloc.check=1", "PATH": "/bin"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.check=1:glibc.malloc.hugetlb=1", "PATH": "/bin",
                   memory.REEXEC_MARK: "1"}
    assert memory.reexec_env({}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", memory.REEXEC_MARK: "1"}
    assert memory.reexec_env({memory.REEXEC_MARK: "1"}) is None  # once only, even if the tunable did not take
    assert memory.reexec_env({"NST_ORT_ARENA": "shared"}) is None
    assert memory.reexec_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None  # already there
    monkeypatch.setattr(memory, "_glibc_has_hugetlb_tunable", lambda: False)
    assert memory.reexec_env({}) is None
    monkeypatch.setattr(memory, "_glibc_has_hugetlb_tunable", lambda: True)
    for mode in ("always", "never", ""):
        monkeypatch.setattr(memory, "_thp_mode", lambda mode=mode: mode)
        assert memory.reexec_env({}) is None
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    monkeypatch.setattr(memory, "_thp_mode", lambda: "madvise")
    assert memory.reexec_env({}) is None and memory.arena_mode({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == \
        "shared"


def test_nst_command_runs_with_huge_pages(env):
    """`nst info` (the installed script) reports the memory mode it runs with: huge pages where this machine offers
    them on request, the shared arena otherwise; and an explicit NST_ORT_ARENA is obeyed without re-execution."""
    nst = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "info"]
    clean = {k: v for k, v in env.items() if k not in ("GLIBC_TUNABLES", "NST_ORT_ARENA", memory.REEXEC_MARK)}
    out = subprocess.run(nst, env=clean, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("memory:")][0]
    if memory.reexec_env(clean) is not None or memory.malloc_uses_huge_pages(clean):
        assert "huge pages" in line and "NST_ORT_ARENA=off" in line
    else:
        assert "NST_ORT_ARENA=shared" in line
    out = subprocess.run(nst, env=dict(clean, NST_ORT_ARENA="default"), capture_output=True, text=True)
    assert "NST_ORT_ARENA=default" in out.stdout
