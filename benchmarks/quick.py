"""--quick mode of the benchmarks: the tests' generated archive in the official aclImdb/ layout, so every script
runs end to end in seconds without the real data (benchmarks/ is on sys.path when a benchmark script runs)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_imdb_archive  # noqa: E402  (tests/ holds the one archive generator)


def quick_archive(folder: Path, per_class: int) -> Path:
    """A generated quick.tar.gz in folder with per_class reviews of each label in each split."""
    return write_imdb_archive(Path(folder) / "quick.tar.gz", per_class=per_class)


def quick_overrides(folder: Path, per_class: int) -> list[str]:
    """Config overrides that point a run at a generated archive and a token cache, both in folder."""
    return [f"data.archive={quick_archive(folder, per_class)}", f"data.cache_dir={Path(folder) / 'cache'}"]
