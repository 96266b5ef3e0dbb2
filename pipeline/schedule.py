"""Dealing read units to the local runner's workers: a pure function of their weights.

Beam's local FnApiRunner deals the keys of a grouped collection to its `n` workers round-robin,
in the order the keys arrive: position p goes to worker p % n, and each worker then works through
its share in that order. One worker finishing early leaves a core idle until the other is done,
so the order should give every worker the same total weight, heaviest units first (the small
ones last even out the end).

Plain heaviest-first round-robin does not: in every round worker 0 gets the heaviest unit, and
over a corpus of near-equal units that bias adds up (3% of the tokens between two workers on the
bench corpus). `deal_order` keeps the rounds (one unit per worker per round, heaviest rounds
first) but hands each round's heaviest unit to the least-loaded worker so far::

    weights  9 8 7 6 5 4 3          n = 2
    plain    w0: 9 7 5 3 = 24   w1: 8 6 4 = 18
    dealt    round 1: 9 -> w0, 8 -> w1; round 2: 7 -> w1 (15), 6 -> w0 (15); round 3: 5 -> w0, 4 -> w1;
             round 4: 3 -> w1:  w0: 9 6 5 = 20   w1: 8 7 4 3 = 22

Workers are labels: the ones that take the last, partial round's units are relabelled to come
first, since position p of that round goes to worker p % n.
"""

from __future__ import annotations

from typing import Sequence


def deal_order(weights: Sequence[float], workers: int) -> list[int]:
    """Indices of `weights` in the order to deal them round-robin to `workers` workers."""
    n, k = len(weights), max(1, workers)
    order = sorted(range(n), key=lambda i: (-weights[i], i))
    loads = [0.0] * k
    shares: list[list[int]] = [[] for _ in range(k)]
    last_round: list[int] = []
    for r in range(0, n, k):
        batch = order[r : r + k]
        takers = sorted(range(k), key=lambda j: (loads[j], j))[: len(batch)]
        for i, j in zip(batch, takers):
            shares[j].append(i)
            loads[j] += weights[i]
        last_round = takers
    labels = last_round + [j for j in range(k) if j not in last_round]
    rounds = -(-n // k)
    return [shares[j][r] for r in range(rounds) for j in labels if r < len(shares[j])]


def loads_of(order: Sequence[int], weights: Sequence[float], workers: int) -> list[float]:
    """Total weight each worker gets when `order` is dealt round-robin (what the runner does)."""
    loads = [0.0] * max(1, workers)
    for p, i in enumerate(order):
        loads[p % len(loads)] += weights[i]
    return loads
