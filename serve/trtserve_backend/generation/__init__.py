"""Text generation for decoder models (GPT-2 family) behind the decoupled ``generate`` model.

- :mod:`.requests`: a request's inputs checked against the deployment's limits
- :mod:`.sampling`: greedy / temperature / top-p, seeded per request
- :mod:`.text`: UTF-8-safe incremental detokenization and STOP strings
- :mod:`.scheduler`: step-level batching of concurrent sequences over one engine
- :mod:`.ort_executor`, :mod:`.torch_executor`: the engines, each keeping the KV cache between steps
- :mod:`.responses`: a Triton response sender as the scheduler's output
- :mod:`.outbox`: one thread that sends the responses and polls cancellation for the engine thread
"""
