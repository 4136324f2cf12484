"""The pure parts of in-cluster trust: the CA Secret and the caBundle patch."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import jsonpatch
import pytest

from webhook.kube import cabundle

AT = datetime(2026, 11, 29, tzinfo=UTC)


def configuration(*bundles: str | None) -> dict[str, object]:
    webhooks = []
    for index, bundle in enumerate(bundles):
        client_config: dict[str, object] = {"service": {"name": "svc", "namespace": "ns"}}
        if bundle is not None:
            client_config["caBundle"] = bundle
        webhooks.append({"name": f"w{index}.example.com", "clientConfig": client_config})
    return {"metadata": {"name": "agentcube-netpol"}, "webhooks": webhooks}


def test_secret_round_trips_the_ca() -> None:
    ca = cabundle.new_ca(at=AT)
    secret = cabundle.ca_secret(namespace="ns", name="tls", ca=ca)
    read = cabundle.ca_from_secret(secret["data"])
    assert read is not None
    assert read.cert_pem == ca.cert_pem and read.key_pem == ca.key_pem


@pytest.mark.parametrize(
    "data",
    [None, {}, {"ca.crt": "bm90IHBlbQ==", "ca.key": "bm90IHBlbQ=="}],
    ids=["no data", "empty", "not PEM"],
)
def test_unusable_secret_holds_no_ca(data: dict[str, str] | None) -> None:
    assert cabundle.ca_from_secret(data) is None


def test_secret_whose_key_does_not_match_its_cert_holds_no_ca() -> None:
    one, other = cabundle.new_ca(at=AT), cabundle.new_ca(at=AT)
    data = cabundle.ca_secret(namespace="ns", name="tls", ca=one)["data"]
    data["ca.key"] = base64.b64encode(other.key_pem).decode()
    assert cabundle.ca_from_secret(data) is None


def test_patch_sets_the_bundle_on_every_webhook_that_lacks_it() -> None:
    ca_pem = cabundle.new_ca(at=AT).cert_pem
    bundle = base64.b64encode(ca_pem).decode()
    config = configuration(None, "c3RhbGU=", bundle)
    patch = cabundle.ca_bundle_patch(config, ca_pem)
    patched = jsonpatch.apply_patch(config, patch)
    assert [w["clientConfig"]["caBundle"] for w in patched["webhooks"]] == [bundle] * 3
    assert patched["webhooks"][0]["clientConfig"]["service"] == {"name": "svc", "namespace": "ns"}
    assert cabundle.ca_bundle_patch(patched, ca_pem) == []


def test_patch_refuses_to_apply_after_a_concurrent_reorder() -> None:
    ca_pem = cabundle.new_ca(at=AT).cert_pem
    config = configuration(None, None)
    patch = cabundle.ca_bundle_patch(config, ca_pem)
    config["webhooks"].reverse()  # type: ignore[attr-defined]
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(config, patch)


@pytest.mark.parametrize("text", ["ns", "/name", "ns/", "a/b/c"])
def test_secret_reference_is_namespace_slash_name(text: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        cabundle.parse_secret_ref(text)
    assert cabundle.parse_secret_ref("agentcube-netpol-system/tls") == (
        "agentcube-netpol-system",
        "tls",
    )


def test_ca_is_long_lived_and_signs_serving_certs() -> None:
    ca = cabundle.new_ca(at=AT)
    # Ten years, give or take the hour it is backdated for clock skew.
    assert ca.cert.not_valid_after_utc - AT >= timedelta(days=3650) - timedelta(hours=1)


def test_the_bundle_keeps_the_replaced_ca_only_while_it_is_valid() -> None:
    old = cabundle.new_ca(at=AT - timedelta(days=3300))  # ten-year CA, 350 days left
    new = cabundle.new_ca(at=AT)
    data = cabundle.ca_secret(namespace="ns", name="tls", ca=new, previous=old)["data"]
    assert cabundle.ca_from_secret(data) is not None  # the current CA, as before
    assert cabundle.trust_bundle(data, new, at=AT) == new.cert_pem + old.cert_pem
    after_old_expired = old.cert.not_valid_after_utc + timedelta(seconds=1)
    assert cabundle.trust_bundle(data, new, at=after_old_expired) == new.cert_pem
    assert cabundle.trust_bundle(None, new, at=AT) == new.cert_pem
    garbled = {**data, cabundle.PREVIOUS_CA_CERT_KEY: "bm90IHBlbQ=="}
    assert cabundle.trust_bundle(garbled, new, at=AT) == new.cert_pem
