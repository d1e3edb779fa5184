"""Names vulture reports as unused that pyinfra's interfaces require (see tests/test_dead_code.py).

Each is used by pyinfra, not by calicolab's own code; nothing else belongs here.
"""

# calicolab/connectors/multipass.py: put_file and get_file take the parameters of pyinfra's
# BaseConnector (pyinfra/connectors/base.py); pyinfra passes remote_temp_filename by name.
remote_temp_filename  # noqa: B018, F821
# The connector methods type **arguments as pyinfra's BaseConnector does, Unpack["ConnectorArguments"];
# vulture does not see a name used only inside a string annotation.
ConnectorArguments  # noqa: B018, F821
