"""Which rows of a step each rank reads: one pure function, used by the trainer and by `verify`.

Rank r of world w reads rows [r*n, (r+1)*n) of every step, n = rows_per_step / w, and splits
them into micro-batches of `micro_batch` rows (gradient accumulation = n / micro_batch). A step
is thus read identically whatever the world size: resuming on a different number of ranks
changes who reads a row, never which rows make up the step.
"""

from __future__ import annotations

from .errors import ConfigError


def rank_rows(rows_per_step: int, rank: int, world_size: int) -> range:
    """The rows of a step that rank `rank` of `world_size` reads."""
    if world_size <= 0:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    if rows_per_step % world_size:
        valid = [w for w in range(1, rows_per_step + 1) if rows_per_step % w == 0]
        raise ConfigError(
            f"rows_per_step {rows_per_step} does not divide across {world_size} ranks; "
            f"use a world size that divides it ({', '.join(map(str, valid[-8:]))} …) or re-run "
            "prepare with a different --rows-per-step"
        )
    n = rows_per_step // world_size
    return range(rank * n, (rank + 1) * n)


def micro_batches(rows: range, micro_batch: int, *, world_size: int = 1, rows_per_step: int | None = None) -> list[range]:
    """Split a rank's rows into consecutive micro-batches of `micro_batch` rows."""
    if micro_batch <= 0:
        raise ConfigError(f"micro-batch must be >= 1, got {micro_batch}")
    if len(rows) % micro_batch:
        total = rows_per_step if rows_per_step is not None else len(rows) * world_size
        raise ConfigError(
            f"rows_per_step {total} is not divisible by world_size {world_size} x micro_batch "
            f"{micro_batch} = {world_size * micro_batch}; pick a micro-batch that divides "
            f"{len(rows)} (the rows each rank reads)"
        )
    return [range(s, s + micro_batch) for s in range(rows.start, rows.stop, micro_batch)]


def rank_micro_batches(rows_per_step: int, rank: int, world_size: int, micro_batch: int) -> list[range]:
    """`rank_rows` split into micro-batches, with one error naming all three numbers."""
    return micro_batches(
        rank_rows(rows_per_step, rank, world_size), micro_batch, world_size=world_size, rows_per_step=rows_per_step
    )
