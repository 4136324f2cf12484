"""The rendered install, once per session: each way of installing is checked alike."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import Doc, render_base, render_cert_manager, render_crds


@pytest.fixture(scope="session")
def base() -> list[Doc]:
    return render_base()


@pytest.fixture(scope="session")
def cert_manager() -> list[Doc]:
    return render_cert_manager()


@pytest.fixture(scope="session", params=["base", "cert-manager"])
def install(request: pytest.FixtureRequest) -> list[Doc]:
    """Each way of installing: every check on it holds for both."""
    docs: list[Doc] = request.getfixturevalue(request.param.replace("-", "_"))
    return docs


@pytest.fixture(scope="session")
def crds() -> dict[str, Doc]:
    return render_crds()
