"""Length buckets let the dynamic batcher merge concurrent requests into one engine execution."""
from concurrent.futures import ThreadPoolExecutor

import tritonclient.http as httpclient

from .conftest import served_models, text_input


def _counts(server, model):
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics(model)["model_stats"][0]
    client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_concurrent_requests_are_batched(server):
    engine = served_models(server, "sentiment")["engine"]  # the one model, or the ensemble's encoder
    before = _counts(server, engine)
    texts = [f"an utterly charming film number {i}" for i in range(96)]  # short: one or two length buckets

    def call(text):
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            return client.infer("sentiment", [text_input(httpclient, [text])]).as_numpy("LABEL")[0, 0]
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        labels = list(pool.map(call, texts))
    assert len(labels) == 96
    after = _counts(server, engine)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 96
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was merged"
