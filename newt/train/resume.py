"""Which checkpoint a training child resumes from: its own newest one, or the recipe's `resume_from_checkpoint`.

- The stage's work folder holds checkpoints of an earlier, crashed attempt at the same key: the newest complete one
  wins, always (a crash after a manual resume continues from where that run got to, not from the start again).
- Otherwise `resume_from_checkpoint: PATH` (a local folder or an fsspec URL such as `s3://bucket/run/checkpoint-200`)
  names a Trainer checkpoint folder; a remote one is copied into `<output>/resume-from/` first, since the Trainer
  reads checkpoints from local disk.
- `resume_from_checkpoint: true` means the work folder's newest checkpoint and is an error when there is none
  (rather than silently starting from scratch).

A checkpoint is complete when it has `trainer_state.json`, which `Trainer._save_checkpoint` writes last.
"""

from __future__ import annotations

from pathlib import Path

from newt.config import Recipe

STATE = "trainer_state.json"


class ResumeError(ValueError):
    pass


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def check(recipe: Recipe, output: Path | None = None) -> None:
    """Fail before launch when `resume_from_checkpoint` names something that is not a complete checkpoint (or is
    `true` while the work folder `output` holds none)."""
    target = recipe.resume_from_checkpoint
    if target is True and output is not None:
        _nothing_to_resume(Path(output))
    if not isinstance(target, str):
        return
    fs, root = _fs(target)
    if not fs.isdir(root):
        raise ResumeError(f"resume_from_checkpoint: {target!r} is not a folder; give a Trainer checkpoint folder "
                          "(e.g. .../checkpoints/checkpoint-200, local or an fsspec URL) or `true`")
    if not fs.isfile(f"{root.rstrip('/')}/{STATE}"):
        raise ResumeError(f"resume_from_checkpoint: {target!r} has no {STATE}, so it is not a complete Trainer "
                          "checkpoint (an interrupted save, or the folder above the checkpoint-<step> folders); "
                          "point it at one checkpoint-<step> folder")


def _nothing_to_resume(output: Path) -> None:
    from newt.train.child import last_checkpoint

    if last_checkpoint(output)[0] is None:
        raise ResumeError(f"resume_from_checkpoint: true, but {output}/checkpoints holds no complete checkpoint "
                          "to resume from; give the checkpoint folder's path instead, or remove the key")


def step_of(folder: Path) -> int:
    import json

    return int(json.loads((folder / STATE).read_text()).get("global_step", 0))


def resume_point(recipe: Recipe, output: Path) -> tuple[str | None, int]:
    """(checkpoint folder to pass to `trainer.train(resume_from_checkpoint=...)`, its step), or (None, 0)."""
    from newt.train.child import last_checkpoint

    own, step = last_checkpoint(output)
    target = recipe.resume_from_checkpoint
    if own or target is None or target is False:
        return own, step
    if target is True:
        _nothing_to_resume(output)
    check(recipe)
    fs, root = _fs(target)
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        local = Path(root)
    else:
        local = output / "resume-from" / root.rstrip("/").rsplit("/", 1)[-1]
        if not (local / STATE).is_file():  # copied whole before, by an attempt that then crashed: reuse it
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get(root.rstrip("/") + "/", str(local), recursive=True)
    return str(local), step_of(local)
