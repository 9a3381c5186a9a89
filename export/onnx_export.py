"""Export SqueezeNet 1.1's 13 ``features`` taps to ONNX (``features.onnx``), atomically.

The model written by :func:`export_features`:

* input ``image``: float32 ``[1, 3, H, W]``, H and W dynamic (symbols ``"H"``, ``"W"``, each >= 17 px), batch
  fixed at 1 (the losses use batch-1 Gram matrices). It is the *normalised* image: RGB in [0, 1] minus the ImageNet
  mean, divided by the std (both stored in the metadata); normalisation is not part of the graph.
* outputs ``features.0`` .. ``features.12``: float32 ``[1, C_i, h_i, w_i]``, the output of each module of
  torchvision's ``features`` in order (channels ``TAP_CHANNELS``; spatial sizes: see
  ``export.squeezenet.tap_shapes``). The declared spatial dims are the symbols ``H_2``/``W_2`` (taps 0-1, after the
  stride-2 conv), ``H_4``/``W_4`` (taps 2-4), ``H_8``/``W_8`` (5-7) and ``H_16``/``W_16`` (8-12); they name the
  resolution level, they are not exact divisions of H and W.
* ops: only default-domain ``Conv``, ``Relu``, ``MaxPool`` (k3, s2, ``ceil_mode=1``) and ``Concat``; 61 nodes.
  Every Conv weight and bias is an initializer named like torchvision's state_dict key
  (``features.3.expand3x3.weight``), which the reverse-mode (VJP) builder reads by name.
* ``metadata_props``: ``mean``, ``std``, ``taps`` (JSON lists), ``weights_sha256``, ``weights_source``,
  ``min_input_size``, ``input``, ``model``, ``producer`` (JSON object: tool, torch/onnx versions, exporter).

Exporter choice (measured on this 2-core AMD EPYC, torch 2.13.0 CPU, onnxscript 0.7.2, onnx 1.23):
``torch.onnx.export(dynamo=False)`` (TorchScript) took 0.27 s for the export call itself (about 4 s for a whole
process, most of it ``import torch``); ``dynamo=True`` took 16-18 s (optimize on or off), printed "torchvision is not
installed" warnings, attached stack-trace/fx metadata to every node and declared wrong output dims
(``8*s30 - 1``). Both give the same 61-node graph and bit-identical outputs in ONNX Runtime. So the default
(``exporter="auto"``) uses the TorchScript exporter (its DeprecationWarning is suppressed) and falls back to dynamo
only if the TorchScript exporter fails (e.g. removed from a future torch); either way the graph is normalised
(node metadata and value_info stripped, output dims re-declared) and validated the same way.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from nst_core.errors import NSTError
from nst_core.process.interrupts import sigint_deferred

from .squeezenet import (IMAGENET_MEAN, IMAGENET_STD, MIN_INPUT_SIZE, NUM_TAPS, TAP_CHANNELS, FeatureTaps,
                         build_squeezenet)

#: Name of the graph input (the normalised image).
INPUT_NAME = "image"
#: Names of the 13 graph outputs, in ``features`` order.
TAP_NAMES = tuple(f"features.{i}" for i in range(NUM_TAPS))
#: File name written inside ``out_dir``.
MODEL_FILENAME = "features.onnx"
#: The op types the exported graph may contain (all in the default ONNX domain).
ALLOWED_OPS = frozenset({"Conv", "Relu", "MaxPool", "Concat", "Identity"})
#: Lowest opset accepted (MaxPool ceil_mode needs 10; 13 is the baseline the rest of the project assumes).
MIN_OPSET = 13

_EXAMPLE_SIZE = 224                      # example input H = W used for tracing (pixels)
_LEVEL = (2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16)  # resolution level of each tap (for the dim symbols)


def export_features(out_dir: str | os.PathLike, weights: str | os.PathLike | None = None, opset: int = 18,
                    *, exporter: str = "auto") -> Path:
    """Export SqueezeNet 1.1's 13 feature taps to ``out_dir/features.onnx`` and return that path.

    ``weights``: a torchvision-keyed ``.npz`` / ``.pth`` file, or None to download torchvision's published weights
    (see ``export.squeezenet.load_weights``). ``opset``: ONNX opset (>= 13). ``exporter``: ``"auto"``
    (TorchScript, falling back to dynamo), ``"torchscript"`` or ``"dynamo"``.

    ``out_dir`` is created if missing. The model is built in a temporary file in ``out_dir`` (unique per process),
    checked with ``onnx.checker.check_model(full_check=True)`` and moved onto ``features.onnx`` with ``os.replace``,
    so concurrent exporters into one directory always leave a complete, valid model; the temporary file is removed
    on any failure. Raises ``NSTError`` (one line) for bad weights, a bad opset or an unwritable ``out_dir``.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise NSTError(f"ONNX opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise NSTError(f"unknown ONNX exporter {exporter!r}; use 'auto', 'torchscript' or 'dynamo'")
    out_dir = Path(out_dir).expanduser()
    model, source, sha = build_squeezenet(weights)
    proto, used = _export_proto(model, opset, exporter)
    _normalise_graph(proto)
    _set_metadata(proto, source=source, sha256=sha, exporter=used, opset=opset)
    return _write_atomically(proto, out_dir / MODEL_FILENAME)


def _export_proto(model: torch.nn.Module, opset: int, exporter: str) -> tuple[onnx.ModelProto, str]:
    """Run torch.onnx.export on the 13-tap wrapper; returns (ModelProto, name of the exporter used)."""
    taps = FeatureTaps(model).eval()
    example = torch.zeros(1, 3, _EXAMPLE_SIZE, _EXAMPLE_SIZE, dtype=torch.float32)
    errors = []
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    for name in order:
        try:
            with _quiet(), torch.no_grad():
                proto = _export_torchscript(taps, example, opset) if name == "torchscript" else \
                    _export_dynamo(taps, example, opset)
            return proto, name
        except Exception as e:  # noqa: BLE001 -- torch raises many types; reported in one line below
            errors.append(f"{name}: {_one_line(e)}")
    raise NSTError(f"ONNX export of SqueezeNet 1.1 (opset {opset}) failed: {'; '.join(errors)}")


def _export_torchscript(taps: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(taps, (example,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=list(TAP_NAMES),
                      dynamic_axes={INPUT_NAME: {2: "H", 3: "W"}}, opset_version=opset, do_constant_folding=True,
                      export_params=True, keep_initializers_as_inputs=False)
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(taps: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    dims = {2: torch.export.Dim("H", min=MIN_INPUT_SIZE), 3: torch.export.Dim("W", min=MIN_INPUT_SIZE)}
    program = torch.onnx.export(taps, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=list(TAP_NAMES), dynamic_shapes={INPUT_NAME: dims},
                                opset_version=opset, optimize=True, verbose=False, report=False)
    return program.model_proto


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' deprecation/future warnings and torch.onnx's logging (stdout stays clean)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        logger.setLevel(level)


def _normalise_graph(proto: onnx.ModelProto) -> None:
    """Strip exporter noise, declare clean input/output shapes and check the graph's structure (raises NSTError)."""
    g = proto.graph
    for node in g.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del g.value_info[:]          # exporters' intermediate shapes (some with wrong symbols); ORT re-infers them

    initializer_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in initializer_names]
    if [i.name for i in inputs] != [INPUT_NAME] or len(g.input) != 1:
        raise NSTError(f"exported graph has inputs {[i.name for i in g.input]}, expected [{INPUT_NAME!r}]")
    if [o.name for o in g.output] != list(TAP_NAMES):
        raise NSTError(f"exported graph has outputs {[o.name for o in g.output]}, expected {list(TAP_NAMES)}")

    _set_shape(g.input[0], [1, 3, "H", "W"])
    for out, c, level in zip(g.output, TAP_CHANNELS, _LEVEL):
        _set_shape(out, [1, c, f"H_{level}", f"W_{level}"])

    bad = sorted({f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in g.node
                  if n.domain not in ("", "ai.onnx") or n.op_type not in ALLOWED_OPS})
    if bad:
        raise NSTError(f"exported graph uses unexpected ops {bad}; allowed: {sorted(ALLOWED_OPS)}")
    producers = {o: n for n in g.node for o in n.output}
    for name in TAP_NAMES:
        node = producers.get(name)
        # an output must be computed by a node, never be (an Identity of) the graph input
        while node is not None and node.op_type == "Identity":
            node = producers.get(node.input[0])
        if node is None:
            raise NSTError(f"exported graph output {name!r} is not computed by any node (alias of an input?)")
    for node in g.node:
        if node.op_type == "Conv" and any(x and x not in initializer_names for x in node.input[1:]):
            raise NSTError(f"exported Conv node {node.name!r} takes weights {list(node.input[1:])} that are not "
                           f"initializers")
    # dynamo may declare helper domains / functions that no node uses; drop them
    used_domains = {n.domain for n in g.node}
    keep = [ms for ms in proto.opset_import if ms.domain in ("", "ai.onnx") or ms.domain in used_domains]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    del proto.functions[:]


def _set_shape(value_info: onnx.ValueInfoProto, dims: list) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _set_metadata(proto: onnx.ModelProto, *, source: str, sha256: str, exporter: str, opset: int) -> None:
    producer = {"tool": "nst-onnx export/onnx_export.py", "torch": torch.__version__, "onnx": onnx.__version__,
                "exporter": exporter, "opset": opset}
    props = {
        "model": "squeezenet1_1 features (torchvision layout)",
        "input": "image: float32 [1,3,H,W], RGB in [0,1] normalised (x - mean) / std per channel; H, W >= "
                 f"{MIN_INPUT_SIZE}",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "taps": json.dumps(list(TAP_NAMES)),
        "min_input_size": str(MIN_INPUT_SIZE),
        "weights_sha256": sha256,
        "weights_source": source,
        "producer": json.dumps(producer, sort_keys=True),
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "nst-onnx"
    proto.producer_version = f"torch {torch.__version__}"
    proto.doc_string = ("SqueezeNet 1.1 feature taps features.0..features.12 for neural style transfer; "
                        "input is the ImageNet-normalised image")
    proto.graph.name = "squeezenet1_1_features"


def _write_atomically(proto: onnx.ModelProto, final: Path) -> Path:
    """Write ``proto`` to a unique temp file next to ``final``, validate it, then ``os.replace`` it onto ``final``."""
    out_dir = final.parent
    tmp = None
    try:
        with sigint_deferred():  # a Ctrl-C here is raised once tmp is known, so the cleanup below removes it
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=".onnx.tmp", dir=out_dir)
            except OSError as e:
                raise NSTError(f"cannot write the ONNX model into {out_dir}: {_one_line(e)}") from None
            tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)           # mkstemp creates 0600; the cached model is an ordinary readable file
        except OSError as e:
            raise NSTError(f"cannot write the ONNX model to {tmp}: {_one_line(e)}") from None
        try:
            onnx.checker.check_model(str(tmp), full_check=True)   # loads the file back: proves it is complete
            written = onnx.load(str(tmp))
        except Exception as e:  # noqa: BLE001 -- checker/protobuf errors
            raise NSTError(f"the exported ONNX model {tmp} is invalid: {_one_line(e)}") from None
        if [o.name for o in written.graph.output] != list(TAP_NAMES):
            raise NSTError(f"the exported ONNX model {tmp} lost its outputs")
        try:
            os.replace(tmp, final)
        except OSError as e:
            raise NSTError(f"cannot move the ONNX model onto {final}: {_one_line(e)}") from None
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    with contextlib.suppress(OSError, AttributeError):   # best effort: make the rename durable
        dir_fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return final


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
