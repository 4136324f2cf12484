"""Fixtures shared by the unit tiers: an AdmissionRequest that tests tweak field by field.

Hypothesis: under CI (``CI=true``, as .ci/run and CI services set it) every run draws the
same examples (``derandomize``, no example database), so a red CI run is red again on a
rerun and on a laptop with ``CI=true``; elsewhere runs are random and a failure prints
the ``@reproduce_failure`` blob that replays it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from tests.builders import admission_request
from webhook.api.settings import Settings

hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def adm_request() -> Callable[..., dict[str, Any]]:
    return admission_request
