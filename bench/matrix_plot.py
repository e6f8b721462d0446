"""`make bench-matrix`: plots, the headline summary and the machine record."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
from pathlib import Path
from typing import Iterable

import numpy as np
from trtserve_build.core.enums import PRECISIONS
from trtserve_build.core.lazy import import_module, lazy_import

from .matrix_measure import read_rows
from .matrix_models import cpu_name

torch = lazy_import("torch")

#: The baseline of the speedup heatmaps, per device kind.
BASELINE = {"cpu": ("torch-cpu", "fp32"), "cuda": ("torch-cuda", "fp32")}


def _series_label(executor: str, precision: str) -> str:
    return f"{executor} {precision}"


def _ok_rows(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and r["median_ms"]]


def device_kind(executor: str) -> str:
    return "cuda" if executor in ("torch-cuda", "tensorrt") else "cpu"


def plot(csv_path: Path, out_dir: Path) -> list[Path]:
    """Latency vs batch (per sequence length), speedup heatmaps and memory, per model and device."""
    matplotlib = import_module("matplotlib")
    matplotlib.use("Agg")
    plt = import_module("matplotlib.pyplot")

    rows = _ok_rows(read_rows(csv_path))
    written: list[Path] = []
    for model in sorted({r["model"] for r in rows}):
        for kind in ("cpu", "cuda"):
            mine = [r for r in rows if r["model"] == model and device_kind(r["executor"]) == kind]
            if not mine:
                continue
            device = mine[0]["device"]
            series = sorted({(r["executor"], r["precision"]) for r in mine},
                            key=lambda sp: (sp[0], PRECISIONS.index(sp[1])))
            seqs = sorted({int(r["seq"]) for r in mine})
            batches = sorted({int(r["batch"]) for r in mine})
            tag = f"{model}_{kind}"

            # 1. latency vs batch, one panel per sequence length
            fig, axes = plt.subplots(1, len(seqs), figsize=(3.6 * len(seqs), 3.6), sharey=True, squeeze=False)
            for ax, s in zip(axes[0], seqs):
                for ex, pr in series:
                    pts = sorted((int(r["batch"]), float(r["median_ms"])) for r in mine
                                 if (r["executor"], r["precision"]) == (ex, pr) and int(r["seq"]) == s)
                    if pts:  # one colour per series in every panel, whichever points were skipped
                        ax.plot(*zip(*pts), marker="o", color=f"C{series.index((ex, pr)) % 10}",
                                label=_series_label(ex, pr))
                ax.set_xscale("log", base=2)
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.set_yscale("log")
                ax.set_title(f"seq {s}")
                ax.set_xlabel("batch")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel("median latency (ms)")
            lines = [len(ax.get_lines()) for ax in axes[0]]  # the legend where every plotted series is
            axes[0][len(lines) - 1 - lines[::-1].index(max(lines))].legend(fontsize=7, loc="upper left")
            fig.suptitle(f"{model}: latency vs batch ({device})")
            fig.tight_layout()
            written.append(_save(fig, out_dir / f"latency_{tag}.png"))

            # 2. speedup heatmaps against the device's PyTorch FP32 baseline
            base = BASELINE[kind]
            base_ms = {(int(r["batch"]), int(r["seq"])): float(r["median_ms"]) for r in mine
                       if (r["executor"], r["precision"]) == base}
            others = [sp for sp in series if sp != base]
            if base_ms and others:
                fig, axes = plt.subplots(1, len(others), figsize=(3.4 * len(others), 3.4), squeeze=False)
                for ax, (ex, pr) in zip(axes[0], others):
                    grid = np.full((len(batches), len(seqs)), np.nan)
                    for r in mine:
                        if (r["executor"], r["precision"]) == (ex, pr):
                            k = (int(r["batch"]), int(r["seq"]))
                            if k in base_ms:
                                grid[batches.index(k[0]), seqs.index(k[1])] = base_ms[k] / float(r["median_ms"])
                    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=max(2.0, np.nanmax(grid) if np.isfinite(grid).any() else 2),
                                   origin="lower", aspect="auto")
                    for i in range(len(batches)):
                        for j in range(len(seqs)):
                            if np.isfinite(grid[i, j]):
                                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
                    ax.set_xticks(range(len(seqs)), seqs)
                    ax.set_yticks(range(len(batches)), batches)
                    ax.set_xlabel("sequence length")
                    ax.set_title(_series_label(ex, pr), fontsize=9)
                axes[0][0].set_ylabel("batch")
                fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"speedup vs {base[0]} {base[1]}")
                fig.suptitle(f"{model}: speedup over {base[0]} {base[1]} ({device}; blank = skipped)")
                written.append(_save(fig, out_dir / f"speedup_{tag}.png"))

            # 3. peak memory above the loaded model vs tokens per batch
            fig, ax = plt.subplots(figsize=(6, 4))
            for ex, pr in series:
                pts = sorted((int(r["batch"]) * int(r["seq"]), float(r["peak_mem_mib"])) for r in mine
                             if (r["executor"], r["precision"]) == (ex, pr) and r["peak_mem_mib"])
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=_series_label(ex, pr))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tokens per batch (batch x seq)")
            ax.set_ylabel("peak memory: model + activations (MiB)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_title(f"{model}: peak memory ({device})")
            fig.tight_layout()
            written.append(_save(fig, out_dir / f"memory_{tag}.png"))
    return written


def _save(fig, path: Path) -> Path:
    plt = import_module("matplotlib.pyplot")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(csv_path: Path) -> str:
    """A few headline numbers per model/device, for the log and the README."""
    rows = _ok_rows(read_rows(csv_path))
    lines = []
    for model in sorted({r["model"] for r in rows}):
        for (b, s) in ((1, 128), (8, 128), (32, 128), (1, 512)):
            pts = [r for r in rows if r["model"] == model and int(r["batch"]) == b and int(r["seq"]) == s]
            if pts:
                cells = ", ".join(f"{r['executor']} {r['precision']} {float(r['median_ms']):.1f} ms" for r in pts)
                lines.append(f"{model} b={b} s={s}: {cells}")
    return "\n".join(lines)


def write_machine(path: Path) -> None:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_name(),
            "python": platform.python_version(),
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for mod in ("torch", "onnxruntime", "transformers"):
        try:
            info[mod] = import_module(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        pass
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[info["host"] + (" (gpu)" if info.get("gpu") else "")] = info
    path.write_text(json.dumps(existing, indent=2) + "\n")


