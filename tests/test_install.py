"""Installing on a student's laptop: wheels only, on every platform we support, and one line for an old Python."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
import install  # noqa: E402  (install.py at the checkout's root)

# pip's platform tags for the machines students use; Intel Macs as old as macOS 12.
PLATFORMS = {
    "macos-arm64": ["macosx_14_0_arm64"],
    "macos-x86_64": ["macosx_12_0_x86_64"],
    "linux-wsl-x86_64": ["manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "linux-aarch64": ["manylinux_2_35_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
}
PYTHONS = ("3.11", "3.12", "3.13")


def test_requirements_hold_only_what_the_deploy_needs():
    lines = [ln.split("#")[0].strip() for ln in (PROJECT / "requirements.txt").read_text().splitlines()]
    packages = {ln.split("==")[0].lower() for ln in lines if ln and not ln.startswith("-")}
    # the Kubernetes API is spoken over urllib3 (the kubernetes package only checks the emulator, in
    # requirements-dev.txt); certifi and typing_extensions are imported by calicolab itself
    assert packages == {"pyinfra", "jinja2", "pyyaml", "urllib3", "certifi", "typing_extensions"}
    imported = "\n".join(path.read_text() for path in (PROJECT / "calicolab").rglob("*.py"))
    for module in ("jinja2", "yaml", "urllib3", "certifi", "typing_extensions"):
        assert f"import {module}" in imported or f"from {module} import" in imported, module
    assert "-e ." in lines, "the project itself (it registers the @multipass connector)"
    dev = (PROJECT / "requirements-dev.txt").read_text()
    assert "pytest" in dev and "netifaces" in dev, "test tools live in requirements-dev.txt"


def _resolve(platform_tags: list[str], python: str, requirements: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as target:
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                "--ignore-installed", "--only-binary=:all:", "--python-version", python, "--target", target,
                "-r", str(requirements)]
        for tag in platform_tags:
            argv += ["--platform", tag]
        return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def test_every_runtime_package_installs_from_wheels_on_every_platform(tmp_path):
    # The project itself cannot be resolved for another platform; its own dependencies are listed in
    # requirements.txt with the same names, so everything else is checked.
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("".join(ln + "\n" for ln in (PROJECT / "requirements.txt").read_text().splitlines()
                               if not ln.startswith("-e")))
    combos = [(name, tags, python) for name, tags in PLATFORMS.items() for python in PYTHONS]
    with ThreadPoolExecutor(max_workers=len(combos)) as pool:
        results = list(pool.map(lambda c: (c[0], c[2], _resolve(c[1], c[2], runtime)), combos))
    failures = [f"{name} Python {python}: {result.stderr.strip().splitlines()[-1:]}"
                for name, python, result in results if result.returncode != 0]
    assert not failures, "\n".join(failures)


def test_an_old_python_gets_one_line_naming_the_version_needed():
    message = install.python_problem((3, 9, 6, "final", 0), "/usr/bin/python3")
    assert message.startswith("calicolab needs Python 3.11 or newer; /usr/bin/python3 is Python 3.9.6.")
    assert "\n" not in message
    assert install.python_problem((3, 11, 0, "final", 0), "python3") is None
    assert install.python_problem((3, 13, 1, "final", 0), "python3") is None


OLD_PYTHONS = sorted(set(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[6-9]*/bin/python3"))
                         + glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3"))
                         + glob.glob("/usr/bin/python3.[6-9]") + glob.glob("/usr/bin/python3.10")))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python older than 3.11 on this machine to run install.py with")
@pytest.mark.parametrize("python", OLD_PYTHONS)
def test_install_py_with_an_old_python_prints_one_line_and_touches_nothing(python, tmp_path):
    # a copy, so that "nothing created" is checked in a checkout of its own
    (tmp_path / "install.py").write_text((PROJECT / "install.py").read_text())
    (tmp_path / "requirements.txt").write_text((PROJECT / "requirements.txt").read_text())
    result = subprocess.run([python, "install.py"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calicolab needs Python 3.11 or newer"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["install.py", "requirements.txt"]


def test_install_byte_compiles_our_code_even_where_writing_bytecode_is_off(tmp_path):
    # A checkout of its own whose ".venv" is this test's interpreter (so pip has nothing to fetch):
    # every run imports calicolab and tasks, and with PYTHONDONTWRITEBYTECODE (set in many containers
    # and CI images) Python would compile them from source on every run.
    for name in ("install.py",):
        (tmp_path / name).write_text((PROJECT / name).read_text())
    (tmp_path / "requirements.txt").write_text("PyYAML\n")
    for package in install.OWN_CODE:
        shutil.copytree(PROJECT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    venv_python.chmod(0o755)
    result = subprocess.run([sys.executable, "install.py"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr
    sources = [p for package in install.OWN_CODE for p in (tmp_path / package).rglob("*.py")]
    assert len(sources) > 20
    for source in sources:
        # PEP 552: magic, flags (0: checked by timestamp), the source's mtime and size
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER, source
        flags, mtime, size = struct.unpack("<III", header[4:16])
        assert (flags, mtime, size) == (0, int(source.stat().st_mtime) & 0xFFFFFFFF, source.stat().st_size), source
