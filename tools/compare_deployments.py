"""Before/after check of a refactor: generated configs byte for byte, served outputs exactly.

``snapshot`` copies every ``config.pbtxt`` of the given model repositories (with the sha256 of
each model file beside it), starts the embedded Triton server on the ``cpu`` repository and
records what ``sentiment`` (labels, scores, probabilities) and ``embed`` (vectors) answer for a
fixed set of real texts (the first review snippets of loadtest/data plus unusual ones).
``compare`` puts two snapshots side by side and writes the result as JSON and markdown.

It imports only the server launcher and tritonclient, so the same script snapshots the tree
before a change (run with that tree's packages on PYTHONPATH) and after it::

    python tools/compare_deployments.py snapshot --out /work/coord/issue9_before model_repository/cpu model_repository/gpu
    python tools/compare_deployments.py snapshot --out /tmp/after model_repository/cpu model_repository/gpu
    python tools/compare_deployments.py compare /work/coord/issue9_before /tmp/after --out docs/results/issue9_comparison
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNIPPETS = REPO / "loadtest" / "data" / "review_snippets.txt"
N_SNIPPETS = 64
UNUSUAL = ["", "   ", "a gripping, beautifully acted film", "¡Qué película tan buena! 🎬🍿",
           "これは素晴らしい映画です。", "x" * 3000, " ".join(["long"] * 400)]
MODEL_FILES = ("model.onnx", "model.plan", "model.pt", "tokenizer.json")


def texts() -> list[str]:
    return SNIPPETS.read_text().splitlines()[:N_SNIPPETS] + UNUSUAL


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_configs(repo: Path, out: Path) -> dict[str, str]:
    """config.pbtxt files -> ``out/<variant>/<model>/config.pbtxt``; returns {model file: sha256}."""
    shas = {}
    for config in sorted(repo.glob("*/config.pbtxt")):
        dest = out / repo.name / config.parent.name / "config.pbtxt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config, dest)
        for name in MODEL_FILES:
            f = config.parent / "1" / name
            if f.is_file():
                shas[f"{repo.name}/{config.parent.name}/1/{name}"] = _sha(f)
    return shas


def served_outputs(repo: Path, log: Path) -> dict:
    import tritonclient.grpc as grpcclient
    from trtserve_server.embedded import EmbeddedServer, Ports

    batch = texts()
    data = np.array([[t.encode("utf-8")] for t in batch], dtype=np.object_)
    out: dict = {"texts": batch}
    with EmbeddedServer(repo, Ports.free(), log_path=log) as server:
        server.wait_ready(timeout_s=300)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for model, names in (("sentiment", ("LABEL", "SCORE", "PROBABILITIES")), ("embed", ("EMBEDDING",))):
            rows = {n: [] for n in names}
            for start in range(0, len(batch), 16):  # requests of 16: several dynamic batches
                inp = grpcclient.InferInput("TEXT", [len(data[start:start + 16]), 1], "BYTES")
                inp.set_data_from_numpy(data[start:start + 16])
                result = client.infer(model, [inp])
                for n in names:
                    rows[n].append(result.as_numpy(n))
            for n in names:
                values = np.concatenate(rows[n])
                out[f"{model}.{n}"] = ([v[0].decode() for v in values] if values.dtype == object
                                       else values.astype(np.float64).tolist())
        client.close()
    return out


def snapshot(repos: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shas = {}
    for repo in repos:
        shas.update(copy_configs(repo, out))
    (out / "model_files.json").write_text(json.dumps(shas, indent=2, sort_keys=True) + "\n")
    cpu = next((r for r in repos if r.name == "cpu"), None)
    if cpu is not None:
        outputs = served_outputs(cpu, out / "triton.log")
        (out / "served_outputs.json").write_text(json.dumps(outputs) + "\n")
    print(f"snapshot of {[str(r) for r in repos]} in {out}")


def compare(before: Path, after: Path) -> dict:
    configs_b = {p.relative_to(before).as_posix() for p in before.glob("*/*/config.pbtxt")}
    configs_a = {p.relative_to(after).as_posix() for p in after.glob("*/*/config.pbtxt")}
    result: dict = {"configs": {"only_before": sorted(configs_b - configs_a), "only_after": sorted(configs_a - configs_b),
                                "identical": [], "different": {}}}
    for name in sorted(configs_b & configs_a):
        old, new = (before / name).read_bytes(), (after / name).read_bytes()
        if old == new:
            result["configs"]["identical"].append(name)
        else:
            result["configs"]["different"][name] = "".join(difflib.unified_diff(
                old.decode().splitlines(True), new.decode().splitlines(True), f"before/{name}", f"after/{name}"))
    files_b = json.loads((before / "model_files.json").read_text())
    files_a = json.loads((after / "model_files.json").read_text())
    result["model_files"] = {k: ("identical" if files_b.get(k) == files_a.get(k) else "different")
                             for k in sorted(set(files_b) | set(files_a))}
    ob, oa = (json.loads((d / "served_outputs.json").read_text()) for d in (before, after))
    served: dict = {"texts": len(ob["texts"]), "same_texts": ob["texts"] == oa["texts"]}
    for key in sorted(k for k in ob if k != "texts"):
        if key.endswith("LABEL"):
            served[key] = {"identical": ob[key] == oa[key],
                           "differing_rows": sum(x != y for x, y in zip(ob[key], oa[key]))}
        else:
            b, a = np.asarray(ob[key]), np.asarray(oa[key])
            served[key] = {"identical": bool(b.shape == a.shape and np.array_equal(b, a)), "shape": list(b.shape),
                           "max_abs_diff": float(np.abs(b - a).max()) if b.shape == a.shape else None}
    result["served"] = served
    return result


def to_markdown(r: dict, before: Path, after: Path) -> str:
    c = r["configs"]
    lines = [f"# Before/after comparison ({before.name} -> {after.name})", "",
             f"Measured with `python tools/compare_deployments.py` on {platform.node()} ({platform.machine()}).", "",
             f"- config.pbtxt: {len(c['identical'])} byte-identical, {len(c['different'])} different, "
             f"{len(c['only_before'])} only before, {len(c['only_after'])} only after",
             f"- model files (sha256): {sum(v == 'identical' for v in r['model_files'].values())} identical, "
             f"{sum(v == 'different' for v in r['model_files'].values())} different"]
    lines += [f"  - `{k}`: {v}" for k, v in r["model_files"].items() if v != "identical"]
    lines += ["", f"Served outputs for {r['served']['texts']} real texts (same texts: {r['served']['same_texts']}):", "",
              "| output | identical | detail |", "|---|---|---|"]
    for key, v in r["served"].items():
        if isinstance(v, dict):
            detail = (f"{v['differing_rows']} differing rows" if "differing_rows" in v
                      else f"shape {v['shape']}, max abs diff {v['max_abs_diff']}")
            lines.append(f"| {key} | {v['identical']} | {detail} |")
    if c["different"]:
        lines += ["", "## Differences", ""]
        for name, diff in c["different"].items():
            lines += [f"### {name}", "", "```diff", diff.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("repos", nargs="+", type=Path)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--out", type=Path, required=True, help="path prefix: writes <out>.json and <out>.md")
    args = ap.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.repos, args.out)
        return 0
    result = compare(args.before, args.after)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(result, args.before, args.after))
    print(args.out.with_suffix(".md").read_text())
    served_same = all(v["identical"] for v in result["served"].values() if isinstance(v, dict))
    return 0 if served_same and not result["configs"]["only_before"] else 1


if __name__ == "__main__":
    sys.exit(main())
