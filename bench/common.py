"""Shared pieces of the benchmarks: the data paths, the inputs, timing, and the torch reference network.

torch is the reference being compared against; it is imported here, never by nst_core.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "squeezenet1_1_imagenet.npz"
IMAGES = SHARED / "images"
CS231N_TAPS = (1, 3, 4, 6, 7)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_avg() -> str:
    """The 1, 5 and 15 minute load averages as one string ("?" where /proc/loadavg is missing)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def features_model(cache: Path) -> Path:
    """Export the real model once into `cache` (bench/results by default)."""
    path = cache / "features.onnx"
    if not path.exists():
        from export.onnx_export import export_features
        export_features(cache, weights=WEIGHTS)
    return path


def start(cache: Path) -> dict:
    """Start a benchmark run: export the model into `cache` if needed, print the machine, and return the results
    dict the sections fill ({"machine": ...})."""
    features_model(cache)
    results = dict(machine=machine())
    print(f"machine: {results['machine']}", flush=True)
    return results


def content_input(size: int) -> np.ndarray:
    """Tübingen preprocessed with its smaller edge = size: float32 [1,3,size,~1.33 size]."""
    from nst_core.inputs.images import open_image, preprocess
    return preprocess(open_image(IMAGES / "tubingen.jpg"), size)


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_net(threads: int = 2):
    import torch
    from export.squeezenet import build_squeezenet
    torch.set_num_threads(threads)
    net, _, _ = build_squeezenet(WEIGHTS)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def save_json(name: str, data: dict) -> Path:
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
