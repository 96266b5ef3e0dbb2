"""Checkpoints: everything a resumed run needs to continue the same loss curve, written atomically.

`ckpt-00000123.pt` holds the state after 123 completed steps (the next step to run is 123): model,
optimizer (AdamW moments and step counts), schedule, RNG states, the manifest identity (sha256 of
the step checksums, `steppack.trainer.data.manifest_identity`) and the resolved config. It is written to a
temporary name in the same directory, flushed and renamed into place, so a job killed mid-write
leaves the previous checkpoint as the newest complete one. Only rank 0 writes (DDP keeps every
rank's model and optimizer identical). A `--parallel fsdp` run writes `ckpt-00000123.dcp/`
instead, a sharded directory holding the same (`steppack.trainer.dcp`); this module names, lists,
prunes and checks both kinds.

The file holds tensors, numbers, strings and containers only and is read with `weights_only=True`.

Resume refuses, naming both values, a checkpoint whose data, model shape or schedule differs from
this launch: each would silently change the loss curve. World size and micro-batch may change
(the rows of every step stay the same; sums are then added in another order, so losses agree to
float rounding rather than bit for bit).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile

import numpy as np
import torch

from steppack.shards.errors import ConfigError, FormatError

NAME = re.compile(r"^ckpt-(\d{8})\.(pt|dcp)$")
SHARDED = ".dcp"  # a directory written by torch.distributed.checkpoint (--parallel fsdp)


def path_for(ckpt_dir: str, step: int, *, sharded: bool = False) -> str:
    return os.path.join(ckpt_dir, f"ckpt-{step:08d}{SHARDED if sharded else '.pt'}")


def is_sharded(path: str) -> bool:
    return str(path).endswith(SHARDED)


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in `ckpt_dir`, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir) if (m := NAME.match(n))]
    return sorted(found)


TMP = re.compile(r"^ckpt-\d{8}\.(pt\.tmp-\d+|dcp\.tmp)$")


def prepare_dir(ckpt_dir: str, *, resume: bool, clean: bool) -> None:
    """Before a run: refuse a fresh run into a directory holding checkpoints (its pruning would
    delete them and a later --resume would continue them), and (clean: one rank) make sure the
    directory can be written and delete the temporary files of checkpoint writes that were killed."""
    if clean:
        try:
            os.makedirs(ckpt_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=ckpt_dir):
                pass
        except OSError as exc:
            raise ConfigError(f"--ckpt-dir {ckpt_dir} cannot be written ({exc.strerror or exc}); "
                              "choose a writable directory") from exc
    found = list_checkpoints(ckpt_dir)
    if found and not resume:
        raise ConfigError(f"--ckpt-dir {ckpt_dir} already holds checkpoints (newest {os.path.basename(found[-1][1])}): "
                          "pass --resume to continue that run, or choose another --ckpt-dir for a new one")
    if clean and os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            if TMP.match(name):
                remove(os.path.join(ckpt_dir, name))


def remove(path: str) -> None:
    """Delete a checkpoint or a killed write's leftover: a file, or a sharded directory."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def prune(ckpt_dir: str, keep: int) -> None:
    """Keep the newest `keep` checkpoints of either kind (0: all)."""
    if keep:
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            remove(old)


def latest(ckpt_dir: str) -> str | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def step_of(path: str) -> int:
    """The step a checkpoint holds, from its name (so the data can be read before the file is loaded)."""
    return int(NAME.match(os.path.basename(path)).group(1))


def rng_state() -> dict:
    """Every RNG's state as tensors, lists and numbers: what `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def save(ckpt_dir: str, step: int, state: dict, keep: int = 0) -> str:
    """Write `state` as the checkpoint of `step` atomically; keep only the newest `keep` (0: all)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    final = path_for(ckpt_dir, step)
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    prune(ckpt_dir, keep)
    return final


KEYS = ("step", "model", "optimizer", "schedule", "rng", "manifest_id", "model_config", "config")


def load(path: str, keys: tuple[str, ...] = KEYS) -> dict:
    """A checkpoint, unpickled with `weights_only=True`: tensors, numbers, strings and containers
    only, so a planted file cannot run code; anything else is refused in one line. `keys`: those
    it must hold (a sharded checkpoint's state file holds all but the model and optimizer)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FormatError(f"{path} is not a steppack checkpoint: it holds objects a checkpoint never does "
                          f"({str(exc).splitlines()[0][:160]}), so it is not loaded; remove it from --ckpt-dir "
                          "(a checkpoint of a steppack before 2026-12-01 resumes with that version)") from exc
    except Exception as exc:  # a malformed pickle can fail in torch's unpickler with any error (IndexError, ...)
        raise FormatError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from the one before") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise FormatError(f"{path} is not a steppack checkpoint (it lacks {', '.join(k for k in keys if not isinstance(ckpt, dict) or k not in ckpt)}); "
                          "remove it from --ckpt-dir")
    return ckpt


# Training settings a resumed run must keep: each changes the loss curve from the resumed step on.
FIXED = ("attention", "grad_clip", "dtype", "weight_decay")


def check_parallel(path: str, parallel: str) -> None:
    """Refuse a checkpoint of the other --parallel: a DDP file and a sharded FSDP directory do not load
    into each other."""
    written = "fsdp" if is_sharded(path) else "ddp"
    if written != parallel:
        raise ConfigError(f"checkpoint {path} was written by a --parallel {written} run, this launch is --parallel "
                          f"{parallel}: resume with --parallel {written}, or start a new run in another --ckpt-dir")


def check_resumable(ckpt: dict, path: str, *, manifest_id: str, model: dict, schedule: dict, config: dict) -> None:
    """Refuse a checkpoint that would not continue this run's loss curve."""
    if ckpt.get("manifest_id") != manifest_id:
        raise ConfigError(
            f"checkpoint {path} was trained on data with manifest identity {ckpt.get('manifest_id')}, "
            f"but --data now has {manifest_id}: the steps changed. Resume with the original data, or "
            "start a new run in another --ckpt-dir")
    for what, mine, theirs in (("model", model, ckpt.get("model_config")), ("schedule", schedule, ckpt.get("schedule"))):
        if mine != theirs:
            diff = {k: (theirs.get(k) if theirs else None, mine.get(k)) for k in mine if not theirs or theirs.get(k) != mine.get(k)}
            raise ConfigError(
                f"checkpoint {path} has a different {what}: "
                + ", ".join(f"{k} {a} in the checkpoint vs {b} now" for k, (a, b) in diff.items())
                + "; pass the original flags to resume")
    then = ckpt.get("config") or {}
    changed = [f"--{k.replace('_', '-')} {then[k]} in the checkpoint vs {config[k]} now"
               for k in FIXED if k in then and then[k] != config[k]]
    if changed:
        raise ConfigError(f"checkpoint {path} was trained with other settings: {', '.join(changed)}; pass the "
                          "original flags to resume (a change would alter the loss curve from here on)")
