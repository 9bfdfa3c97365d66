"""Run the fuzz targets, each for a bounded time, each in its own process; exit 1 if any found a crash.

    python -m fuzz.run                          # every target, 30 s each
    python -m fuzz.run --seconds 6 tokens       # one target
    python -m fuzz.run --artifacts out/ --corpus corpus/   # keep crashes and the grown corpus

A crash is any exception other than a 4xx GatewayError (see fuzz/harness.py); its input is written to the
artifacts directory as ``crash-<sha1>``. Replay one with ``python -m fuzz.fuzz_<target> <file>``. Needs atheris
(``pip install atheris``) and the repository root as the working directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["TARGETS", "FuzzRun", "run_target"]

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"tokens": "fuzz.fuzz_tokens", "bodies": "fuzz.fuzz_bodies", "http1": "fuzz.fuzz_http1"}
PER_INPUT_TIMEOUT_S = 10  # one input running this long is a hang, reported as a crash
STARTUP_ALLOWANCE_S = 120  # on top of --seconds before the process is killed: start-up and shutdown only


class FuzzRun:
    def __init__(self, target: str, returncode: int, output: str) -> None:
        self.target = target
        self.returncode = returncode
        self.output = output

    @property
    def crashed(self) -> bool:
        return self.returncode != 0

    @property
    def executions(self) -> int:
        """Inputs tried, from libFuzzer's closing "Done N runs" line (0 if it never got there)."""
        for line in reversed(self.output.splitlines()):
            if line.startswith("Done ") and " runs " in line:
                return int(line.split()[1])
        return 0


def run_target(target: str, *, seconds: int, artifacts: Path, corpus: Path | None = None) -> FuzzRun:
    """Fuzz ``target`` (a key of TARGETS) for ``seconds``; crashes land in ``artifacts``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        corpus_dir = corpus or Path(scratch)
        corpus_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", TARGETS[target],
            f"-max_total_time={seconds}", f"-timeout={PER_INPUT_TIMEOUT_S}", "-rss_limit_mb=2048",
            f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus_dir),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                cwd=REPO,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=seconds + STARTUP_ALLOWANCE_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
            output = exc.stderr if isinstance(exc.stderr, str) else ""
            return FuzzRun(target, -1, output + f"\nkilled: still running {seconds + STARTUP_ALLOWANCE_S} s later")
    return FuzzRun(target, done.returncode, done.stdout + done.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=30, help="per target (default 30)")
    parser.add_argument("--artifacts", type=Path, default=REPO / "fuzz" / "artifacts")
    parser.add_argument("--corpus", type=Path, help="keep each target's corpus under this directory")
    options = parser.parse_args(argv)
    unknown = set(options.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    failed = False
    for target in options.targets or list(TARGETS):
        corpus = options.corpus / target if options.corpus else None
        result = run_target(target, seconds=options.seconds, artifacts=options.artifacts, corpus=corpus)
        verdict = "CRASH" if result.crashed else "ok"
        print(f"{target}: {verdict}, {result.executions} inputs in {options.seconds} s")
        if result.crashed:
            failed = True
            print(result.output[-6000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
