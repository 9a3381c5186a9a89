"""How ONNX Runtime's CPU buffers are allocated: its arena, or the C library's malloc with huge pages.

One evaluation at 1024 px allocates and frees a few GB of feature maps and gradients. Three ways to serve them,
measured on the 2-core development machine with the one-session objective (bench/bench_objective.py, memory):

- ORT's arena, one for all sessions, grown by what is asked (``shared``): fast, but it never gives memory back
  and fragments: peak 1.7 GB at 1024 px, 6.6 GB at 2048 px (torch: 1.4 / 3.7 GB).
- No arena, malloc with 4 KiB pages (``off`` without huge pages): peak 1.0 / 3.2 GB, but every large buffer is
  fresh mmap'd memory, and the page faults made evaluations ~1.7x slower.
- No arena, malloc with transparent huge pages (``off`` with glibc's ``glibc.malloc.hugetlb=1`` tunable, or the
  kernel's THP mode ``always``): the same 1.0 / 3.2 GB at about the arena's speed, 512x fewer page faults.

``arena_mode()`` picks: ``$NST_ORT_ARENA`` (shared | off | default) when set, else ``off`` when huge pages back
malloc in this process and ``shared`` otherwise. glibc reads its tunables only at process start, so the ``nst``
command re-executes itself once with the tunable set (``reexec_env``) when the kernel offers THP on request.
This module imports nothing heavy: the CLI calls it before NumPy or ONNX Runtime are loaded.
"""
from __future__ import annotations

import os
import sys

try:
    import resource  # Unix only
except ImportError:  # pragma: no cover
    resource = None

THP_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
TUNABLE = "glibc.malloc.hugetlb=1"
REEXEC_MARK = "NST_REEXECUTED"
ARENA_MODES = ("shared", "off", "default")


def _thp_mode() -> str:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or '' when unknown."""
    try:
        with open(THP_FILE) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def _glibc_has_hugetlb_tunable() -> bool:
    """glibc >= 2.35 (the first with glibc.malloc.hugetlb)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(v) for v in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):
        return False
    return name == "glibc" and (major, minor) >= (2, 35)


def _tunable_set(env) -> bool:
    return any(part.strip() == TUNABLE for part in env.get("GLIBC_TUNABLES", "").split(":"))


def malloc_uses_huge_pages(env=None) -> bool:
    """True when large malloc blocks of this process get transparent huge pages."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return False
    mode = _thp_mode()
    return mode == "always" or (mode == "madvise" and _tunable_set(env) and _glibc_has_hugetlb_tunable())


def arena_mode(env=None) -> str:
    """'shared', 'off' or 'default' (ORT's own arena per session): see the module docstring."""
    env = os.environ if env is None else env
    mode = env.get("NST_ORT_ARENA", "").strip().lower()
    if mode in ARENA_MODES:
        return mode
    return "off" if malloc_uses_huge_pages(env) else "shared"


def reexec_env(env=None):
    """The environment to re-execute the process with so that malloc uses huge pages, or None when that is not
    needed or not possible (not Linux, THP not offered on request, glibc too old, already done, or the user chose
    the arena with NST_ORT_ARENA)."""
    env = os.environ if env is None else env
    if (env.get(REEXEC_MARK) or env.get("NST_ORT_ARENA") or not sys.platform.startswith("linux")
            or malloc_uses_huge_pages(env) or _thp_mode() != "madvise" or not _glibc_has_hugetlb_tunable()):
        return None
    new = dict(env)
    new["GLIBC_TUNABLES"] = ":".join(p for p in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if p)
    new[REEXEC_MARK] = "1"
    return new


def reexec_with_huge_pages() -> None:
    """Replace this process by a fresh run of the same command line (``sys.orig_argv``) in ``reexec_env()``, when
    that is not None; otherwise (or if exec fails) return and carry on with the ORT arena."""
    env = reexec_env()
    if env is None or not sys.executable:
        return
    for stream in (sys.stdout, sys.stderr):  # None when the descriptor was closed at start
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------------
# How much memory a run needs
#
# Peak resident memory (VmHWM) of `stylize(..., scales=1)`, our lbfgs with history 20, Tübingen / Starry Night,
# huge-page malloc, 2-core development machine (load average ~4 from other jobs), 2026-12-01, after issue 14's memory
# work (bench/bench_memory.py --fit):
#   --size            256    384    512    768    768   1024   2048 (default schedule)   A4 3508x2480 (default)
#   evaluations        25      3     25      3     25     25    426 (20 at the last scale)  426
#   pairs stored       20      2     20      2     20     20      5 at the last scale        5
#   MB                275    347    530    852   1001   1550   3472                        5205
# With the pairs' known 24 bytes per pixel each (float32 s and y, 3 values per pixel), 230 MB + 586 bytes per pixel
# for the rest has the smallest largest error: -17.2 % (768 px, 3 evaluations) .. +17.0 % (A4), over-estimating the
# big runs. Where the bytes per output pixel go at the default schedule's last scale at 2048 px (--breakdown, medians
# over its 20 ONNX Runtime calls): 310 resident when a call starts, 262 of them NumPy's (pairs 120; iterate, trial
# point and gradient 72; direction and free mask 15; the objective's float32 x 12; the content target 32; earlier
# scales' best points 10), and 319 more during the call (ORT's tensors of one evaluation): 3421 MB. Before this work
# (f7c934b; 5411 MB in bench_memory.py's run against it): 418 B/px NumPy (+ the float64 direction, step and gradient-change buffers, the best
# point's copy, the float32 mask, the spare pair slot, the Problem's start image: 156) and 495 during the call
# (the ReLU masks and style gradients computed before the backward and held through it, nst_core/vjp.py).
# Adam / gradient descent at 512 px (25 evaluations): 495 / 525 MB (adam keeps m, v and the best point: ~300 B/px
# more than lbfgs's rest); SciPy's L-BFGS-B with 20 pairs: 820 MB (~59 B/px per pair; 72 assumed).

BASE_MB = 230.0
PIXEL_BYTES = 586.0


#: Bytes per pixel of a style image's pass through the network (its float32 copy, the feature maps of the active
#: layers ORT holds, the Gram products), huge-page malloc: peak resident growth 243 B/px at 11.4 MP (--style-size
#: 3000, starry_night's layers 1..7), 215 at 1.3 MP; 250 keeps a margin. Every other style of a blend waits as its
#: float32 copy: STYLE_INPUT_BYTES.
STYLE_PIXEL_BYTES = 250.0
STYLE_INPUT_BYTES = 12.0
#: Bytes per pixel of a decoded input file: Pillow's RGB holds 4 bytes per pixel, and the EXIF transpose copies it.
INPUT_PIXEL_BYTES = 8.0
#: What a run adds beyond the resident memory of the process when the check runs (NumPy, ORT loaded: 140 MB
#: measured) before its first pixel: the model, the sessions: BASE_MB minus those 140 MB, rounded up.
SESSION_MB = 100.0
#: ORT's arena (``shared``, ``default``) against huge-page malloc (``off``): its peak was 1.7x at 1024 px and 2.1x
#: at 2048 px (6.6 / 3.2 GB, the module docstring), 1.33x in a style pass of 11 MP; the check takes 2.
ARENA_FACTOR = {"off": 1.0, "shared": 2.0, "default": 2.0}


def arena_factor(env=None) -> float:
    """``ARENA_FACTOR`` of this process's ``arena_mode``: the growth of a run relative to the fitted estimates."""
    return ARENA_FACTOR[arena_mode(env)]


def optimizer_bytes(optimizer: str, pairs: int) -> float:
    """Bytes per output pixel that ``optimizer`` adds to ``PIXEL_BYTES`` (fitted with our lbfgs): our lbfgs's
    correction pairs (2 * pairs float32 vectors of 3 values per pixel); adam and gd hold no pairs but more
    float64 vectors (about 300 B/px more, measured at 512 px); SciPy's L-BFGS-B about 3 * pairs float64
    vectors."""
    if optimizer == "lbfgs":
        return 24.0 * pairs
    if optimizer == "lbfgsb":
        return 24.0 * 3 * pairs
    return 300.0


def estimate_peak_mb(pixels: int, optimizer: str = "lbfgs", history: int = 20, evaluations: int = 200) -> float:
    """Estimated peak resident memory (MB) of one optimisation of an output of ``pixels`` pixels (H * W) with
    ``optimizer`` keeping ``history`` pairs (at most ``evaluations - 1`` are ever stored)."""
    pairs = max(1, min(int(history), int(evaluations) - 1))
    return BASE_MB + pixels * (PIXEL_BYTES + optimizer_bytes(optimizer, pairs)) / 2**20


def available_mb(meminfo: str = "/proc/meminfo") -> float | None:
    """Memory available to a new process now (Linux MemAvailable, MB), or None when unknown."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------------------------------------------
# How much memory this process may still take: the tightest of the limits that apply
#
# - MemAvailable (/proc/meminfo): what the kernel can give without swapping, machine-wide.
# - The memory cgroup's limit (a container's `--memory`, a systemd unit's MemoryMax): cgroup v2's memory.max or v1's
#   memory.limit_in_bytes, of the process's cgroup and of every ancestor up to the mount (the tightest applies),
#   minus what the group already uses; its page cache that can be dropped (inactive_file) counts as free, as
#   `docker stats` counts it.
# - RLIMIT_AS (`ulimit -v`): address space, minus what this process has mapped now (VmSize). Address space is not
#   resident memory: ONNX Runtime's threads and malloc's per-thread arenas reserve more than they touch, measured
#   +56 MB (huge-page malloc) and +228 MB (ORT's shared arena) over the resident growth of a style pass of 1.3 to 11 MP,
#   so the address-space limit keeps VIRTUAL_SLACK_MB more.

VIRTUAL_SLACK_MB = 256.0
CGROUP_ROOT = "/sys/fs/cgroup"
NO_LIMIT = 2 ** 60  # v1 writes "no limit" as a page-rounded 2^63 - 1; anything this large means none

#: The one line printed for an allocation that failed in spite of the estimate (the cause named by the caller).
OUT_OF_MEMORY = "out of memory; try a smaller --size or --style-size"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text: str | None) -> int | None:
    """A cgroup limit or counter in bytes; None for "max", an absent file or nonsense."""
    if text is None:
        return None
    try:
        value = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return value if value < NO_LIMIT else None


def _stat_value(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _cgroup_dirs(proc_cgroup: str, mountinfo: str) -> list[tuple[str, str]]:
    """[(directory, version)] of this process's memory cgroup and its ancestors up to the mount, innermost first:
    version "2" (unified hierarchy, line ``0::/path``) or "1" (the ``memory`` controller's line)."""
    mounts = {}  # version -> (mount root inside the hierarchy, mount point)
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.setdefault("2", (fields[3], fields[4]))
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            mounts.setdefault("1", (fields[3], fields[4]))
    out = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        version = "2" if hierarchy == "0" and controllers == "" else "1" if "memory" in controllers.split(",") else ""
        if version not in mounts:
            continue
        root, point = mounts[version]
        relative = path[len(root):] if root != "/" and path.startswith(root) else path
        parts = [p for p in relative.split("/") if p]
        out += [(os.path.join(point, *parts[:k]), version) for k in range(len(parts), -1, -1)]
    return out


def cgroup_headroom_mb(proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> float | None:
    """MB the memory cgroups of this process still allow (the tightest limit of the group and its ancestors, minus
    the group's usage without its inactive page cache), or None when no limit is set or none can be read."""
    best = None
    for directory, version in _cgroup_dirs(_read(proc_cgroup) or "", _read(mountinfo) or ""):
        if version == "2":
            limit = _number(_read(os.path.join(directory, "memory.max")))
            usage = _number(_read(os.path.join(directory, "memory.current")))
            cache = _stat_value(_read(os.path.join(directory, "memory.stat")), "inactive_file")
        else:
            limit = _number(_read(os.path.join(directory, "memory.limit_in_bytes")))
            usage = _number(_read(os.path.join(directory, "memory.usage_in_bytes")))
            cache = _stat_value(_read(os.path.join(directory, "memory.stat")), "total_inactive_file")
        if limit is None:
            continue
        free = (limit - max(0, (usage or 0) - cache)) / 2**20
        best = free if best is None else min(best, free)
    return best


def _status_mb(key: str, status: str = "/proc/self/status") -> float | None:
    for line in (_read(status) or "").splitlines():
        if line.startswith(key + ":"):
            try:
                return int(line.split()[1]) / 1024
            except (ValueError, IndexError):
                return None
    return None


def address_space_headroom_mb() -> float | None:
    """MB of address space RLIMIT_AS (``ulimit -v``) still allows this process beyond what it has mapped now,
    less ``VIRTUAL_SLACK_MB``; None when unlimited or unknown."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _status_mb("VmSize")
    if soft == resource.RLIM_INFINITY or mapped is None:
        return None
    return soft / 2**20 - mapped - VIRTUAL_SLACK_MB


def resident_mb() -> float | None:
    """This process's resident memory now (VmRSS, MB), or None when unknown."""
    return _status_mb("VmRSS")


def headroom() -> tuple[float, str] | None:
    """The tightest of the limits above: ``(MB this process may still grow by, what limits it)`` with what one of
    "free memory", "the cgroup's memory limit", "ulimit -v"; None when none is known."""
    found = [(mb, what) for mb, what in ((available_mb(), "free memory"),
                                         (cgroup_headroom_mb(), "the cgroup's memory limit"),
                                         (address_space_headroom_mb(), "ulimit -v")) if mb is not None]
    return min(found) if found else None


#: ORT reports a failed allocation as a RuntimeException (or Fail) whose text names these.
_ALLOCATION_WORDS = ("bad_alloc", "Failed to allocate memory", "failed to allocate memory")


def is_allocation_failure(exc: BaseException) -> bool:
    """A MemoryError, or ONNX Runtime's exception for a failed allocation (std::bad_alloc inside a kernel; its
    class lives in ``onnxruntime.capi.onnxruntime_pybind11_state``)."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__module__.startswith("onnxruntime") and any(w in str(exc) for w in _ALLOCATION_WORDS)
