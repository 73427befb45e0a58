"""Benchmarks: one module per figure, each with main() -> dict."""

import logging as _logging

import structlog as _structlog

# Benchmarks print figures, not the agent's info events.
_structlog.configure(wrapper_class=_structlog.make_filtering_bound_logger(_logging.WARNING))
