"""The atheris fuzz targets (fuzz/), each run for a few seconds per CI run: any crash fails the suite.

A crash is any exception other than a 4xx GatewayError from the token parser or a body validator, or anything but
ProtocolError (and consistent results) from the parser of upstream answers. The failure
shows libFuzzer's report (the input in Base64) and the crash file's path under pytest's tmp_path;
``python -m fuzz.fuzz_<target> <file>`` replays it. Longer runs: ``python -m fuzz.run --seconds 600``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.run import TARGETS, run_target

SECONDS_PER_TARGET = 5


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzzing_finds_no_input_that_crashes_the_parser(target: str, tmp_path: Path) -> None:
    result = run_target(target, seconds=SECONDS_PER_TARGET, artifacts=tmp_path)
    assert not result.crashed, f"fuzz target {target} crashed (input kept in {tmp_path}):\n{result.output[-6000:]}"
    assert result.executions > 0, result.output[-2000:]
