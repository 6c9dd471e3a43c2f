import json

import numpy as np

from experiments import optimizers


def test_quick_config_claims(tmp_path):
    payload = optimizers.main(optimizers.QUICK, tmp_path)
    saved = json.loads((tmp_path / "optimizers.json").read_text())
    for name in ("optimizers", "optimizers_annealing"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    cfg = optimizers.QUICK
    r = saved["results"]
    assert set(r["runs"]) == {f"{o}/{s}" for o in optimizers.OPTIMIZERS for s in ("constant", cfg.schedule)}
    final = {}
    for key, run in r["runs"].items():
        assert not run["diverged"], key
        h = run["history"]
        assert h["epoch"] == list(range(1, cfg.epochs + 1)), key
        lr = optimizers.learning_rates(cfg)[run["optimizer"]]
        if run["schedule"] == "constant":
            np.testing.assert_allclose(h["learning_rate"], lr, rtol=1e-6)
        else:  # annealed from the peak down to decay_to x the peak, never going up
            assert h["learning_rate"][0] > 0.95 * lr
            np.testing.assert_allclose(h["learning_rate"][-1], cfg.decay_to * lr, rtol=1e-2)
            assert np.all(np.diff(h["learning_rate"]) <= 0)
        assert h["train_loss"][-1] < h["train_loss"][0], key  # every optimiser makes progress
        final[key] = (h["train_loss"][-1], h["test_error"][-1])

    # Claims recomputed from the saved learning curves.
    gain = {o: final[f"{o}/constant"][0] / final[f"{o}/{cfg.schedule}"][0] for o in optimizers.OPTIMIZERS}
    names = optimizers.OPTIMIZERS
    saved_pts = {o: final[f"{o}/constant"][1] - final[f"{o}/{cfg.schedule}"][1] for o in names}
    c_sgd, c_adam, c_adaptive = payload["claims"]
    for c, o in ((c_sgd, "sgd"), (c_adam, "adam")):  # no step-size grid in QUICK: the chosen steps
        np.testing.assert_allclose(c["measured"]["train_loss_ratio"], gain[o], rtol=1e-12)
        np.testing.assert_allclose(c["measured"]["test_error_saved"], saved_pts[o], atol=1e-9)
        assert c["measured"]["steps"] == [optimizers.learning_rates(cfg)[o]] * 2
        assert c["holds"] == (gain[o] > 1 and saved_pts[o] >= 0)
    for o in ("sgd", *optimizers.ADAPTIVE):
        np.testing.assert_allclose(c_adaptive["measured"][o], gain[o], rtol=1e-12)
    assert c_adaptive["holds"] == all(gain[o] < gain["sgd"] for o in optimizers.ADAPTIVE)
    # Failed claims are explained in the notes.
    if not all(c["holds"] for c in payload["claims"]):
        assert "Claims that failed" in saved["notes"]

