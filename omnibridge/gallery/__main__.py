"""`python -m omnibridge.gallery {count,reindex,repair,seed} --data-dir data [--model ...]`"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm


def main(argv: list[str] | None = None) -> None:
    from ..config import DEFAULT_MODEL
    from ..pipeline import OmniBridgePipeline
    from .store import GalleryStore

    parser = argparse.ArgumentParser(prog="python -m omnibridge.gallery", description=__doc__)
    parser.add_argument("command", choices=("count", "reindex", "repair", "seed"))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--chroma-url", default=None)
    parser.add_argument("--n", type=int, default=300, help="scenes for `seed`")
    args = parser.parse_args(argv)
    store = GalleryStore(args.data_dir, OmniBridgePipeline.from_pretrained(args.model), chroma_url=args.chroma_url)
    if args.command == "count":
        print(store.count(), "items; indexed with", store.index_model())
    elif args.command == "repair":
        print(store.repair())
    elif args.command == "seed":
        print("added", store.seed_builtin(args.n))
    else:
        with tqdm(desc="re-indexing", unit="img") as bar:
            done = store.reindex(progress=lambda d, total: (setattr(bar, "total", total), bar.update(d - bar.n)))
        print(f"re-indexed {done} images with {store.pipeline.embedding_model_id}")


if __name__ == "__main__":
    main()
