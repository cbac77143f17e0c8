"""The `sceneparse` console script: a thin dispatcher over each part's own `main(argv)`.

Subcommands are imported lazily so that `sceneparse serve` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": ("training.data.synthetic:main", "write a rendered synthetic dataset in the original list format"),
    "train": ("training.train:main", "train PSPNet/PSANet from a YAML config (DDP, SyncBN, resume)"),
    "test": ("training.test_cli:main", "evaluate a checkpoint (original test protocol) or a published version (--repository)"),
    "export": ("export.cli:main", "export a checkpoint to ONNX/TorchScript and publish it to a model repository"),
    "serve": ("serving.cli:main", "run the HTTP gateway over a model repository"),
    "predict": ("serving.predict:main", "segment images and videos offline with a published model or a checkpoint"),
    "pipeline": ("retraining.cli:pipeline_main", "retrain, evaluate, gate, export, publish and reload"),
    "versions": ("retraining.cli:versions_main", "list a model's versions, their metrics and the served one"),
    "rollback": ("retraining.cli:rollback_main", "make an earlier version the served one"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sceneparse <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `sceneparse <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from sceneparse import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"sceneparse: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[command]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in {"torch", "torchvision", "onnx"}:
            print(
                f"sceneparse {command}: needs {exc.name}; install the training extra: pip install 'sceneparse[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    result = getattr(module, func_name)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
