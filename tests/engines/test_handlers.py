"""Bundle handlers that MONAI does not provide."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("false", False), ("True", True), ("0", False)]
)
def test_epoch_checkpoint_resume_flag_parses_command_line_strings(value, expected) -> None:
    from spine_app.engines.handlers import EpochCheckpoint

    assert EpochCheckpoint("/nonexistent", {}, resume=value).resume is expected
