"""Finding, checking and running the feature model: ONNX Runtime sessions for the forward and the VJP.

The model is ``features.onnx`` written by ``nst export``: input ``image`` float32 [1,3,H,W] (ImageNet-normalised),
outputs ``features.0`` .. ``features.12``. It is looked up at ``--model PATH``, else ``$NST_HOME/features.onnx``,
else in the user's cache directory (``$XDG_CACHE_HOME/nst`` or ``~/.cache/nst``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx

from ..process import memory
from ..process.threads import ort_threads
from . import lossgraph, vjp
from ..errors import NSTError

MODEL_FILE = "features.onnx"
INPUT = "image"


def tap_name(layer: int) -> str:
    """The ONNX output name of tap `layer` (torchvision's module index in `features`)."""
    return f"features.{layer}"


def cache_dir() -> Path:
    """Where `nst export` writes the model by default and where runtime commands look for it."""
    if os.environ.get("NST_HOME"):
        return Path(os.environ["NST_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nst"


def _how_to_make(path: Path) -> str:
    """What to do about a missing or wrong model at `path`: remake it where nst export writes, or point --model at
    one (nst export writes DIR/features.onnx, so it never replaces a file of another name)."""
    if path.name != MODEL_FILE:
        return (f"--model takes the {MODEL_FILE} that `nst export [--out DIR]` writes (default: "
                f"{cache_dir() / MODEL_FILE})")
    out = "" if path.parent == cache_dir() else f" --out {path.parent}"
    return f"make it with: nst export --weights FILE{out}  (or without --weights to download torchvision's)"


def find_model(path: str | os.PathLike | None = None) -> Path:
    """The model file to use: `path`, else $NST_HOME/features.onnx, else the cache directory's. NSTError if absent."""
    p = Path(path).expanduser() if path else cache_dir() / MODEL_FILE
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise NSTError(f"no model at {p}: {_how_to_make(p)}")
    return p


#: Leading bytes of files people point --model at by mistake: (signature, what the file is).
_NOT_ONNX = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
             (b"RIFF", "a RIFF file (WebP, WAV, AVI)"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
             (b"BM", "a BMP image"), (b"PK\x03\x04", "a zip archive (a .pth or .npz file?)"),
             (b"\x93NUMPY", "a NumPy array"), (b"{", "a JSON or text file"),
             *((b"\x80" + bytes([v]), "a Python pickle (a .pth file?)") for v in (2, 3, 4, 5)))

#: ONNX element types by number, for messages.
_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64", 2: "uint8"}


def _what_file(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    return next((f" (it is {what})" for sig, what in _NOT_ONNX if head.startswith(sig)), "")


def _dims(vi) -> list:
    """The dims of a value_info: ints where fixed, None where dynamic (a dim_param or nothing)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _input_problem(vi) -> str | None:
    """What is wrong with the model's input `image` for nst, or None: float32 [1 or N, 3, H, W] with H, W dynamic."""
    t = vi.type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        return f"its input {INPUT} is {_DTYPES.get(t.elem_type, f'element type {t.elem_type}')}, not float32"
    if not t.HasField("shape"):
        return None  # no shape declared: ONNX Runtime takes any; the first Conv's weights fix the channels
    dims = _dims(vi)
    if len(dims) != 4:
        return f"its input {INPUT} has rank {len(dims)}, not 4 (expected [1, 3, H, W])"
    if dims[0] not in (None, 1):
        return f"its input {INPUT} has a fixed batch of {dims[0]}, not 1"
    if dims[1] != 3 and dims[1] is not None:
        return f"its input {INPUT} has {dims[1]} channels, not 3 (RGB)"
    if dims[2] is not None or dims[3] is not None:
        fixed = "x".join("H" if d is None else str(d) for d in dims[2:])
        return f"its input {INPUT} has a fixed size {fixed} (nst needs dynamic H and W: every picture has its own)"
    return None


def _outputs_problem(model: onnx.ModelProto) -> str | None:
    """What is wrong with the model's outputs, or None: every one named features.K, float32, rank 4 when declared."""
    names = [o.name for o in model.graph.output]
    wrong = [n for n in names if not re.fullmatch(r"features\.(\d|1[0-2])", n)]
    if not names or wrong:
        return (f"its outputs are {', '.join(names[:3]) or 'none'}{'...' if len(names) > 3 else ''}, not the "
                f"taps {tap_name(0)} .. {tap_name(12)}")
    for o in model.graph.output:
        t = o.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            return f"its output {o.name} is {_DTYPES.get(t.elem_type, f'element type {t.elem_type}')}, not float32"
        if t.HasField("shape") and len(t.shape.dim) != 4:
            return f"its output {o.name} has rank {len(t.shape.dim)}, not 4"
    return None


def load_model(path: str | os.PathLike | None = None, taps=()) -> onnx.ModelProto:
    """Load and check the feature model: it must parse as ONNX, take one input `image` float32 [1, 3, H, W] with H
    and W dynamic, output float32 taps named features.K and every tap in `taps` (names like 'features.3'), and pass
    onnx.checker. NSTError (one line naming the file, what is wrong, and how to get a correct one) otherwise."""
    p = find_model(path)
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise NSTError(f"{p}: not an ONNX model{_what_file(p) or f' ({type(e).__name__})'}; "
                       f"{_how_to_make(p)}") from None
    if not model.ir_version or not model.graph.node:  # random bytes can parse as an empty protobuf message
        raise NSTError(f"{p}: not an ONNX model{_what_file(p)}; {_how_to_make(p)}")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT]:
        raise NSTError(f"{p}: not an nst feature model (inputs {[i.name for i in inputs]}, expected ['{INPUT}']); "
                       f"{_how_to_make(p)}")
    problem = _input_problem(inputs[0]) or _outputs_problem(model)
    if problem:
        raise NSTError(f"{p}: not an nst feature model: {problem}; {_how_to_make(p)}")
    outputs = {o.name for o in model.graph.output}
    missing = [t for t in taps if t not in outputs]
    if missing:
        raise NSTError(f"{p}: lacks the tap {missing[0]} (it has {len(outputs)} outputs); {_how_to_make(p)}")
    # A file cut at a top-level field boundary still parses (e.g. without its opset_import), and a damaged one can
    # reference missing weights: ONNX Runtime would then fail with a traceback. The checker takes a few ms.
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise NSTError(f"{p}: not a valid ONNX model (onnx.checker: {detail}); {_how_to_make(p)}") from None
    return model


def metadata(model: onnx.ModelProto) -> dict:
    """metadata_props of the model, JSON values decoded where they parse."""
    out = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


try:  # an optional dependency: the [cpu] or the [gpu] extra installs it
    import onnxruntime as _onnxruntime
except ImportError:  # pragma: no cover - reported when a session is needed
    _onnxruntime = None


def _ort():
    if _onnxruntime is None:
        raise NSTError("onnxruntime is not installed: pip install 'nst-onnx[cpu]' (or [gpu] for CUDA)")
    return _onnxruntime


def ort_version():
    """The installed onnxruntime's version, or None."""
    return None if _onnxruntime is None else _onnxruntime.__version__


def providers(device: str = "auto") -> list[str]:
    """ORT execution providers for `device` in {'auto', 'cpu', 'cuda'}."""
    available = _ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise NSTError("--device cuda needs onnxruntime-gpu with CUDA (installed providers: "
                           f"{', '.join(available)}); pip install 'nst-onnx[gpu]' instead of [cpu]")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    raise NSTError(f"unknown device {device!r} (choose auto, cpu or cuda)")


_ARENA = []


def _shared_arena(ort) -> bool:
    """Register (once per process) a CPU arena allocator that extends by the requested size."""
    if not _ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: kSameAsRequested
            _ARENA.append(True)
        except Exception:  # pragma: no cover - older ORT without env allocators
            _ARENA.append(False)
    return _ARENA[0]


#: ORT's memory pattern (SessionOptions.enable_mem_pattern, ORT's default: on): it plans an evaluation's buffers
#: as one block sized by the first run's allocation trace. Turning it off once lowered one evaluation's peak at
#: 2048 px; since the backward's masks and the losses' gradients are computed where they are used
#: (``vjp.Builder.zero_after``), on and off peak the same (bench/bench_memory.py's pattern section), so it stays on.
MEM_PATTERN = True

# Graph optimisation settings a session can be built with: (ORT level name, rewrites switched off).
OPTIMIZATIONS = {
    "all": ("ORT_ENABLE_ALL", ()),  # the default
    "no-layout": ("ORT_ENABLE_ALL", ("NchwcTransformer",)),
    "extended": ("ORT_ENABLE_EXTENDED", ()),
    "basic": ("ORT_ENABLE_BASIC", ()),  # constant folding and redundancy removal only: the tests' reference
}


def session(model: onnx.ModelProto, device: str = "auto", threads: int = 0, optimization: str = "all",
            options=None):
    """An ORT InferenceSession for `model`. Thread spinning is off: our forward and backward sessions alternate,
    and spinning made that ~1.8x slower on 2 cores (DESIGN.md). The CPU memory arena: ``memory.arena_mode()``;
    ORT's memory pattern: ``MEM_PATTERN``.

    optimization: a key of OPTIMIZATIONS. The default is ORT_ENABLE_ALL, NCHWc layout rewrite included. That
    rewrite (NchwcTransformer: blocked-channel Conv/MaxPool kernels, on CPUs with AVX2 or AVX-512) was suspected in
    issue 13 of giving wrong gradients on an AVX-512 machine. It does not: bench/repro_relu_tie.py is the minimal
    reproducer (the model cut at one Conv, no backward at all): on that input one pre-activation is +1.3e-5 in
    float64 while every float32 implementation (torch, ORT with and without the rewrite) is off by up to 8e-5 in
    that tensor, so its ReLU is on or off by rounding luck, and that one unit moves the gradient by 1e-3. With the
    activation pattern fixed, the rewritten graph's gradient equals float64 torch's on the same piece within 2.5e-7
    (tests/test_ort_rewrite.py, tests/kinks.py). Kept on because it is faster: per evaluation, off/on 1.03-1.08 at
    256-1024 px (bench/bench_layout.py). DESIGN-NOTES.md has the whole story."""
    ort = _ort()
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATIONS)}")
    level, disabled = OPTIMIZATIONS[optimization]
    opts = options or ort.SessionOptions()  # options: e.g. the benchmarks' profiler settings, completed here
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if disabled:
        opts.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(disabled))
    opts.log_severity_level = 4  # fatal only: a failing kernel's error comes back as the exception, said in one line
    opts.enable_mem_pattern = MEM_PATTERN
    mode = memory.arena_mode()
    if mode == "off":
        opts.enable_cpu_mem_arena = False
    elif mode == "shared" and _shared_arena(ort):
        # One arena for all sessions, grown by what is asked rather than by powers of two (ORT's default): peak
        # memory at 2048 px fell from ~10 GB to ~6.6 GB, without the page-fault cost of no arena on 4 KiB pages
        # (nst_core/memory.py has the measurements and when "off" is chosen instead).
        opts.add_session_config_entry("session.use_env_allocators", "1")
    threads = threads or ort_threads()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers(device))


class Network:
    """The feature network with its VJP, for one set of taps.

    forward(x) runs the network once and keeps what the backward needs; backward(cotangents) then returns
    dL/dx for that x. objective(...) instead runs forward, the CS231n losses and the VJP in one session
    (``nst_core.lossgraph``). Arrays: x float32 [1,3,H,W] normalised; taps as returned by the model (float32).
    Sessions are built on first use."""

    def __init__(self, model: onnx.ModelProto, taps, device: str = "auto", threads: int = 0,
                 maxpool: str = "scatter", optimization: str = "all"):
        self.taps = list(dict.fromkeys(taps))
        providers(device)  # NSTError now for a device this ORT build lacks
        self._model, self._device, self._threads, self._maxpool = model, device, threads, maxpool
        self._optimization = optimization  # session() graph optimisation; tests compare "all" with "basic"
        self._graph = vjp.build_vjp(model, self.taps, INPUT, maxpool=maxpool)  # UnsupportedOperator now
        self._split = None  # (forward model, backward model)
        self._fwd = self._bwd = None  # their sessions, each built on first use
        self._objectives: dict[tuple, object] = {}
        self._saved: dict[str, np.ndarray] = {}

    def _split_models(self):
        if self._split is None:
            self._split = vjp.split_models(self._graph)
        return self._split

    def _forward_session(self):
        if self._fwd is None:
            fwd = self._split_models()[0]
            sess = session(fwd, self._device, self._threads, self._optimization)
            self._fwd = (sess, [o.name for o in fwd.graph.output])
        return self._fwd

    def features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{tap: features} for x [1,3,H,W], keeping nothing for a backward (the loss targets)."""
        sess, _ = self._forward_session()
        return dict(zip(self.taps, sess.run(self.taps, {INPUT: np.ascontiguousarray(x, dtype=np.float32)})))

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{tap: features} for x [1,3,H,W]; remembers the tensors the next backward() needs."""
        sess, outputs = self._forward_session()
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = sess.run(outputs, {INPUT: x})
        self._saved = dict(zip(outputs, outs))
        self._saved[INPUT] = x
        return {t: self._saved[t] for t in self.taps}

    def saved(self) -> dict[str, np.ndarray]:
        """The tensors the last forward() kept for backward(), by ONNX name: the image, the ReLU outputs whose
        masks the backward applies and the max pools' inputs (float32, the arrays backward() will read)."""
        if not self._saved:
            raise RuntimeError("saved() before forward()")
        needed = {i.name for i in self._split_models()[1].graph.input}
        return {k: v for k, v in self._saved.items() if k in needed}

    def backward(self, cotangents: dict[str, np.ndarray], saved: dict | None = None) -> np.ndarray:
        """dL/dx [1,3,H,W] float32 at the last forward's x, given dL/d(tap) for each tap (same shapes).
        saved: the forward tensors to use instead of the last forward's (a ``saved()`` dict, e.g. of another
        Network on the same model: the backward is then the same linear map, whatever rounding each forward did)."""
        saved = self._saved if saved is None else saved
        if not saved:
            raise RuntimeError("backward() before forward()")
        if self._bwd is None:
            bwd = self._split_models()[1]
            sess = session(bwd, self._device, self._threads, self._optimization)
            self._bwd = (sess, [i.name for i in bwd.graph.input])
        sess, inputs = self._bwd
        feeds = {}
        for name in inputs:
            if name.startswith("grad_"):
                feeds[name] = np.ascontiguousarray(cotangents[name[5:]], dtype=np.float32)
            else:
                feeds[name] = saved[name]
        return sess.run(["grad_image"], feeds)[0]

    def objective(self, content_tap: str | None, content_target, content_weight: float, grams: dict,
                  style_weights: dict, tv_weight: float = 0.0):
        """``run(x) -> (content_loss, style_loss, dL/dx)``: the network, the CS231n content and style losses and
        their gradient in one ORT session (built once per (content_tap, style taps, TV or not) and cached). With
        a non-zero ``tv_weight`` the TV term is in the session too and ``run(x) -> (content_loss, style_loss,
        tv_loss, dL/dx)``, dL/dx then including dTV/dx (``lossgraph.objective_model``'s ``tv``).

        content_tap: a tap or None; content_target float32 of that tap's shape; grams {tap: float32 [C, C]};
        style_weights {tap: w} (same keys). x float32 [1,3,H,W]; the losses are floats (float64 sums), dL/dx is
        float32 [1,3,H,W] (a new array)."""
        style_taps = tuple(style_weights)
        tv = float(tv_weight) != 0.0
        key = (content_tap, style_taps, tv)
        if key not in self._objectives:
            model = lossgraph.objective_model(self._model, content_tap, style_taps, INPUT, maxpool=self._maxpool,
                                              tv=tv)
            self._objectives[key] = session(model, self._device, self._threads, self._optimization)
        sess = self._objectives[key]
        feeds = {}
        if content_tap:
            feeds[lossgraph.CONTENT_TARGET] = np.ascontiguousarray(content_target, dtype=np.float32)
            feeds[lossgraph.CONTENT_WEIGHT] = np.array(float(content_weight))
        for tap in style_taps:
            feeds[lossgraph.gram_input(tap)] = np.ascontiguousarray(grams[tap], dtype=np.float32)
            feeds[lossgraph.style_weight_input(tap)] = np.array(float(style_weights[tap]))
        outputs = list(lossgraph.OUTPUTS_TV if tv else lossgraph.OUTPUTS)
        if tv:
            feeds[lossgraph.TV_WEIGHT] = np.array(float(tv_weight))

        def run(x: np.ndarray):
            feeds[INPUT] = np.ascontiguousarray(x, dtype=np.float32)
            *losses, grad = sess.run(outputs, feeds)
            return (*(float(v) for v in losses), grad)

        return run
