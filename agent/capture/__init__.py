"""From a trigger to a sealed bundle: the capturer, diagnostics probes, screen privacy, the screenshot child.

Imports core, bundle, spool, monitors (for the MonitorContext) and drivers.
"""
