"""``moreh-smi --dashboard``: a live Textual view of a token's devices and, for admins, the cluster.

Importing this package loads nothing heavy; :mod:`moreh_tools.dashboard.cli` checks the terminal
and the token before :mod:`moreh_tools.dashboard.app` (and with it Textual) is imported.
"""
