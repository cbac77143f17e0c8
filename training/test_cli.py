"""`sceneparse test`: the command line of both evaluations.

Without `--repository` it is `training.evaluate` (a checkpoint with the original test protocol);
with `--repository` it is `training.evaluate_deployed` (a published version, as served). The
choice is made here so that neither module imports the other's command line: evaluate_deployed
builds on evaluate's protocol, never the other way round.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--repository" or arg.startswith("--repository=") for arg in argv):
        from training.evaluate_deployed import main as test_deployed

        return test_deployed(argv)
    from training.evaluate import main as test_checkpoint

    return test_checkpoint(argv)


if __name__ == "__main__":
    sys.exit(main())
