"""The one name per concept (``stego_probe.params``): old names keep working where users wrote
them (configs, saved files, the CLI), with a warning where they can change them."""

import json
import warnings

import numpy as np
import pytest

from stego_probe.params import RENAMED, renamed_kwargs
from stego_probe.probes import KMeansProbe


def test_renamed_kwargs_maps_warns_and_refuses_both():
    with pytest.warns(FutureWarning, match="'n_train' is now called 'n_tokens'"):
        out = renamed_kwargs({"n_train": 7, "niter": 3}, "probe_kwargs['kmeans']")
    assert out == {"n_tokens": 7, "niter": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_kwargs({"n_tokens": 7}, "x") == {"n_tokens": 7}
        assert renamed_kwargs({"sample_size": 2}, "x", warn=False) == {"n_tokens": 2}
    with pytest.raises(ValueError, match="cfg: both 'n_samples' and its new name 'n_tokens'"):
        renamed_kwargs({"n_samples": 1, "n_tokens": 2}, "cfg", warn=False)
    assert set(RENAMED.values()) == {"n_tokens", "n_tokens_used_"}


def test_kmeans_file_written_with_the_old_parameter_name_loads(tmp_path):
    """A probe saved before the rename (params ``n_train``, state ``n_train_used_``) loads."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    probe = KMeansProbe(3, n_tokens=200, niter=5, nredo=1, random_state=0, gpu=False).fit(x)
    params = {**probe.get_params(), "gpu": False}
    params["n_train"] = params.pop("n_tokens")
    state = {
        "best_redo_": probe.best_redo_,
        "n_iter_": probe.n_iter_,
        "n_train_used_": probe.n_tokens_used_,
        "n_tokens_seen_": probe.n_tokens_seen_,
        "n_features_in_": probe.n_features_in_,
        "max_points_per_centroid_": probe.max_points_per_centroid_,
        "inertia_": probe.inertia_,
    }
    path = tmp_path / "old.npz"
    with open(path, "wb") as f:
        np.savez(
            f,
            cluster_centers_=probe.cluster_centers_,
            meta=np.array(json.dumps({"params": params, "state": state})),
            objective_redo_0=probe.objective_per_redo_[0],
        )
    old = KMeansProbe.load(path, gpu=False)
    assert old.n_tokens == 200 and old.n_tokens_used_ == 200
    np.testing.assert_array_equal(old.predict(x), probe.predict(x))


def test_kmeans_parameters_after_n_clusters_are_keyword_only():
    with pytest.raises(TypeError):
        KMeansProbe(3, 1000)


def test_sweep_config_with_old_names_loads_renamed(tmp_path):
    from stego_probe.sweep import load_config

    with pytest.warns(FutureWarning, match="n_train"):
        config = load_config("synthetic", {"probe_kwargs": {"kmeans": {"n_train": 123}}})
    assert config.probe_kwargs["kmeans"]["n_tokens"] == 123
    assert "n_train" not in config.probe_kwargs["kmeans"]
    preset = tmp_path / "old.yaml"
    text = "dataset: synthetic\nbackbone: descriptor\nprobe_kwargs:\n  kmeans: {n_train: 9}\n"
    preset.write_text(text)
    with pytest.raises(ValueError, match=r"old.yaml: missing the required keys \['name'\]"):
        load_config(preset)
    preset.write_text("name: old\n" + text)
    with pytest.warns(FutureWarning, match="old.yaml"):
        assert load_config(preset).probe_kwargs["kmeans"] == {"n_tokens": 9}


def test_a_recorded_config_without_a_linear_solver_means_adam(tmp_path):
    """A sweep folder written before solvers existed holds Adam linear rows: resuming it with
    today's default (L-BFGS) is refused instead of mixing the two; with solver adam it resumes."""
    import json

    from stego_probe.sweep import load_config
    from stego_probe.sweep.config import recorded_config
    from stego_probe.sweep.run import _check_resume

    config = load_config("synthetic")
    assert config.probe_kwargs["linear"]["solver"] == "lbfgs"  # recorded in config.json
    old = config.to_dict()
    old["probe_kwargs"] = {**old["probe_kwargs"], "linear": {"steps": 200, "batch_size": 16}}
    old["probe_kwargs"]["kmeans"] = {"n_train": 100000, "niter": 500, "nredo": 3, "tol": 0}
    assert recorded_config(old, "x")["probe_kwargs"]["linear"]["solver"] == "adam"
    assert recorded_config(old, "x")["probe_kwargs"]["kmeans"]["n_tokens"] == 100000
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "results.csv").write_text("dataset,metric,value\nsynthetic,miou,1.0\n")
    with pytest.raises(ValueError, match=r"'solver': 'adam'.*'solver': 'lbfgs'"):
        _check_resume(config, tmp_path)
    adam = load_config("synthetic", {"probe_kwargs": {"linear": {"solver": "adam", "steps": 200,
                                                                  "batch_size": 16}}})  # fmt: skip
    _check_resume(adam, tmp_path)  # the same rows: resumes


def test_a_recorded_lbfgs_config_without_max_images_read_every_image(tmp_path):
    """An L-BFGS sweep written before the image cap trained on every train image: resuming it
    under today's cap is refused (the rows could differ); with max_images None it resumes."""
    import json

    from stego_probe.probes.defaults import LINEAR_MAX_IMAGES
    from stego_probe.sweep import load_config
    from stego_probe.sweep.config import recorded_config
    from stego_probe.sweep.run import _check_resume

    config = load_config("synthetic")
    assert config.probe_kwargs["linear"]["max_images"] == LINEAR_MAX_IMAGES
    old = config.to_dict()
    old["probe_kwargs"] = {**old["probe_kwargs"], "linear": {"solver": "lbfgs"}}
    assert recorded_config(old, "x")["probe_kwargs"]["linear"]["max_images"] is None
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "results.csv").write_text("dataset,metric,value\nsynthetic,miou,1.0\n")
    with pytest.raises(ValueError, match=r"'max_images': None"):
        _check_resume(config, tmp_path)
    every = load_config("synthetic", {"probe_kwargs": {"linear": {"max_images": None}}})
    assert every.probe_kwargs["linear"]["max_images"] is None
    _check_resume(every, tmp_path)
