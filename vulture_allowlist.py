"""Names vulture reports as unused that pyinfra's interfaces require (see tests/test_dead_code.py).

Each entry is a bare name on its own line with a comment saying which pyinfra interface uses it.
Nothing needs one today: the connector consumes the BaseConnector parameters it does not use
(``del remote_temp_filename``) and imports ConnectorArguments for its annotations.
"""
