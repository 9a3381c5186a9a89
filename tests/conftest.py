"""Shared pytest fixtures: the ../shared data directory, the real SqueezeNet 1.1 weights, the exported ONNX feature
model (exported once per session) and the torch reference network.

The data lives outside the repository (``../shared`` from the repo root, never copied in); every fixture that needs
it skips the test cleanly when it is absent. Only the ``features_model`` / ``torch_squeezenet`` fixtures import
torch, and only when a test asks for them.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

if str(REPO) not in sys.path:  # allow running without `pip install -e .`
    sys.path.insert(0, str(REPO))

# A suite started as a background job of a non-interactive shell (`make test &`) inherits SIGINT ignored, and so
# would every `nst` the tests start (an ignored signal stays ignored across exec, and nst keeps it so, as nohup
# wants): the Ctrl-C tests would then see exit 0. A handler of our own is reset to the default by exec instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (read-only test data: weights/, images/)."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def weights_path(shared_dir: Path) -> Path:
    """The real ImageNet SqueezeNet 1.1 weights, torchvision-keyed ``.npz`` (52 float32 arrays)."""
    return _require(shared_dir / "weights" / "squeezenet1_1_imagenet.npz")


@pytest.fixture(scope="session")
def images_dir(shared_dir: Path) -> Path:
    """Directory with tubingen.jpg, starry_night.jpg, the_scream.jpg, composition_vii.jpg."""
    return _require(shared_dir / "images")


@pytest.fixture(scope="session")
def features_model(tmp_path_factory: pytest.TempPathFactory, weights_path: Path) -> Path:
    """Path of ``features.onnx`` exported once per session from the real weights (opset 18).

    Input ``image`` float32 [1,3,H,W] (normalised, H/W dynamic), outputs ``features.0`` .. ``features.12``.
    Treat the file as read-only: it is shared by all tests of the session.
    """
    pytest.importorskip("torch")
    from export.onnx_export import export_features

    return export_features(tmp_path_factory.mktemp("features_model"), weights=weights_path)


@pytest.fixture(scope="session")
def torch_squeezenet(weights_path: Path):
    """``export.squeezenet.SqueezeNet11`` with the real weights loaded, in eval mode (float32, CPU).

    ``model(x)`` gives [N,1000] logits; ``model.feature_maps(x)`` the 13 taps. Parameters are frozen
    (requires_grad False); do not modify the module (session-shared), deep-copy it to e.g. ``.double()``.
    """
    pytest.importorskip("torch")
    from export.squeezenet import build_squeezenet

    model, _, _ = build_squeezenet(weights_path)
    model.eval()
    for p in model.parameters():  # frozen: gradients w.r.t. the input image still work
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def env(features_model: Path) -> dict:
    """Environment for `nst` subprocesses: NST_HOME points at the session's exported model."""
    import os

    e = dict(os.environ)
    e["NST_HOME"] = str(Path(features_model).parent)
    e.pop("PYTHONWARNINGS", None)
    return e


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the module (tests/servers.py), stopped after it; the test is skipped
    when none can be started (Debian's postgresql not installed)."""
    import servers

    try:
        server = servers.start_postgres()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    yield server
    servers.stop_postgres(server)
