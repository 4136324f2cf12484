"""Label selector matching, as Kubernetes evaluates a ``metav1.LabelSelector``.

Used to find the NetworkPolicies that select a sandbox's pods: NetworkPolicies
add up, so any other one that selects a sandbox pod can only loosen it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selector_matches(selector: object, labels: Mapping[str, str]) -> bool:
    """True when ``selector`` selects an object with ``labels``; empty selects all.

    A selector of the wrong shape selects nothing (kube-apiserver refuses it anyway).
    """
    if selector is None:
        return True
    if not isinstance(selector, Mapping):
        return False
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        return False
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        return False
    return all(_expression_matches(e, labels) for e in expressions)


def _expression_matches(expression: Any, labels: Mapping[str, str]) -> bool:
    if not isinstance(expression, Mapping):
        return False
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    if not isinstance(key, str) or not isinstance(values, list):
        return False
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False
