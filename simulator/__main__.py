"""`python -m simulator run FILE...` runs scenarios end to end; `list` names the library.

Exit 0 when every expectation of every scenario passed, 1 otherwise, 64 on a
bad command line or scenario file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from simulator.scenario import SCENARIO_DIR, ScenarioError, load, report, run


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m simulator")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run scenario files with the agent as a real subprocess")
    p.add_argument("files", nargs="+", type=Path, help="scenario .toml files")
    p.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    p.add_argument("--log", action="store_true", help="print the agent's last log lines on failure")
    sub.add_parser("list", help="the scenario library")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for f in sorted(SCENARIO_DIR.glob("*.toml")):
            sc = load(f)
            _say(f"{f.name:36} {sc.about}")
        return 0
    try:
        scenarios = [load(f) for f in args.files]
    except ScenarioError as e:
        sys.stderr.write(f"python -m simulator: {e}\n")
        return 64
    failed = 0
    for sc in scenarios:
        _say(f"scenario {sc.name}: {sc.about}")
        if args.workdir:
            wd = args.workdir / sc.path.stem
            result = run(sc, wd, _say)
        else:
            with tempfile.TemporaryDirectory(prefix="posagent-scenario-") as tmp:
                result = run(sc, Path(tmp), _say)
        report(result, _say)
        if not result.passed:
            failed += 1
            if args.log:
                for line in result.log_tail:
                    _say("    | " + line[:300])
    if len(scenarios) > 1:
        _say(f"{len(scenarios) - failed}/{len(scenarios)} scenarios passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
