"""The rendered install, once per session: each way of installing is checked alike."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import (
    Doc,
    render_base,
    render_cert_manager,
    render_crds,
    render_helm,
    render_helm_cert_manager,
)


@pytest.fixture(scope="session")
def base() -> list[Doc]:
    return render_base()


@pytest.fixture(scope="session")
def cert_manager() -> list[Doc]:
    return render_cert_manager()


@pytest.fixture(scope="session")
def helm() -> list[Doc]:
    return render_helm()


@pytest.fixture(scope="session")
def helm_cert_manager() -> list[Doc]:
    return render_helm_cert_manager()


@pytest.fixture(scope="session", params=["base", "cert-manager", "helm", "helm-cert-manager"])
def install(request: pytest.FixtureRequest) -> list[Doc]:
    """Each way of installing (kustomize and the Helm chart, each with certificates made
    by the server or by cert-manager): every check on it holds for all four."""
    docs: list[Doc] = request.getfixturevalue(request.param.replace("-", "_"))
    return docs


@pytest.fixture(scope="session")
def crds() -> dict[str, Doc]:
    return render_crds()
