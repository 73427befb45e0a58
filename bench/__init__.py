"""Benchmarks: one module per figure, each with main() -> dict."""


def quiet_logs() -> None:
    """Benchmarks print figures, not the agent's info events (called by the runners, not on import)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
