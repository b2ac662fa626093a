"""The user tools and the admin console working against a remote SDA Manager (``MOREH_SDA_MANAGER_ADDRESS``).

Only the standard library is used here (urllib): the client side of a remote tool must start as fast as the
local one, without the server's FastAPI stack.
"""
