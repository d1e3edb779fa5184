"""Phase: the YaoBank application (runs on control; API calls from the workstation)."""

from pyinfra import host

from calicolab.constants import SERVER
from calicolab.model import lab_for_host
from calicolab.operations import kubernetes
from calicolab.render import render_manifest

YAOBANK_DEPLOYMENTS = ["customer", "summary", "database"]


def deploy(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != SERVER:
        return

    kubernetes.applied(
        name="YaoBank: apply the manifest (server-side)",
        manifest="yaobank",
        manifest_yaml=render_manifest(lab, "yaobank"),
        lab=lab,
    )
    kubernetes.rolled_out(
        name="YaoBank: deployments rolled out",
        namespace=lab.yaobank_namespace,
        names=YAOBANK_DEPLOYMENTS,
        timeout=lab.timeout_rollout,
        lab=lab,
        image_setting="yaobank_images",
    )
