"""Data preparation time: cold (read the archive, tokenise and build the vocabulary of all 50k labelled
reviews into an empty cache) and warm (read the token cache back).

    python benchmarks/data_prep.py --archive ../shared/data/aclImdb_labelled.tar.gz
    python benchmarks/data_prep.py --quick      # a generated 2,000-review archive (CI-sized)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stacked_rnn.tasks.imdb import IMDBDataModule


def prepare(archive: Path, cache: Path, val_size: int) -> tuple[float, IMDBDataModule]:
    start = time.perf_counter()
    dm = IMDBDataModule(archive=str(archive), cache_dir=str(cache), val_size=val_size, progress=False)
    dm.prepare_data()
    dm.setup()
    return time.perf_counter() - start, dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an aclImdb .tar.gz (default with --quick: generated)")
    parser.add_argument("--quick", action="store_true", help="use a small generated archive")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive, val_size = args.archive, 2500
        if args.quick or archive is None:
            val_size = 200
            from quick import quick_archive

            archive = quick_archive(tmp, per_class=500)
        cold, dm = prepare(archive, Path(tmp) / "cache", val_size)
        warm, _ = prepare(archive, Path(tmp) / "cache", val_size)
    reviews = sum(len(d) for d in dm.datasets.values())
    print(f"archive: {archive}\nreviews: {reviews:,}  vocabulary: {len(dm.vocab):,}")
    print(f"cold (read + tokenise + vocab + cache): {cold:.2f} s\nwarm (token cache):                        {warm:.2f} s")


if __name__ == "__main__":
    main()
