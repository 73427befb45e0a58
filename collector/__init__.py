"""The reference collector: ingest server (upload protocol v1), storage and operator web page.

Needs the `collector` extra (Starlette, uvicorn). The agent never imports this package.
"""
