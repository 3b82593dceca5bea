"""Run `vidlab train CONFIG [overrides]` and die by SIGKILL, as a crashed node does: at the start of optimizer step
`--step N`, or in the middle of the `--write N`-th checkpoint write (half a temporary file on disk)."""

from __future__ import annotations

import argparse
import os
import signal

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def die_in_write(nth: int) -> None:
    """Make the `nth` checkpoint write (counting from 1) leave half a temporary file and SIGKILL the process."""
    import vidlab.engine.checkpointing as checkpointing
    from vidlab.files import atomic_path

    real_save, calls = checkpointing.atomic_torch_save, [0]

    def save(obj, path) -> None:
        calls[0] += 1
        if calls[0] == nth:
            with atomic_path(path) as temp:
                temp.write_bytes(b"PK\x03\x04 half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)

    checkpointing.atomic_torch_save = save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--step", type=int)
    parser.add_argument("--write", type=int)
    args = parser.parse_args()
    from vidlab.engine.config import load_train_config
    from vidlab.engine.runner import train

    if args.write:
        die_in_write(args.write)
    callbacks = [KillAtStep(args.step)] if args.step is not None else []
    train(load_train_config(args.config, args.overrides), callbacks=callbacks)


if __name__ == "__main__":
    main()
