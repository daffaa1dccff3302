"""Fixtures of the research tests (run them with ``python -m pytest research/tests`` from the repository root)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # as tests/conftest.py
