"""steppack: a math corpus in, exact one-shard-per-global-step training batches out, streamed by a trainer.

The command is `steppack.cli`; the work lives in three subpackages, `steppack.shards` (the format),
`steppack.pipeline` (the Beam job) and `steppack.trainer`. Their sources sit in the top-level folders
`shards/`, `pipeline/` and `trainer/` of the repository (pyproject.toml maps them into this namespace).
`steppack.data` is the trainer's step stream as a torch dataset, for other trainers (needs torch).
"""
