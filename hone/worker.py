"""Entry point of each process that hone starts under torchrun: ``python -m hone.worker CONFIG``.

The composition root of a worker process: it sits beside :mod:`hone.api` (which knows the algorithms) so that
the training layer never imports upward. :func:`hone.training.launch.torchrun_command` names this module."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hone.errors import HoneError


def main(argv: list[str]) -> int:
    from hone.api import run
    from hone.config import RunConfig
    from hone.layout import TrainingLayout
    from hone.logs import configure, is_main_rank
    from hone.training.callbacks import load_callbacks

    configure()  # the launcher's --quiet/--verbose (HONE_VERBOSITY); INFO lines and progress bars on rank 0 only
    params = json.loads(open(argv[0]).read())
    algorithm = params.pop("algorithm")
    callbacks = TrainingLayout(Path(argv[0]).parent).callbacks_payload  # pickled by the launcher, if any
    try:
        if callbacks.is_file():
            params["callbacks"] = load_callbacks(callbacks)
        cfg = RunConfig.from_flat(algorithm, params, source=argv[0])
        run(cfg)
    except HoneError as err:
        if is_main_rank():  # every rank meets the same input error; say it once
            print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
