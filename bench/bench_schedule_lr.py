"""Adam's and gradient descent's learning rate at the later scales of the coarse-to-fine schedule.

    python bench/bench_schedule_lr.py [--size 512] [--adam 1 0.3333 0.1 0.03333 0.01] [--gd 0 1 2 3 4]
                                      [--style PATH] [--gradients]

Runs ``nst_core.api.stylize(tubingen, STYLE, size=SIZE, optimizer=...)`` with every other default (preset
starry_night, calibrated weights, the default schedule ``schedule.plan``: 192, 314, 512 px with 200 / 122 / 75
evaluations at --size 512) once per rule for the later scales:
  adam  ``schedule.ADAM_LATER`` = F: a later scale runs CS231n's recipe (lr, lr/30 from 90 % of its evaluations,
        clamping until 95 %) with lr = 3.0 * F (F = 1: the recipe restarted as at the first scale)
  gd    ``schedule.GD_POWER`` = P: a later scale's step is GD_LR * (side / first) ** P (P = 0: the same step)
The first scale is the same in every run (CS231n's recipe, ``GD_LR``). Per run and scale it reports the loss of
the scale's start (the previous scale's best, upsampled) and its parts, its best loss with the parts and how many
evaluations had a higher loss than the one before ("rises": an oscillating step); the runs are compared by the last
scale's best loss (the ratio to the best rule's). ``--gradients``: the RMS per pixel of the calibrated objective's
gradient at each side, at the photo and at the first scale's gd result upsampled (``gradient_scale``). Writes the
pictures to bench/results/schedule_lr_*.png and the numbers to bench/results/schedule_lr.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, save_json, start  # noqa: E402

CACHE = REPO / "bench" / "results"


def one_run(optimizer: str, rule: float, size: int, style: Path, model: Path) -> dict:
    """One schedule with the later scales' rule ``rule`` (ADAM_LATER for adam, GD_POWER for gd): per-scale numbers
    and the picture."""
    from PIL import Image

    from nst_core import schedule
    from nst_core import api as transfer
    from nst_core.spec import make, resolve

    name = "ADAM_LATER" if optimizer == "adam" else "GD_POWER"
    saved = getattr(schedule, name)
    setattr(schedule, name, rule)
    try:
        opt = resolve(make("stylize", size=size, optimizer=optimizer, model=model, device="cpu"))
        rates = schedule.learning_rates(opt)
        t0 = time.perf_counter()
        image, result = transfer.stylize(IMAGES / "tubingen.jpg", style, size=size, optimizer=optimizer,
                                         model=model, device="cpu")
        seconds = time.perf_counter() - t0
    finally:
        setattr(schedule, name, saved)
    label = f"{optimizer}_{name.lower()}_{rule:g}_{style.stem}_{size}"
    Image.fromarray(image).save(CACHE / f"schedule_lr_{label}.png")
    scales = []
    for side, lr, res in zip(result.sides, rates, result.scales):
        losses = [r.loss for r in res.history]
        scales.append(dict(side=side, lr=lr, evaluations=res.n_evals, start_loss=losses[0],
                           start_parts={k: float(v) for k, v in res.history[0].parts.items()},
                           best_loss=res.loss, best_evaluation=res.best_evaluation,
                           rises=sum(b > a for a, b in zip(losses, losses[1:])),
                           parts={k: float(v) for k, v in res.parts.items()}))
    return dict(optimizer=optimizer, rule=name, value=rule, style=style.name, size=size, seconds=seconds,
                final_loss=result.loss, scales=scales, picture=f"schedule_lr_{label}.png")


def gradient_scale(size: int, style: Path, model: Path) -> list[dict]:
    """The RMS per pixel of the calibrated objective's gradient (``gd``'s objective, style scale 100) at each side
    of the schedule, at one picture: the first scale's gd result (200 evaluations at the first side), upsampled
    (``schedule.upsample``) to each side, i.e. where each later scale starts (its own terms; without the whole
    term)."""
    import numpy as np

    from nst_core import schedule
    from nst_core import api as transfer
    from nst_core.spec import make, resolve

    opt = resolve(make("stylize", size=size, optimizer="gd", model=model, device="cpu"))
    sides = schedule.sides(opt)
    common = dict(optimizer="gd", model=model, device="cpu")
    _, first = transfer.stylize(IMAGES / "tubingen.jpg", style, size=sides[0], **common)
    out = []
    for side in sides:
        problem = transfer.prepare("stylize", IMAGES / "tubingen.jpg", style, size=side, iterations=1, **common)
        row = dict(side=side, pixels=int(problem.x0.shape[2] * problem.x0.shape[3]))
        for name, x in (("photo", problem.x0), ("upsampled", schedule.upsample(first.x, problem.x0.shape))):
            _, grad, _ = problem.objective(x)
            row[name] = float(np.sqrt(np.mean(grad ** 2)))
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--adam", type=float, nargs="*", default=[1.0, 1 / 3, 0.1, 1 / 30, 0.01],
                    help="values of schedule.ADAM_LATER to run (none: skip adam)")
    ap.add_argument("--gd", type=float, nargs="*", default=[0.0, 1.0, 2.0, 3.0, 4.0],
                    help="values of schedule.GD_POWER to run (none: skip gd)")
    ap.add_argument("--style", type=Path, default=IMAGES / "starry_night.jpg")
    ap.add_argument("--gradients", action="store_true",
                    help="also measure the gradient's RMS per pixel at each side (gradient_scale)")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    results = start(CACHE)
    model = CACHE / "features.onnx"
    runs = []
    for optimizer, rules in (("adam", args.adam), ("gd", args.gd)):
        rows = []
        for rule in rules:
            row = one_run(optimizer, rule, args.size, args.style, model)
            rows.append(row)
            print(f"{optimizer} {row['rule']}={rule:.4g}: {row['seconds']:.0f} s", flush=True)
            for s in row["scales"]:
                parts = ", ".join(f"{k} {v:.4g}" for k, v in s["parts"].items())
                print(f"  {s['side']:5d} px  lr {s['lr'] if s['lr'] is not None else 'default'!s:>10}  start "
                      f"{s['start_loss']:.5g}  best {s['best_loss']:.5g} (eval {s['best_evaluation']}/"
                      f"{s['evaluations']}, {s['rises']} rises)  {parts}", flush=True)
                start_parts = ", ".join(f"{k} {v:.4g}" for k, v in s["start_parts"].items())
                print(f"{'':38s}start: {start_parts}", flush=True)
        if rows:
            best = min(r["final_loss"] for r in rows)
            print(f"{optimizer}: final loss at {args.size} px / the best rule's: " + ", ".join(
                f"{r['rule']}={r['value']:.4g} {r['final_loss'] / best:.3f}" for r in rows), flush=True)
        runs.extend(rows)
    results["runs"] = runs
    if args.gradients:
        rows = gradient_scale(args.size, args.style, model)
        for r in rows:
            print(f"gradient RMS per pixel at {r['side']} px ({r['pixels'] / rows[0]['pixels']:.2f}x the first's "
                  f"pixels): at the photo {r['photo']:.4g} (the first side's / this "
                  f"{rows[0]['photo'] / r['photo']:.2f}), at the first scale's result upsampled {r['upsampled']:.4g} "
                  f"({rows[0]['upsampled'] / r['upsampled']:.2f})", flush=True)
        results["gradients"] = rows
    save_json("schedule_lr", results)


if __name__ == "__main__":
    main()
