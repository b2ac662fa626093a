"""The SDAManager REST API (issue 6): FastAPI app, authentication, rate limit and the uvicorn runner.

Importing FastAPI is heavy, so nothing outside ``sdamanager --api`` and the tests imports this package.
"""
