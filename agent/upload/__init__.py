"""From the spool to the collector: the uploader thread, the upload worker child, the v1 protocol.

Imports core, bundle and spool; the collector imports only `agent.upload.protocol` from here.
"""
