"""The manifests the product installs with: the CRD schemas (``crds/``) and the webhook
configurations (``webhooks/``), shipped as package data; ``deploy/`` builds on them, and
the dev kit and the tests find them here."""

from __future__ import annotations

from pathlib import Path

MANIFESTS_DIR = Path(__file__).resolve().parent
CRDS_DIR = MANIFESTS_DIR / "crds"
WEBHOOKS_DIR = MANIFESTS_DIR / "webhooks"
