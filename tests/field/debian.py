"""Cached Debian 12 trees (debootstrap) and an offline wheelhouse of the project, for field tests.

`build_tree(name, include)` returns a `debootstrap --variant=minbase bookworm` tree under the
cache dir (`$POSAGENT_TEST_CACHE`, default /var/cache/posagent-test). A tree is built into a
temporary directory beside its final place and renamed into place, under a file lock, so two
processes never build the same tree and nobody sees a half-built one. A stamp inside the tree
records what it was built from (suite, variant, mirror, include list); a different include list
rebuilds it. Callers must not modify the returned tree: copy it or overlay it.

`build_wheelhouse(dest)` writes the project wheel and the wheels of its runtime dependencies
into `dest`, so `pip install --no-index --find-links dest posagent` works without network
inside a tree. Dependency wheels are cached (keyed by the dependency list and target).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What a booted systemd with the agent needs; callers add to it.
BASE_INCLUDE = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv"]
STAMP_NAME = ".posagent-test-tree.json"
DEBOOTSTRAP_TIMEOUT_S = 1200.0
# The tree's python3 (Debian 12): the dependency wheels are fetched for it, not for the host.
TREE_PYTHON = "3.11"
TREE_PLATFORMS = (
    "manylinux_2_36_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)


def debootstrap_path() -> str | None:
    """The debootstrap executable (in /usr/sbin, which a non-login PATH may lack), or None."""
    return shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")


def cache_dir() -> Path:
    """The cache directory shared by all field tests (and CI runs on the same machine)."""
    return Path(os.environ.get("POSAGENT_TEST_CACHE", "/var/cache/posagent-test"))


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses ($POSAGENT_TEST_MIRROR overrides)."""
    env = os.environ.get("POSAGENT_TEST_MIRROR")
    if env:
        return env
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.iterdir())
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        # deb822 ("URIs: X" + "Suites: bookworm ...") and one-line ("deb X bookworm main").
        for block in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1).rstrip("/")
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", text, re.M):
            if m.group(2) == SUITE:
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) tree, unmounting what a killed debootstrap left inside."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _stamp(include: list[str], mirror: str) -> str:
    return json.dumps(
        {"suite": SUITE, "variant": VARIANT, "mirror": mirror, "include": sorted(set(include))},
        sort_keys=True,
    )


def tree_is_current(tree: Path, include: list[str], mirror: str | None = None) -> bool:
    """True when `tree` exists and was built from this include list."""
    try:
        return (tree / STAMP_NAME).read_text() == _stamp(include, mirror or apt_mirror())
    except OSError:
        return False


def build_tree(name: str, include: list[str]) -> Path:
    """A cached minbase bookworm tree with `include` installed; built once, then reused.

    Raises subprocess.CalledProcessError (with debootstrap's log tail) when the build fails.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"bad tree name {name!r}")
    cache = cache_dir()
    tree = cache / name
    mirror = apt_mirror()
    with locked(cache / f".{name}.lock"):
        if tree_is_current(tree, include, mirror):
            return tree
        for stale in cache.glob(f".{name}.build-*"):
            remove_tree(stale)  # a build killed mid-way; we hold the lock, nobody else builds
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=cache))
        os.chmod(tmp, 0o755)
        cmd = [debootstrap_path() or "debootstrap", f"--variant={VARIANT}"]
        if include:
            cmd.append("--include=" + ",".join(sorted(set(include))))
        cmd += [SUITE, str(tmp), mirror]
        try:
            # debootstrap runs chroot and friends from /usr/sbin
            env = {
                **os.environ,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
            }
            r = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=DEBOOTSTRAP_TIMEOUT_S,
                check=False,
                env=env,
            )
            if r.returncode != 0:
                log = tmp / "debootstrap" / "debootstrap.log"
                tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                raise subprocess.CalledProcessError(r.returncode, cmd, r.stdout, r.stderr + tail)
            (tmp / STAMP_NAME).write_text(_stamp(include, mirror))
            if tree.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=cache))
                os.rename(tree, old / "tree")
                os.rename(tmp, tree)
                remove_tree(old)
            else:
                os.rename(tmp, tree)
        except BaseException:
            remove_tree(tmp)
            raise
    return tree


def project_dependencies() -> list[str]:
    """The base (runtime) dependencies declared in pyproject.toml."""
    data = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def _pip(args: list[str], timeout: float = 600.0) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)


def dependency_wheels() -> Path:
    """A cached directory with wheels of the runtime dependencies for the tree's Python."""
    deps = project_dependencies()
    key = hashlib.sha256(json.dumps([deps, TREE_PYTHON, TREE_PLATFORMS]).encode()).hexdigest()[:16]
    cache = cache_dir()
    out = cache / f"wheels-{key}"
    with locked(cache / ".wheels.lock"):
        if (out / ".complete").exists():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache))
        os.chmod(tmp, 0o755)
        try:
            args = ["download", "--quiet", "--only-binary=:all:", "--dest", str(tmp)]
            args += ["--python-version", TREE_PYTHON, "--implementation", "cp"]
            args += ["--abi", "cp" + TREE_PYTHON.replace(".", ""), "--abi", "abi3", "--abi", "none"]
            for plat in TREE_PLATFORMS:
                args += ["--platform", plat]
            _pip(args + ["--platform", "any", *deps])
            (tmp / ".complete").write_text("\n".join(deps) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def source_items() -> list[str]:
    """What the wheel is built from: pyproject.toml, its readme and the packages it includes."""
    data = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.split("*")[0].split(".")[0] for p in patterns}
    items = ["pyproject.toml", str(data["project"].get("readme", "README.md"))]
    items += sorted(t for t in tops if (PROJECT / t).is_dir())
    items += [n for n in ("LICENSE", "MANIFEST.in") if (PROJECT / n).exists()]
    return items


def copy_source(src: Path) -> None:
    """A clean copy of the project's source (`source_items`, no caches) into src."""
    for item in source_items():
        if (PROJECT / item).is_dir():
            shutil.copytree(PROJECT / item, src / item, ignore=_IGNORE)
        else:
            shutil.copy2(PROJECT / item, src / item)


def build_wheelhouse(dest: Path) -> Path:
    """Fill `dest` with the project wheel (built now) and the dependency wheels; return the
    project wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posagent-wheel-") as td:
        # Build from a clean copy: an in-place build reuses build/lib, which keeps modules
        # that were moved or deleted since and would ship them in the wheel.
        src = Path(td) / "src"
        src.mkdir()
        copy_source(src)
        _pip(["wheel", "--quiet", "--no-deps", "-w", td, str(src)])
        built = sorted(Path(td).glob("posagent-*.whl"))
        if len(built) != 1:
            raise RuntimeError(f"expected one posagent wheel, got {built}")
        wheel = dest / built[0].name
        shutil.copy2(built[0], wheel)
    for whl in dependency_wheels().glob("*.whl"):
        shutil.copy2(whl, dest / whl.name)
    return wheel


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.field.debian NAME [PKG...]`: build (or reuse) a tree; print its path."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m tests.field.debian NAME [EXTRA_PACKAGE...]", file=sys.stderr)
        return 2
    print(build_tree(args[0], BASE_INCLUDE + args[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
