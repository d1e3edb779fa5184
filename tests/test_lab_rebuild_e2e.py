"""End to end: the workstation's download cache across a teardown (the real CLI in the namespace test lab).

Its own lab, so it runs beside ``test_lab_e2e.py``: build, tear down, build again (nothing is fetched
again), then a tampered cached file is refused and fetched again. The tests run in order. Root only.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.test_lab_e2e import PROJECT, PYINFRA, assert_lab_healthy, lab_session, mirror_downloads, workstation_cache

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lab():
    with lab_session() as lab:
        built = lab.deploy("-y")
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        argv = [PYINFRA, "inventory.py", "teardown.py", "-y", f"--data=state_dir={lab.state_dir}"]
        torn_down = lab.netlab.ws_run(argv, env=lab.netlab.ws_env(), cwd=str(PROJECT), timeout=300)
        assert torn_down.returncode == 0, torn_down.stdout[-3000:] + torn_down.stderr[-3000:]
        assert lab.instances() == {} and workstation_cache(lab).is_dir()
        yield lab


def test_a_rebuild_after_teardown_downloads_nothing_again(lab):
    before = len(lab.mirror.requests())
    result = lab.deploy("-y")
    # the report card's failed rows first: the tail of the output would cut them off
    failed_rows = [line for line in (result.stdout + result.stderr).splitlines() if line.lstrip().startswith("FAIL")]
    assert result.returncode == 0, "\n".join(failed_rows) + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    assert_lab_healthy(lab)
    assert mirror_downloads(lab, before) == []


def test_a_corrupted_cached_download_is_refused_and_downloaded_again(lab):
    for cached in workstation_cache(lab).rglob("kubectl"):
        cached.write_bytes(b"#!/bin/sh\necho tampered\n")
    before = len(lab.mirror.requests())
    result = lab.deploy("-y")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    kubectl = "/kubectl/release/v1.35.4/bin/linux/amd64/kubectl"
    assert sorted(path for _, path in mirror_downloads(lab, before)) == [kubectl, kubectl + ".sha256"]
    published = (lab.mirror.root / kubectl.lstrip("/")).read_bytes()
    installed = lab.vm("host1", "sha256sum /usr/local/bin/kubectl").split()[0]
    assert installed == hashlib.sha256(published).hexdigest()
