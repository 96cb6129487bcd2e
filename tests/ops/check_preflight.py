"""Checks .ci/preflight, the gate of `make test`: it passes on this (complete) machine and stops,
naming the package, when a Debian machine lacks python3-venv or a header, and finds headers
wherever Debian's multiarch layout puts them. There the `venv` module is present
(libpython3-stdlib ships it, so `python3 -m venv --help` works) but `ensurepip` is not, and
`python3 -m venv .venv-ops` fails later, in the middle of `make test`."""

import os
import sys
import tempfile
from pathlib import Path

from common import ROOT, Tally, run

PREFLIGHT = ROOT / ".ci" / "preflight"


def main():
    tally = Tally("preflight")
    complete = run([str(PREFLIGHT)], cwd=ROOT)
    tally.check(complete.returncode == 0,
                f".ci/preflight passes on this machine (exit {complete.returncode}: {complete.stderr.strip()})")

    # Debian without python3-venv, emulated: an `ensurepip` that cannot be imported shadows the
    # real one, as its absence does there; `venv` itself still imports.
    with tempfile.TemporaryDirectory() as shadow:
        package = Path(shadow) / "ensurepip"
        package.mkdir()
        (package / "__init__.py").write_text(
            "raise ImportError('ensurepip is not available (Debian: python3-venv)')\n")
        env = dict(os.environ, PYTHONPATH=shadow)
        venv_only = run(["python3", "-m", "venv", "--help"], env=env)
        tally.check(venv_only.returncode == 0, "the emulation keeps `python3 -m venv --help` working")
        missing = run([str(PREFLIGHT)], cwd=ROOT, env=env)
        tally.check(missing.returncode == 1 and "python3-venv" in missing.stderr,
                    "without ensurepip .ci/preflight exits 1 naming python3-venv "
                    f"(exit {missing.returncode}: {missing.stderr.strip()!r})")

    # Headers under another architecture's triplet (arm64 Debian: aarch64-linux-gnu/curl/curl.h)
    # count as installed; absent ones are named.
    with tempfile.TemporaryDirectory() as include:
        env = dict(os.environ, PREFLIGHT_INCLUDE=include)
        missing = run([str(PREFLIGHT)], cwd=ROOT, env=env)
        tally.check(missing.returncode == 1 and "libssl-dev" in missing.stderr
                    and "libcurl4-openssl-dev" in missing.stderr,
                    f"without headers .ci/preflight names libssl-dev and libcurl4-openssl-dev ({missing.stderr.strip()!r})")
        for header in ["openssl/ssl.h", "aarch64-linux-gnu/curl/curl.h"]:
            path = Path(include) / header
            path.parent.mkdir(parents=True)
            path.write_text("")
        arm64 = run([str(PREFLIGHT)], cwd=ROOT, env=env)
        tally.check(arm64.returncode == 0,
                    f"with arm64's header layout .ci/preflight passes (exit {arm64.returncode}: {arm64.stderr.strip()!r})")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
