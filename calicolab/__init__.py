"""calicolab: the Calico Operator Level 1 lab, provisioned declaratively with pyinfra."""

__version__ = "0.1.0"
