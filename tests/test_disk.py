"""Telling a full disk from other write failures, on a real tmpfs (tests/tmpfs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqexp.disk import DiskFullError, guarded_write, is_disk_full
from tests.tmpfs import small_tmpfs  # noqa: F401  (a fixture)


def test_torch_writer_errors_on_a_full_disk_are_recognised(tmp_path: Path, small_tmpfs) -> None:
    """torch.save to a path gives only "RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos" (no errno): the free space decides. Another RuntimeError on a roomy disk is not a full disk."""
    disk = small_tmpfs("64k")
    big = {"x": torch.zeros(100_000)}
    with pytest.raises(RuntimeError, match="unexpected pos") as err:
        torch.save(big, disk / "a.pt")
    assert getattr(err.value, "errno", None) is None and is_disk_full(err.value, disk)
    assert not is_disk_full(RuntimeError("unexpected pos"), tmp_path)
    assert not is_disk_full(ValueError("bad"), disk)


def test_guarded_write_removes_the_partial_file_and_names_the_folder(tmp_path: Path, small_tmpfs) -> None:
    disk = small_tmpfs("64k")
    target = disk / "x.ckpt"
    target.write_bytes(b"previous")
    tmp = disk / ".x.ckpt.tmp"
    with pytest.raises(DiskFullError) as err:
        with guarded_write(tmp, target, "checkpoint", fix="set `trainer.checkpoint_dir` elsewhere"):
            with open(tmp, "wb") as f:
                torch.save({"x": torch.zeros(100_000)}, f)
    assert str(err.value).startswith(f"no space left on {disk} while writing the checkpoint x.ckpt (")
    assert str(err.value).endswith(f"; the previous checkpoint {target} is intact; free some space there or "
                                   "set `trainer.checkpoint_dir` elsewhere")
    assert err.value.errno == 28 and sorted(p.name for p in disk.iterdir()) == ["x.ckpt"]
    assert target.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="not a disk error"):  # other failures pass through, file removed
        with guarded_write(tmp_path / "t.tmp", tmp_path / "t", "checkpoint", fix=""):
            (tmp_path / "t.tmp").write_text("half")
            raise ValueError("not a disk error")
    assert not (tmp_path / "t.tmp").exists()
