"""steppack: a math corpus in, exact one-shard-per-global-step training batches out, streamed by a trainer.

This package holds only the `steppack` command; the work lives in `shards`, `pipeline` and `trainer`.
"""
