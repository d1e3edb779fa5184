"""Phase: verification from host1, like the course (`curl 198.19.0.1:30180`)."""

from pyinfra import host

from calicolab.model import lab_for_host
from calicolab.operations import kubernetes

EXPECTED_TEXT = "Welcome to YAO Bank"


def yaobank_url(lab) -> str:
    return f"http://{lab.vms['control'].lab_ip}:{lab.yaobank_node_port}/"


def check(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != lab.client.name:
        return

    kubernetes.http_answers(
        name=f"Verify: YaoBank answers on {yaobank_url(lab)} from host1",
        url=yaobank_url(lab),
        expect=EXPECTED_TEXT,
        timeout=lab.timeout_app_answer,
        lab=lab,
    )
