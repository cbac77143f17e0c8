"""Build the demo model with the project's own steps, unless the repository already has a model.

make-synthetic -> train (tiny ResNet-18 PSPNet config) -> export -> publish as `demo`.
It is a toy: a few minutes of CPU training on rendered shapes, not a real scene parser.
`python -m sceneparse.demo --repository model_repository` (what `make serve` runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sceneparse.atomic import atomic_write_text
from serving.repository import ModelRepository, RepositoryError

DEMO_CONFIG = "synthetic/synthetic_pspnet18"


def build_demo(repository: Path, workdir: Path, name: str = "demo", force: bool = False,
               synthetic_args: Sequence[str] = (), overrides: Sequence[str] = ()) -> bool:
    """Build and publish the demo model; returns False when the repository already has a model.

    `synthetic_args` go to make-synthetic (`--train 50`), `overrides` (KEY VALUE) to the
    training config; both default to the demo as `make serve` builds it.
    """
    from sceneparse.cli import main as sceneparse

    repo = ModelRepository(repository)
    repo.check_root(create=True)
    if repo.list_models() and not force:
        print(f"model repository {repo.root} already has {', '.join(repo.list_models())}: not building the demo")
        return False
    from training.config import config_path, load_config

    data, run = workdir / "synthetic", workdir / "run"
    print(f"building the demo model in {workdir} (synthetic data, tiny PSPNet, a few minutes on a CPU)")
    if sceneparse(["make-synthetic", "--out", str(data), *synthetic_args]) != 0:
        raise RuntimeError("demo step failed: make-synthetic")
    # List files are read relative to the working directory (as in the original), so the demo
    # writes one resolved config that train and export both read.
    cfg = load_config(config_path(DEMO_CONFIG), [
        "data_root", str(data), "train_list", str(data / "list" / "train.txt"),
        "val_list", str(data / "list" / "val.txt"), "test_list", str(data / "list" / "val.txt"),
        "names_path", str(data / "synthetic_names.txt"), "colors_path", str(data / "synthetic_colors.txt"),
        "save_path", str(run), *overrides])
    config = workdir / "demo.yaml"
    atomic_write_text(config, cfg.to_yaml())
    steps = [
        ["train", "--config", str(config)],
        ["export", "--config", str(config), "--checkpoint", str(run / "final.pth"), "--name", name,
         "--repository", str(repository)],
    ]
    for step in steps:
        if sceneparse(step) != 0:
            raise RuntimeError(f"demo step failed: sceneparse {' '.join(step)}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sceneparse.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"))
    parser.add_argument("--name", default="demo")
    parser.add_argument("--force", action="store_true", help="build even if the repository has models")
    args = parser.parse_args(argv)
    try:
        build_demo(args.repository, args.workdir, args.name, args.force)
    except (RepositoryError, RuntimeError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
