"""Command line: ``python -m calicolab render OUT_DIR [--data key=value ...]``.

Writes every file calicolab would put on the VMs or apply to the cluster into OUT_DIR, with
the same settings (and ``--data`` overrides) as ``pyinfra inventory.py deploy.py``. Run it from the
checkout: the settings (``group_data/``) and templates (``templates/``) are read from there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyinfra_cli.util import parse_cli_arg

from calicolab.model import LabConfigError, load_defaults, load_lab
from calicolab.render import render_all


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, converted by pyinfra's own ``--data`` parser."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LabConfigError([f"--data {pair!r}: expected key=value, e.g. --data calico_version=v3.31.7"])
        overrides[key.strip()] = parse_cli_arg(value)
    return overrides


class OutputError(Exception):
    """OUT_DIR cannot take the rendered files (the message names the path and the fix)."""


def write_files(out_dir: Path, files: dict[str, str]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; give a folder to render into (it is created if missing)")
    for relative, text in files.items():
        target = out_dir / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as error:
            where = error.filename or target
            raise OutputError(f"cannot write {where}: {error.strerror}; give a folder you can write to") from None


def render_command(out_dir: Path, pairs: list[str]) -> int:
    lab = load_lab(load_defaults() | parse_overrides(pairs))
    files = render_all(lab)
    write_files(out_dir, files)
    sys.stderr.write(f"rendered {len(files)} files into {out_dir}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calicolab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render cloud-init, k3s and BIRD configuration and manifests")
    render.add_argument("out_dir", type=Path, help="folder to write the rendered files into")
    render.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of group_data/all.py (repeatable)")
    args = parser.parse_args(argv)
    try:
        return render_command(args.out_dir, args.data)
    except (LabConfigError, OutputError) as error:
        sys.stderr.write(f"calicolab: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
