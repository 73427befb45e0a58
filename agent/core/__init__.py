"""Records, config, logging, redaction, durable files, time format and exit codes: what every stage shares.

Imports only drivers (and the standard library); every other agent package may import it.
"""
