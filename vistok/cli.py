"""``vistok fit|validate|test --config configs/....yaml``: one LightningCLI for every model and dataset;
``vistok eval ...``: the evaluation CLI (:mod:`vistok.eval_cli`).

Every ``fit`` run gets :class:`vistok.training.FiniteLoss` (stop on a NaN/inf loss, naming the step) and
:class:`vistok.training.Resumable` (SIGTERM / Ctrl-C save ``last.ckpt``; ``--ckpt_path last`` resumes with the same
data order and random state).  Errors print one line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys

USAGE_HINT = "(add --debug for the traceback)"


def _one_line(err: BaseException, with_type: bool = True) -> str:
    """The error as one line; jsonargparse's "does not validate against any of the Union subtypes" wrapper is cut
    down to the model's own message."""
    text = " ".join(str(err).split()) or repr(err)
    if "Errors: - " in text:
        text = text.split("Errors: - ", 1)[1].split(" - Expected a <class 'NoneType'>", 1)[0]
    return f"{type(err).__name__}: {text}" if with_type else text


def _fail(command: str, message: str) -> None:
    print(f"vistok {command}: error: {message} {USAGE_HINT}", file=sys.stderr)
    sys.exit(1)


def _eval(argv: list[str]) -> None:
    import importlib

    try:
        eval_cli = importlib.import_module("vistok.eval_cli")
    except ModuleNotFoundError as err:
        if err.name != "vistok.eval_cli":
            raise
        print("vistok eval: error: this install has no vistok/eval_cli.py (the evaluation CLI); update vistok to a "
              "version that ships it", file=sys.stderr)
        sys.exit(1)
    eval_cli.main(argv)


def _lightning_cli(argv: list[str]) -> None:
    import warnings

    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from vistok.training.callbacks import FiniteLoss, Resumable

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # main() passes sys.argv
    LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, args=argv,
                 trainer_defaults={"callbacks": [FiniteLoss(), Resumable()]},
                 parser_kwargs={"exit_on_error": False})


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vistok`` command (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["eval"]:
        return _eval(argv[1:])
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv and not argv[0].startswith("-") else "cli"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jsonargparse import ArgumentError
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        _lightning_cli(argv)
    except SIGTERMException:  # Resumable saved last.ckpt and said so
        sys.exit(128 + signal.SIGTERM)
    except ArgumentError as err:  # bad config file, key or value: jsonargparse's message, without the usage dump
        if debug:
            raise
        _fail(command, _one_line(err, with_type=False))
    except Exception as err:  # noqa: BLE001  (any failure of a run: one readable line unless --debug)
        if debug:
            raise
        _fail(command, _one_line(err))


if __name__ == "__main__":
    main()
