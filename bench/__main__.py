"""Run every benchmark in bench/ (or the ones named) and print their figures.

python -m bench                 # all of them
python -m bench spool redact    # bench_spool.py and bench_redact.py
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    """Import each bench module, call main(), collect the figures."""
    from bench import quiet_logs

    quiet_logs()
    here = Path(__file__).parent
    names = argv or sorted(p.stem[len("bench_") :] for p in here.glob("bench_*.py"))
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    failed = 0
    for name in names:
        sys.stdout.write(f"== bench_{name}\n")
        sys.stdout.flush()
        try:
            mod = importlib.import_module(f"bench.bench_{name}")
            results[name] = mod.main()
        except Exception as e:  # one broken benchmark must not hide the others
            failed += 1
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(f"   FAILED: {type(e).__name__}: {e}\n")
    out = here / "out"
    out.mkdir(exist_ok=True)
    path = out / "results.json"
    if argv and path.exists():  # a partial run updates the figures it measured, keeps the rest
        try:
            results = {**json.loads(path.read_text()), **results}
        except ValueError:
            pass
    path.write_text(json.dumps(results, indent=2, default=str))
    sys.stdout.write(f"figures written to {out / 'results.json'}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
