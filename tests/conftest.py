"""Fixtures shared by the unit tiers: an AdmissionRequest that tests tweak field by field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.builders import admission_request
from webhook.api.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def adm_request() -> Callable[..., dict[str, Any]]:
    return admission_request
