"""The ``synthetic`` scenes' nuisance factors: reference images, determinism, labels, options."""

import hashlib

import numpy as np
import pytest

from stego_probe.data import dataset_from_provenance, get_dataset
from stego_probe.data.synthetic import NUISANCE_MODEL, SyntheticDataset

#: sha256 of the images and labels of the generator before ``nuisance`` existed (6 images per
#: case, saved from the previous code): ``nuisance=0`` must reproduce them byte for byte.
REFERENCE = {
    ("train", 0, (96, 128), 6): "de003b13706af9481eb889f1e912117c7eef351463ef0c4b4da897fc9a34de23",
    ("val", 0, (96, 128), 6): "f4339e90f95c7e33ff45f214a9eede0135da96c93b205ee61eb77b2ebdf70a5f",
    ("train", 3, (96, 128), 8): "dae83d1eb3dd8edcf622a4f889ee9a0c061492ce199e87cd92543f33eeec17d3",
    ("val", 7, (20, 30), 2): "4601c9501f7e1cbafb66fcc15b4d0cadf4868324ed71b1f7bfe4c12cb2f61d45",
    ("test", 1, (64, 64), 5): "a1d4a99615cd7ac21cf848547e322790eba6f0cfd1b6eff005874049a35b9a83",
}


def _digest(ds) -> str:
    h = hashlib.sha256()
    for i in range(len(ds)):
        s = ds[i]
        h.update(np.asarray(s.image).tobytes())
        h.update(s.label.astype(np.int64).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(REFERENCE), ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_nuisance_zero_reproduces_the_previous_generator(case):
    split, seed, size, k = case
    ds = SyntheticDataset(split, n_images=6, size=size, n_classes=k, seed=seed, nuisance=0.0)
    assert _digest(ds) == REFERENCE[case]
    # the default is the same data, and so is an int 0
    assert (
        _digest(SyntheticDataset(split, n_images=6, size=size, n_classes=k, seed=seed))
        == (REFERENCE[case])
    )
    assert _digest(get_dataset("synthetic", split=split, n_images=6, size=size, n_classes=k,
                               seed=seed, nuisance=0)) == REFERENCE[case]  # fmt: skip


@pytest.mark.parametrize("nuisance", [0.3, 1.0])
def test_nuisance_is_deterministic_per_seed_and_split(nuisance):
    a = SyntheticDataset("train", n_images=3, seed=2, nuisance=nuisance)
    b = SyntheticDataset("train", n_images=3, seed=2, nuisance=nuisance)
    assert _digest(a) == _digest(b)
    assert np.array_equal(np.asarray(a[1].image), np.asarray(a[1].image))  # repeatable
    c = SyntheticDataset("train", n_images=3, seed=3, nuisance=nuisance)
    v = SyntheticDataset("val", n_images=3, seed=2, nuisance=nuisance)
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(v[0].image))


def test_nuisance_changes_images_not_labels_nor_the_class_vocabulary():
    levels = [0.0, 0.25, 0.5, 1.0]
    sets = {n: SyntheticDataset("train", n_images=8, n_classes=8, nuisance=n) for n in levels}
    base = sets[0.0]
    diffs = []
    for n in levels[1:]:
        ds = sets[n]
        assert ds.n_classes == base.n_classes and ds.class_names == base.class_names
        assert ds.ids == base.ids
        d = []
        for i in range(len(ds)):
            s, s0 = ds[i], base[i]
            assert s.image.size == s0.image.size and s.image.mode == "RGB"
            assert np.array_equal(s.label, s0.label)  # the layout does not depend on nuisance
            d.append(np.abs(np.asarray(s.image, float) - np.asarray(s0.image, float)).mean())
        diffs.append(np.mean(d))
    assert diffs[0] > 2.0  # a visible change (mean absolute difference in 0..255)
    assert diffs[0] < diffs[1] < diffs[2]  # and it grows with the strength


def test_nuisance_makes_colour_a_weak_cue_and_keeps_texture():
    """At full nuisance a linear classifier on local colour loses much of its accuracy, while
    colour + texture statistics still beat colour alone clearly."""
    from scipy.ndimage import uniform_filter
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    def feats(ds):
        cols, both, ys = [], [], []
        for i in range(len(ds)):
            s = ds[i]
            x = np.asarray(s.image, np.float32) / 255
            col = np.stack([uniform_filter(x[..., c], 5) for c in range(3)], -1)
            lum = x.mean(-1)
            m = uniform_filter(lum, 7)
            sd = np.sqrt(np.maximum(uniform_filter(lum * lum, 7) - m * m, 0)) / (m + 0.05)
            gx = uniform_filter(np.abs(np.diff(lum, axis=1, append=lum[:, -1:])), 7) / (m + 0.05)
            gy = uniform_filter(np.abs(np.diff(lum, axis=0, append=lum[-1:])), 7) / (m + 0.05)
            cols.append(col.reshape(-1, 3)[::5])
            both.append(np.concatenate([col, np.stack([sd, gx, gy], -1)], -1).reshape(-1, 6)[::5])
            ys.append(s.label.ravel()[::5])
        return np.concatenate(cols), np.concatenate(both), np.concatenate(ys)

    acc = {}
    for n in (0.0, 1.0):
        ct, bt, yt = feats(SyntheticDataset("train", n_images=16, nuisance=n))
        cv, bv, yv = feats(SyntheticDataset("val", n_images=6, nuisance=n))
        acc[n] = (
            (LinearDiscriminantAnalysis().fit(ct, yt).predict(cv) == yv).mean(),
            (LinearDiscriminantAnalysis().fit(bt, yt).predict(bv) == yv).mean(),
        )
    assert acc[1.0][0] < acc[0.0][0] - 0.1
    assert acc[1.0][1] > acc[1.0][0] + 0.1


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "0.5", None, True, [0.5]])
def test_nuisance_argument_is_validated(bad):
    with pytest.raises(ValueError, match=r"nuisance: expected a number in \[0, 1\]"):
        SyntheticDataset("val", n_images=1, nuisance=bad)
    with pytest.raises(ValueError, match="nuisance"):
        get_dataset("synthetic", split="val", n_images=1, nuisance=bad)


def test_nuisance_is_recorded_in_args_info_and_rebuilds():
    ds0 = get_dataset("synthetic", split="val", n_images=2)
    assert ds0.args["nuisance"] == 0.0 and ds0.info["nuisance"] == 0.0
    assert ds0.info["generator"] == "warped-voronoi-v1" and "nuisance_model" not in ds0.info
    ds = get_dataset("synthetic", split="val", n_images=2, seed=4, nuisance=0.5)
    assert ds.args == {"n_images": 2, "size": [96, 128], "n_classes": 6, "seed": 4,
                       "nuisance": 0.5}  # fmt: skip
    assert isinstance(ds.args["nuisance"], float)
    prov = ds.provenance
    assert prov["args"]["nuisance"] == 0.5 and prov["nuisance"] == 0.5
    assert prov["generator"] == "warped-voronoi-v1" and prov["nuisance_model"] == NUISANCE_MODEL
    # the recorded options rebuild the same images
    again = get_dataset("synthetic", split="val", **ds.args)
    assert _digest(again) == _digest(ds)
    store_prov = {"dataset": "synthetic", "split": "val", "dataset_info": prov,
                  "dataset_args": prov["args"]}  # fmt: skip
    rebuilt = dataset_from_provenance(store_prov, check=True)
    assert rebuilt.nuisance == 0.5 and _digest(rebuilt) == _digest(ds)
    assert get_dataset("synthetic", split="val", n_images=1, nuisance=1).args["nuisance"] == 1.0
