"""The bundle format `posagent.bundle/1`: writer, reader and verifier, the typed Trigger, the HTML page.

Imports core and drivers; the spool, capture, upload and the collector build on it.
"""
