"""The default run's local stack: Temporal dev server, one anvil per network, test tokens, bootstrap.

Used by `make run` (devstack.run) and by the test fixtures, so both start the same real processes.
"""
