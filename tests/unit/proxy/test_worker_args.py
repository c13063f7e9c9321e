"""The worker's command line (what the supervisor passes): ``--fd N [--log-level LEVEL]``."""

from __future__ import annotations

import pytest

from meshgate.proxy.worker import _parse_args


@pytest.mark.parametrize("argv,want", [
    (["--fd", "7"], (7, "WARNING")),
    (["--fd=7", "--log-level=DEBUG"], (7, "DEBUG")),
    (["--log-level", "INFO", "--fd", "12"], (12, "INFO")),
])
def test_accepted(argv: list[str], want: tuple[int, str]) -> None:
    assert _parse_args(argv) == want


@pytest.mark.parametrize("argv,error", [
    ([], "--fd is required"),
    (["--fd"], "--fd needs a value"),
    (["--fd", "x"], "expected a file descriptor number"),
    (["--fd", "3", "--verbose"], "unknown argument '--verbose'"),
])
def test_refused_with_the_reason(argv: list[str], error: str) -> None:
    with pytest.raises(SystemExit) as ei:
        _parse_args(argv)
    assert error in str(ei.value)
