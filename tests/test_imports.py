"""Smoke test: the public faces import and name what they export."""

import analysis
import experiments
import fflab


def test_public_names_resolve():
    for name in fflab.__all__:
        assert getattr(fflab, name) is not None
    assert "hvp" in analysis.__all__ and "eigsh" in analysis.__all__
    assert experiments.describe()
