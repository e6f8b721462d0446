"""The encoder architecture matrix: per-architecture knowledge, tokenizer assets, seeded checkpoints."""
