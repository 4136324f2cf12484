"""When a replica of `run` restarts after agent-sandbox's served versions changed."""

from __future__ import annotations

from webhook.runtime.programs import RESTART_DRAIN_SECONDS, restart_schedule


def test_a_follower_goes_at_once_and_the_lease_holder_after_the_followers() -> None:
    assert restart_schedule(leading=False, interval_seconds=30.0) == (0.0, RESTART_DRAIN_SECONDS)
    hold, drain = restart_schedule(leading=True, interval_seconds=30.0)
    assert drain == RESTART_DRAIN_SECONDS
    # Followers notice within about two intervals and are back after their drain; the
    # holder fails /readyz only after that.
    assert hold == 60.0


def test_the_drain_outlasts_deploys_readiness_probe() -> None:
    from pathlib import Path

    import yaml

    deployment = yaml.safe_load(
        (Path(__file__).parents[2] / "deploy/base/deployment.yaml").read_text(encoding="utf-8")
    )
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= RESTART_DRAIN_SECONDS
