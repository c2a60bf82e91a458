"""A small tmpfs mounted by the test itself: real "no space left on device" without mocking a write.

Use the ``small_tmpfs`` fixture: ``small_tmpfs("64k")`` mounts a fresh tmpfs of that size under
the test's tmp_path and returns its folder; it is unmounted when the test ends. Where mounting
is not allowed (not root, no CAP_SYS_ADMIN, a container without mount rights) the test is
skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free in ``folder``'s file system."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs for the disk-full test needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
