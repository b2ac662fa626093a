"""moreh-smi: a user's view of their token's devices (SDAs), jobs and GPUs.

``status`` gathers what the tool shows as plain dataclasses (the dashboard reuses it), ``render``
turns them into the reference's tables, ``devices`` changes the token's devices, ``prompt`` is
the ``Selection (…, q, Q):`` prompt shared with moreh-switch-model, and ``main`` is the entry.
"""
