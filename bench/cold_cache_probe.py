"""Why every step after the encoder is slower than on its own: the encoder flushes the caches.

One ONNX Runtime run of the sentiment encoder streams its ~43 MB of layer weights through the
CPU caches. This times the fast tokenizer on the same texts back to back (warm) and right after
an encoder run (cold), in-process: the served ensemble's tokenizer, postprocess, Triton and
client code all run in the second situation at concurrency 1.

    python -m bench.cold_cache_probe
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from trtserve_build.data.datasets import corpus_texts
    from trtserve_build.core.paths import export_dir
    from trtserve_build.core.spec import load_spec

    spec = load_spec(REPO_ROOT / "deployments" / "sentiment.toml")
    artifacts = export_dir(spec)
    tok = Tokenizer.from_file(str(artifacts / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=spec.model.max_sequence_length)
    session = ort.InferenceSession(str(artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = corpus_texts()[-2000:][:600]

    def tokenize_us(text: str) -> float:
        start = time.perf_counter()
        tok.encode(text)
        return (time.perf_counter() - start) * 1e6

    warm = [tokenize_us(t) for t in texts]
    cold = []
    for text in texts:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        cold.append(tokenize_us(text))
    print(f"fast tokenizer, one review snippet: p50 {np.median(warm):.0f} us back to back, "
          f"{np.median(cold):.0f} us right after an ONNX Runtime run of the encoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
