"""Phase: Calico through the tigera-operator (runs on control; API calls from the workstation).

Order: tigera-operator manifest → operator deployment rolled out → CRDs installations and
tigerastatuses Established → Installation → tigerastatus/calico Available → nodes Ready.
"""

from pyinfra import host

from calicolab.constants import SERVER
from calicolab.model import lab_for_host
from calicolab.operations import kubernetes
from calicolab.render import render_manifest

OPERATOR_NAMESPACE = "tigera-operator"
OPERATOR_DEPLOYMENT = "tigera-operator"
OPERATOR_CRDS = ["installations.operator.tigera.io", "tigerastatuses.operator.tigera.io"]


def install(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != SERVER:
        return

    kubernetes.applied(
        name="Calico: apply the tigera-operator manifest (server-side)",
        manifest="tigera-operator",
        manifest_yaml=render_manifest(lab, "tigera-operator"),
        lab=lab,
    )
    kubernetes.rolled_out(
        name="Calico: tigera-operator deployment rolled out",
        namespace=OPERATOR_NAMESPACE,
        names=[OPERATOR_DEPLOYMENT],
        timeout=lab.timeout_operator_ready,
        lab=lab,
        image_setting="tigera_operator_image",
    )
    kubernetes.crds_established(
        name="Calico: operator CRDs Established",
        names=OPERATOR_CRDS,
        timeout=lab.timeout_operator_ready,
        lab=lab,
    )
    kubernetes.applied(
        name="Calico: apply the Installation",
        manifest="installation",
        manifest_yaml=render_manifest(lab, "installation"),
        lab=lab,
    )
    kubernetes.tigerastatus_available(
        name="Calico: tigerastatus/calico Available",
        status="calico",
        timeout=lab.timeout_calico_available,
        lab=lab,
    )
    kubernetes.nodes_ready(
        name="Calico: nodes Ready",
        names=kubernetes.default_node_names(lab),
        timeout=lab.timeout_nodes_ready,
        lab=lab,
    )
