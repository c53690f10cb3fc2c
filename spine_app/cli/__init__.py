"""``spine-app``: the command line (python-fire). Run ``spine-app --help`` or ``spine-app COMMAND --help``.

One module per command group: ``data`` (synth, import, check, contact-sheet), ``drr``, ``inference`` (infer,
export, publish), ``bench``, ``robustness``, ``monailabel``; ``checks`` checks the command line
before python-fire runs anything; ``common`` holds the helpers they share.
"""

from __future__ import annotations

import logging
import sys

import fire
import fire.helptext

from spine_app import __version__
from spine_app.cli.bench import (
    bench_all,
    bench_compare,
    bench_infer,
    bench_morphometry,
    bench_speed,
    bench_synth,
    bench_view,
)
from spine_app.cli.checks import CommandLineError, Group, check_command_line
from spine_app.cli.common import _refuse
from spine_app.cli.data import _synth_settings, check, contact_sheet, import_, synth
from spine_app.cli.drr import drr
from spine_app.cli.inference import export, infer, publish
from spine_app.cli.monailabel import monailabel_app, monailabel_prepare, monailabel_serve
from spine_app.cli.robustness import (
    _train_settings,
    robustness_evaluate,
    robustness_noise_train,
    robustness_train_size,
)


def version() -> None:
    """Print the spine-app version."""
    print(__version__)


COMMANDS = {
    "synth": synth,
    "import": import_,
    "check": check,
    "bench": Group(
        "Benchmarks: generator speed, inference speed, training speed, the equal-budget comparison, "
        "morphometry, view guessing; `bench all` runs them and rewrites the docs' tables.",
        {
            "synth": bench_synth,
            "infer": bench_infer,
            "speed": bench_speed,
            "compare": bench_compare,
            "morphometry": bench_morphometry,
            "view": bench_view,
            "all": bench_all,
        },
    ),
    "contact-sheet": contact_sheet,
    "drr": drr,
    "infer": infer,
    "export": export,
    "publish": publish,
    "robustness": Group(
        "Robustness: the model under corruptions, learning curve by training-set size, training with noise.",
        {
            "evaluate": robustness_evaluate,
            "train-size": robustness_train_size,
            "noise-train": robustness_noise_train,
        },
    ),
    "monailabel": Group(
        "MONAI Label: build the app, prepare a studies folder, serve it (loopback by default).",
        {"app": monailabel_app, "prepare": monailabel_prepare, "serve": monailabel_serve},
    ),
    "version": version,
}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the command line is checked (flags, device) before fire runs anything."""
    from spine_app.inference.run import resolve_device

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        line = check_command_line(
            args,
            COMMANDS,
            resolve_device,
            {synth: _synth_settings, robustness_train_size: _train_settings, robustness_noise_train: _train_settings},
        )
    except CommandLineError as err:
        _refuse(str(err))
    if line.version:
        print(f"spine-app {__version__}")
        return
    logging.basicConfig(level=line.log_level, format="%(levelname)s %(name)s: %(message)s")
    if line.log_level != logging.WARNING:
        logging.getLogger().setLevel(line.log_level)
    fire.helptext._GetShortFlags = lambda flags: []  # help lists no single-letter aliases (refused above)
    try:
        fire.Fire(COMMANDS, command=line.argv, name="spine-app")
    except (ValueError, FileNotFoundError) as err:
        _refuse(str(err), getattr(err, "exit_status", 1))  # 2 for spine_app.inference.run.BadArgument
