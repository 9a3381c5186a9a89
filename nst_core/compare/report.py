"""The comparison's numbers: the summary (final losses, what each optimizer needs to reach the others', the
problem and the machine), its Markdown and JSON forms, the CSV history and the terminal table."""
from __future__ import annotations

import math
import os
import platform

import numpy as np
import scipy

from .. import optim
from ..network import model as _model
from ..spec.blend import as_list
from ..spec.spec import Spec

__all__ = ["PROBLEM_OPTIONS", "summarise", "summary_md", "table", "history_csv", "json_safe", "machine"]

_CSV_COLUMNS = ("optimizer", "evaluation", "seconds", "loss", "content", "style", "tv")
PROBLEM_OPTIONS = ("preset", "size", "style_size", "content_layer", "content_weight", "style_layers",
                    "style_weights", "tv_weight", "init", "device", "model", "original_colors", "style_blend",
                    "pooling")


def history_csv(done: list) -> bytes:
    lines = [",".join(_CSV_COLUMNS)]
    for run in done:
        for rec in run["result"].history:
            row = [run["label"], str(rec.evaluation), repr(float(rec.seconds)), repr(float(rec.loss))]
            row += [repr(float(rec.parts.get(k, math.nan))) for k in _CSV_COLUMNS[4:]]
            lines.append(",".join(row))
    return ("\n".join(lines) + "\n").encode()


def json_safe(value):
    """Non-finite floats -> None (JSON has no NaN / inf); tuples -> lists; recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt_reach(entry) -> str:
    if entry is None:
        return "—"
    if entry["evaluations"] is None:
        return "never"
    seconds = entry["seconds"]
    return f"{entry['evaluations']} ({seconds:.2f} s)" if seconds < 10 else f"{entry['evaluations']} ({seconds:.1f} s)"


def table(summary: dict) -> list:
    """The main table of a ``compare`` summary as Markdown lines: per optimizer its final (best) loss and parts,
    the evaluation that reached it, evaluations spent, seconds, status, and evaluations (seconds) to come within
    1 % of the best final loss of all."""
    lines = ["| optimizer | final (best) loss | content | style | tv | best at evaluation | evaluations "
             "| seconds | status | to within 1% of the best |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, o in summary["optimizers"].items():
        parts = [f"{o['parts'][k]:.4g}" if o["parts"].get(k) is not None else "—" for k in ("content", "style", "tv")]
        loss = "—" if o["final_loss"] is None or not math.isfinite(o["final_loss"]) else f"{o['final_loss']:.6g}"
        lines.append(f"| {label} | {loss} | {' | '.join(parts)} | {o['best_evaluation'] or '—'} | "
                     f"{o['evaluations']} | {o['seconds']:.1f} | {o['status']} | "
                     f"{_fmt_reach(summary['within_1pct'].get(label))} |")
    return lines


def _artist(p: dict) -> str:
    """The artist controls of the problem, for the settings line ("" when all are at their defaults)."""
    parts = []
    if p.get("original_colors", "off") != "off":
        parts.append(f"original colors {p['original_colors']}")
    if isinstance(p.get("style"), list):
        blend_ = p.get("style_blend")
        parts.append("style blend " + (",".join(f"{w:g}" for w in blend_) if blend_ else "equal"))
    if p.get("pooling", "max") != "max":
        parts.append(f"pooling {p['pooling']}")
    return "".join(f"; {t}" for t in parts)


def summary_md(summary: dict) -> str:
    p, opts = summary["problem"], summary["optimizers"]
    labels = list(opts)
    best = summary["best"]
    lines = ["# Optimizer comparison", ""]
    style = " + ".join(os.path.basename(s) for s in as_list(p["style"]))
    lines.append(f"`nst compare`: {os.path.basename(p['content'])} in the style of {style}, "
                 f"{p['height']}x{p['width']} px, preset {p['preset'] or 'none'}, style scale {p['style_scale']:g}, "
                 f"init {p['init']}. Every optimizer minimises the same objective from the same start image "
                 f"(loss {p['start_loss']:.6g}) with the same budget of {summary['budget']} objective evaluations "
                 f"(forward + backward passes; an L-BFGS iteration can take several).")
    lines.append("")
    if best["loss"] is not None:
        lines.append(f"Best final loss: {best['loss']:.6g} ({best['optimizer']}); within 1% means a loss <= "
                     f"{best['within_1pct']:.6g}.")
        lines.append("")
    lines += table(summary)
    lines += ["", "## Evaluations (seconds) to reach another optimizer's final loss", "",
              "Row: the optimizer that runs; column: whose final loss it must reach; \"never\": not within the "
              "budget.", ""]
    header = [f"{b} ({opts[b]['final_loss']:.5g})" if opts[b]["final_loss"] is not None else b for b in labels]
    lines.append("| reaches → | " + " | ".join(header) + " |")
    lines.append("|---|" + "---|" * len(labels))
    for a in labels:
        cells = [_fmt_reach(summary["to_reach"][a].get(b)) if a != b else "—" for b in labels]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Settings", ""]
    weights = ",".join(f"{w:g}" for w in p["style_weights"])
    lines.append(f"- problem: content {p['content']}, style {p['style']}; preset {p['preset'] or 'none'}; size "
                 f"{p['size']} (output {p['height']}x{p['width']}), style size {p['style_size']}; content layer "
                 f"{p['content_layer']} weight {p['content_weight']:g}; style layers "
                 f"{','.join(map(str, p['style_layers']))} weights {weights} x style scale {p['style_scale']:g}; "
                 f"TV weight {p['tv_weight']:g}; init {p['init']}; device {p['device']}; model {p['model']}"
                 + _artist(p))
    if p["init"] == "noise":
        seed = f"seed {summary['seed']}" + (" (drawn, not given)" if summary.get("seed_drawn") else "")
    else:
        seed = f"no seed needed (init {p['init']})" if summary["seed"] is None else \
            f"seed {summary['seed']} (not used by init {p['init']})"
    lines.append(f"- budget: {summary['budget']} objective evaluations per optimizer; {seed}")
    lines.append(f"- checkpoints (images.png): {', '.join(map(str, summary['checkpoints'])) or 'none'} and the "
                 f"final image")
    for label in labels:
        s = opts[label]["settings"]
        text = "; ".join(f"{k} {v}" for k, v in s.items())
        lines.append(f"- {label}: {text}")
    m = summary["machine"]
    lines.append(f"- machine: {m['cpu']}, {m['cpus']} CPUs, load average {m['load_average']} at the start; "
                 f"{m['platform']}; Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, onnxruntime "
                 f"{m['onnxruntime']} ({', '.join(m['providers'])})")
    lines.append(f"- started {summary['started']}, {summary['total_seconds']:.1f} s in all")
    lines.append(f"- files: {', '.join(summary['files'])}")
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _first_reach(result: optim.Result, target: float):
    """``{"evaluations", "seconds"}`` of the first evaluation of ``result`` with loss <= target (None: never).
    The failing last evaluation of a "nonfinite" run does not count (its point is never kept, see ``Result``)."""
    history = result.history[:-1] if result.status == "nonfinite" else result.history
    for rec in history:
        if math.isfinite(rec.loss) and rec.loss <= target:
            return {"evaluations": rec.evaluation, "seconds": rec.seconds}
    return {"evaluations": None, "seconds": None}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    ort_version = _model.ort_version()
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_average": load, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "onnxruntime": ort_version}


def summarise(done: list, problem, job: Spec, content, style, budget: int, seed, seed_drawn: bool,
               checkpoints, start_loss: float) -> dict:
    optimizers = {}
    for run in done:
        res = run["result"]
        optimizers[run["label"]] = {
            "kind": run["kind"], "settings": run["settings"], "final_loss": res.loss,
            "parts": dict(res.parts), "best_evaluation": res.best_evaluation, "evaluations": res.n_evals,
            "seconds": res.history[-1].seconds if res.history else 0.0, "status": res.status,
            "message": res.message}
    finite = {k: v["final_loss"] for k, v in optimizers.items() if math.isfinite(v["final_loss"])}
    best_label = min(finite, key=finite.get) if finite else None
    best_loss = finite[best_label] if finite else None
    to_reach = {}
    for run in done:
        row = {}
        for other in done:
            if other is run:
                continue
            target = other["result"].loss
            row[other["label"]] = (_first_reach(run["result"], target) if math.isfinite(target)
                                   else {"evaluations": None, "seconds": None})
        to_reach[run["label"]] = row
    within = {}
    if best_loss is not None:
        within = {run["label"]: _first_reach(run["result"], best_loss + 0.01 * abs(best_loss))
                  for run in done}
    h, w = problem.x0.shape[2:]
    problem_info = {k: getattr(job, k) for k in PROBLEM_OPTIONS if getattr(job, k) is not None}
    name = lambda s: os.fspath(s) if isinstance(s, (str, os.PathLike)) else "<image>"  # noqa: E731
    styles = as_list(style)
    problem_info.update(preset=job.preset, content=name(content),
                        style=name(styles[0]) if len(styles) == 1 else [name(s) for s in styles],
                        height=int(h), width=int(w), style_scale=job.style_scale, start_loss=start_loss,
                        model=os.fspath(_model.find_model(job.model)))
    return {"budget": budget, "seed": seed, "seed_drawn": seed_drawn, "checkpoints": list(checkpoints),
            "problem": problem_info, "optimizers": optimizers,
            "best": {"optimizer": best_label, "loss": best_loss,
                     "within_1pct": None if best_loss is None else best_loss + 0.01 * abs(best_loss)},
            "to_reach": to_reach, "within_1pct": within}
