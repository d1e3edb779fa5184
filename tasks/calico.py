"""Phase: Calico through the tigera-operator (runs on control; API calls from the workstation).

Order: pool settings checked against the live cluster → tigera-operator manifest → operator deployment
rolled out → operator CRDs Established → APIServer (when calico_apiserver is Enabled) → Installation →
tigerastatus/calico Available → tigerastatus/apiserver Available → IP pools as set → nodes Ready.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from calicolab.constants import SERVER
from calicolab.model import LabConfigError, lab_for_host
from calicolab.operations import kubernetes
from calicolab.render import render_manifest

OPERATOR_NAMESPACE = "tigera-operator"
OPERATOR_DEPLOYMENT = "tigera-operator"
OPERATOR_CRDS = [
    "installations.operator.tigera.io",
    "tigerastatuses.operator.tigera.io",
    "apiservers.operator.tigera.io",
    "ippools.crd.projectcalico.org",
]


def install(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != SERVER:
        return
    installation_yaml = render_manifest(lab, "installation")
    apiserver = lab.calico_apiserver == "Enabled"

    # Read while the deploy is planned (with -y too), so a refused setting changes nothing anywhere.
    problems = kubernetes.live_pool_problems(lab, installation_yaml)
    if problems:
        raise PyinfraError(str(LabConfigError(problems)))

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
    if apiserver:  # before the Installation, so the operator can apply a pool change through it
        kubernetes.applied(
            name="Calico: apply the APIServer (Calico API server)",
            manifest="apiserver",
            manifest_yaml=render_manifest(lab, "apiserver"),
            lab=lab,
        )
    kubernetes.applied(
        name="Calico: apply the Installation",
        manifest="installation",
        manifest_yaml=installation_yaml,
        lab=lab,
    )
    kubernetes.tigerastatus_available(
        name="Calico: tigerastatus/calico Available",
        status="calico",
        timeout=lab.timeout_calico_available,
        lab=lab,
    )
    if apiserver:
        kubernetes.tigerastatus_available(
            name="Calico: tigerastatus/apiserver Available",
            status="apiserver",
            timeout=lab.timeout_calico_available,
            lab=lab,
        )
    kubernetes.pools_as_set(
        name="Calico: IP pools as set, tigerastatus/ippools Available",
        installation_yaml=installation_yaml,
        timeout=lab.timeout_calico_available,
        lab=lab,
    )
    kubernetes.nodes_ready(
        name="Calico: nodes Ready",
        names=kubernetes.default_node_names(lab),
        timeout=lab.timeout_nodes_ready,
        lab=lab,
    )
