"""SqueezeNet 1.1 in torch, laid out like torchvision's ``squeezenet1_1`` so that its state_dict keys load, and
loading of its weights from ``.npz`` / ``.pth`` files or torchvision's published URL.

Build-time only: this module imports torch (``nst_core`` never does).

Shapes: images are NCHW float32 tensors, normalised with the ImageNet mean/std (done outside the network).
For an input of ``[1, 3, H, W]`` the 13 ``features`` taps have these channel counts and spatial sizes
(``c(n) = ceil((n - 3) / 2) + 1``, MaxPool with ceil_mode, minus 1 if that last window would start past the input;
``tap_shapes(H, W)`` computes them; H, W >= ``MIN_INPUT_SIZE`` = 17 px):

====  ===========  ========  =====================================
idx   module       channels  spatial size
====  ===========  ========  =====================================
0     Conv 3x3 s2  64        h0 = floor((H - 3) / 2) + 1 (same for W)
1     ReLU         64        h0
2     MaxPool      64        h1 = c(h0)
3, 4  Fire         128       h1
5     MaxPool      128       h2 = c(h1)
6, 7  Fire         256       h2
8     MaxPool      256       h3 = c(h2)
9,10  Fire         384       h3
11,12 Fire         512       h3
====  ===========  ========  =====================================
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nst_core.errors import NSTError
from nst_core.inputs.images import sha256_file

#: torchvision's published ImageNet weights for squeezenet1_1 (used when no weights file is given).
TORCHVISION_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"

#: ImageNet normalisation applied to RGB in [0, 1] before the network (per channel R, G, B).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Number of modules in ``features`` (taps 0..12).
NUM_TAPS = 13


#: Channels of the 13 taps ``features.0`` .. ``features.12``.
TAP_CHANNELS = (64, 64, 64, 128, 128, 128, 256, 256, 256, 384, 384, 512, 512)

#: Smallest input height/width (pixels) for which every tap is non-empty (16 fails at the last max-pool).
MIN_INPUT_SIZE = 17


def _conv_out(n: int) -> int:
    return (n - 3) // 2 + 1


def _pool_out(n: int) -> int:
    """MaxPool k3 s2 ceil_mode output length (torch's rule: the last window must start inside the input)."""
    out = -(-(n - 3) // 2) + 1
    if (out - 1) * 2 >= n:
        out -= 1
    return out


def tap_shapes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Shapes ``(1, C, h, w)`` of the 13 taps for a ``[1, 3, height, width]`` input (sizes in pixels)."""
    shapes = []
    h, w = _conv_out(height), _conv_out(width)
    for i, c in enumerate(TAP_CHANNELS):
        if i in (2, 5, 8):
            h, w = _pool_out(h), _pool_out(w)
        shapes.append((1, c, h, w))
    return shapes


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1x1 squeeze + ReLU, then parallel 1x1 and 3x3 expands (each + ReLU), concatenated.

    Input ``[N, in_channels, H, W]`` -> output ``[N, expand1x1_channels + expand3x3_channels, H, W]``
    (spatial size unchanged; the 3x3 expand uses padding 1).
    """

    def __init__(self, in_channels: int, squeeze_channels: int, expand1x1_channels: int,
                 expand3x3_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze_channels, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=False)
        self.expand1x1 = nn.Conv2d(squeeze_channels, expand1x1_channels, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=False)
        self.expand3x3 = nn.Conv2d(squeeze_channels, expand3x3_channels, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(s)),
                          self.expand3x3_activation(self.expand3x3(s))], dim=1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 with torchvision's module layout (``features.0..12``, ``classifier.0..3``).

    ``forward``: ``[N, 3, H, W]`` normalised image -> ``[N, 1000]`` ImageNet logits (before softmax).
    ``feature_maps``: the same input -> list of the 13 ``features`` outputs (see the module docstring for shapes).
    All ReLUs are out-of-place, so every tap is a distinct tensor.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Conv2d(512, num_classes, kernel_size=1),
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d((1, 1)),
        )

    def feature_maps(self, x: torch.Tensor, upto: int = NUM_TAPS - 1) -> list[torch.Tensor]:
        """Outputs of ``features[0] .. features[upto]`` in order for a ``[N, 3, H, W]`` normalised image."""
        outs = []
        for i, module in enumerate(self.features):
            if i > upto:
                break
            x = module(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class FeatureTaps(nn.Module):
    """Wrapper whose ``forward`` maps a ``[N, 3, H, W]`` normalised image to the tuple of the 13 feature maps.

    This is what gets exported to ONNX. It holds the network's ``features`` (shared, not copied) under the same
    attribute name, so parameter names stay torchvision's (``features.3.squeeze.weight``).
    """

    def __init__(self, net: SqueezeNet11) -> None:
        super().__init__()
        self.features = net.features

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        x = image
        for module in self.features:
            x = module(x)
            outs.append(x)
        return tuple(outs)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of a torchvision squeezenet1_1 state_dict (52 float32 arrays)."""
    return {k: tuple(v.shape) for k, v in SqueezeNet11().state_dict().items()}


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise NSTError(f"weights file {path}: corrupt or not an .npz archive (no zip directory found; truncated?)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (not npy/npz, pickled data), OSError, EOFError, BadZipFile ...
        raise NSTError(f"weights file {path}: corrupt or not an .npz archive ({_one_line(e)})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise NSTError(f"weights file {path}: not an .npz archive of named arrays (a single .npy array?)")
    out = {}
    try:
        with z:
            for key in z.files:
                arr = z[key]
                if arr.dtype.kind != "f":
                    raise NSTError(f"weights file {path}: array {key!r} has dtype {arr.dtype}, expected float")
                out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    except NSTError:
        raise
    except Exception as e:  # BadZipFile, zlib.error, ValueError, EOFError, OSError ... from a damaged member
        raise NSTError(f"weights file {path}: corrupt or truncated .npz archive ({_one_line(e)})") from None
    return out


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, EOFError, ...)
        raise NSTError(f"weights file {path}: corrupt or not a torch state_dict ({_torch_load_reason(e)})") from None
    return _as_state_dict(obj, str(path))


def _torch_load_reason(e: BaseException) -> str:
    """The informative part of a torch.load error (torch wraps it in paragraphs of advice)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return "torch.load(weights_only=True): " + (_one_line(Exception(detail)) or "unpickling failed")
    first = text.split(". ", 1)[0]
    return _one_line(Exception(first)) if first.strip() else type(e).__name__


def _as_state_dict(obj, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise NSTError(f"weights file {where}: not a state_dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise NSTError(f"weights file {where}: entry {k!r} is not a tensor ({type(v).__name__})")
        if not v.is_floating_point():
            raise NSTError(f"weights file {where}: tensor {k!r} has dtype {v.dtype}, expected float")
        out[k] = v.detach().to(torch.float32).contiguous()
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def validate_state_dict(sd: dict[str, torch.Tensor], where: str) -> None:
    """Check ``sd`` has exactly torchvision squeezenet1_1's keys and shapes; raise a one-line NSTError if not."""
    expected = expected_shapes()
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NSTError(f"weights {where}: missing key {missing[0]!r}{more}; expected torchvision squeezenet1_1 keys")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise NSTError(f"weights {where}: unexpected key {unexpected[0]!r}{more}; "
                       f"expected torchvision squeezenet1_1 keys")
    for k, shape in expected.items():
        got = tuple(sd[k].shape)
        if got != shape:
            raise NSTError(f"weights {where}: key {k!r} has shape {list(got)}, expected {list(shape)}")
    for k, v in sd.items():
        if not bool(torch.isfinite(v).all()):
            raise NSTError(f"weights {where}: key {k!r} contains NaN or infinite values")


def _download() -> tuple[dict[str, torch.Tensor], str, str]:
    """Fetch torchvision's squeezenet1_1 weights with torch.hub (cached in torch.hub's checkpoint dir)."""
    from urllib.parse import urlparse

    filename = os.path.basename(urlparse(TORCHVISION_URL).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        # check_hash verifies the sha256 prefix embedded in the file name ("b8a52dc0").
        obj = torch.hub.load_state_dict_from_url(TORCHVISION_URL, map_location="cpu", progress=False,
                                                 check_hash=True, weights_only=True)
    except Exception as e:
        raise NSTError(f"could not download SqueezeNet 1.1 weights from {TORCHVISION_URL} ({_one_line(e)}); "
                       f"pass --weights FILE (.npz or .pth) for offline use") from None
    sd = _as_state_dict(obj, TORCHVISION_URL)
    validate_state_dict(sd, TORCHVISION_URL)
    sha = sha256_file(cached) if cached.is_file() else ""
    return sd, TORCHVISION_URL, sha


def load_weights(weights: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str, str]:
    """Load and validate torchvision-keyed SqueezeNet 1.1 weights.

    ``weights``: a ``.npz`` (one float array per state_dict key) or a ``.pth``/``.pt`` torch state_dict
    (loaded with ``weights_only=True``); other suffixes are tried as .npz if they are zip archives, else as torch
    files. ``None`` downloads torchvision's published weights (``TORCHVISION_URL``) through torch.hub's cache.

    Returns ``(state_dict, source, sha256)``: float32 CPU tensors keyed like torchvision's ``squeezenet1_1``,
    the file path (absolute) or URL they came from, and the hex SHA-256 of the weights file's bytes.
    Raises ``NSTError`` with a one-line message naming the file and the problem on any failure.
    """
    if weights is None:
        return _download()
    path = Path(weights).expanduser()
    if not path.exists():
        raise NSTError(f"weights file {path}: not found")
    if path.is_dir():
        raise NSTError(f"weights file {path}: is a directory, expected a .npz or .pth file")
    try:
        size = path.stat().st_size
        sha = sha256_file(path)
    except OSError as e:
        raise NSTError(f"weights file {path}: cannot read ({_one_line(e)})") from None
    if size == 0:
        raise NSTError(f"weights file {path}: is empty")
    suffix = path.suffix.lower()
    if suffix == ".npz" or (suffix not in (".pth", ".pt") and zipfile.is_zipfile(path) and _looks_like_npz(path)):
        sd = _read_npz(path)
    else:
        sd = _read_torch(path)
    validate_state_dict(sd, str(path))
    return sd, str(path.resolve()), sha


def _looks_like_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def build_squeezenet(weights: str | os.PathLike | None = None) -> tuple[SqueezeNet11, str, str]:
    """A ``SqueezeNet11`` in eval mode with weights from ``load_weights(weights)``; returns (model, source, sha256)."""
    sd, source, sha = load_weights(weights)
    model = SqueezeNet11()
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, source, sha
