"""Datasets: layouts, label maps, pairing, errors, five-crop folders, synthetic scenes, CLI."""

import logging

import numpy as np
import pytest
from data_fixtures import (
    write_cityscapes,
    write_cocostuff,
    write_cropped,
    write_folder,
    write_potsdam,
)
from PIL import Image

from stego_probe.cli.main import main as cli_main
from stego_probe.data import (
    Sample,
    SegDataset,
    dataset_description,
    get_dataset,
    list_datasets,
    register_dataset,
)
from stego_probe.data.cocostuff import FINE_TO_COARSE, coco_fine_to_coarse
from stego_probe.data.crops import prepare_crops
from stego_probe.data.transforms import five_crop_sample

# ----------------------------------------------------------------------------- registry


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"cocostuff27", "cityscapes27", "potsdam3", "folder", "synthetic"} <= set(
        list_datasets()
    )
    with pytest.raises(KeyError, match="known datasets: .*cocostuff27.*synthetic"):
        get_dataset("cocostuff", root=".")
    assert "27" in dataset_description("cityscapes27")


def test_register_dataset_makes_a_factory_available():
    calls = {}

    def factory(root=None, split="train", **kw):
        calls.update(root=root, split=split, **kw)
        return SegDataset("mine", split, 2, ["a", "b"], ["x"])

    register_dataset("test_mine", factory, "a test dataset")
    ds = get_dataset("test_mine", root="/r", split="val", extra=3)
    assert ds.name == "mine" and calls == {"root": "/r", "split": "val", "extra": 3}


def test_root_is_required_for_file_datasets():
    for name in ("cocostuff27", "cityscapes27", "potsdam3", "folder"):
        with pytest.raises(ValueError, match="root"):
            get_dataset(name, root=None)


# ----------------------------------------------------------------------------- cocostuff


def test_fine_to_coarse_matches_the_protocol_table():
    table = {
        0: range(71, 77), 1: range(77, 83), 2: range(51, 61), 3: range(61, 71),
        4: range(83, 91), 5: range(43, 51), 6: range(25, 33), 7: range(15, 25),
        8: range(9, 15), 9: [0], 10: range(33, 43), 11: range(1, 9), 12: [101, 102],
        13: [100, 113, 114, 115, 116, 117], 14: [120, 121, 152, 169],
        15: [97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164], 16: [99, 131, 138, 142],
        17: [91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167], 18: range(170, 177),
        19: [179, 180], 20: [94, 95, 127, 150, 157, 165],
        21: [110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158],
        22: [93, 96, 118, 123, 128, 133, 141, 162, 168], 23: [105, 156],
        24: [126, 134, 149, 159, 161, 181], 25: [98, 112, 137, 145, 163],
        26: [119, 147, 154, 177, 178],
    }  # fmt: skip
    want = np.full(182, -1)
    for coarse, fines in table.items():
        for f in fines:
            assert want[f] == -1, f"fine id {f} listed twice"
            want[f] = coarse
    assert FINE_TO_COARSE.shape == (182,)
    assert np.array_equal(FINE_TO_COARSE, want)
    assert coco_fine_to_coarse(np.array([105, 255, 0])).tolist() == [23, -1, 9]


def test_cocostuff_reads_lists_images_and_coarse_labels(tmp_path):
    ref = write_cocostuff(tmp_path)
    for split in ("train", "val"):
        ds = get_dataset("cocostuff27", tmp_path, split)
        assert ds.ids == ref[split]["ids"] and ds.n_classes == 27 and len(ds.class_names) == 27
        for i in range(len(ds)):
            s = ds[i]
            assert isinstance(s, Sample) and s.id == ref[split]["ids"][i]
            assert s.image.mode == "RGB"
            assert np.array_equal(np.asarray(s.image), ref[split]["images"][i])
            assert s.label.dtype == np.int64
            assert np.array_equal(s.label, ref[split]["coarse"][i])
    s = get_dataset("cocostuff27", tmp_path, "train")[0]
    assert s.label[0, :4].tolist() == [9, 23, 24, -1]  # fine 0, 105 (sky), 181, 255
    native = get_dataset("cocostuff27", tmp_path, "val2017")
    assert native.split == "val" and native.ids == ref["val"]["ids"]
    assert native.provenance["image_list"].endswith("Coco164kFull_Stuff_Coarse_7.txt")


def test_cocostuff_missing_files_name_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cocostuff.*cocostuff\.zip"):
        get_dataset("cocostuff27", tmp_path, "train")
    write_cocostuff(tmp_path)
    (tmp_path / "cocostuff/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Coco164kFull_Stuff_Coarse_7.txt"):
        get_dataset("cocostuff27", tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        get_dataset("cocostuff27", tmp_path, "test")
    ds = get_dataset("cocostuff27", tmp_path, "train")
    (tmp_path / "cocostuff/images/train2017" / f"{ds.ids[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ds.ids[1]}.jpg"):
        ds[1]


def test_cocostuff_bad_files_raise_value_errors_naming_them(tmp_path):
    ref = write_cocostuff(tmp_path)
    ids = ref["train"]["ids"]
    ann = tmp_path / "cocostuff/annotations/train2017"
    lab = np.zeros((12, 16), np.uint8)
    lab[3, 3] = 200  # neither a fine id nor 255
    Image.fromarray(lab).save(ann / f"{ids[0]}.png")
    Image.fromarray(np.zeros((12, 15), np.uint8)).save(ann / f"{ids[1]}.png")
    (tmp_path / "cocostuff/images/train2017" / f"{ids[2]}.jpg").write_bytes(b"not a jpeg")
    ds = get_dataset("cocostuff27", tmp_path, "train")
    with pytest.raises(ValueError, match=rf"{ids[0]}\.png.*\[200\]"):
        ds[0]
    with pytest.raises(ValueError, match=rf"{ids[1]}\.png.*\(12, 15\).*{ids[1]}\.jpg.*12x16"):
        ds[1]
    with pytest.raises(ValueError, match=rf"{ids[2]}\.jpg.*cannot read image"):
        ds[2]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(ann / f"{ids[0]}.png")
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]


# ----------------------------------------------------------------------------- cityscapes


def test_cityscapes_pairs_by_city_and_stem_and_maps_label_ids(tmp_path):
    ref = write_cityscapes(tmp_path)
    for split in ("train", "val"):
        ds = get_dataset("cityscapes27", tmp_path, split)
        assert ds.ids == ref[split]["ids"]
        assert ds.ids[0].startswith("aachen_")  # sorted by city, not creation order
        for i in range(len(ds)):
            s = ds[i]
            assert np.array_equal(np.asarray(s.image), ref[split]["images"][i])
            assert np.array_equal(s.label, ref[split]["labels"][i])
    s = get_dataset("cityscapes27", tmp_path, "train")[0]
    assert s.label[0, :4].tolist() == [0, 26, -1, -1]  # labelIds 7, 33, 6, 0
    assert get_dataset("cityscapes27", tmp_path, "train").class_names[16] == "sky"


def test_cityscapes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cityscapes.zip"):
        get_dataset("cityscapes27", tmp_path, "train")
    ref = write_cityscapes(tmp_path)
    with pytest.raises(ValueError, match="split"):
        get_dataset("cityscapes27", tmp_path, "train_extra")
    stem = ref["val"]["ids"][0]
    lab_path = (
        tmp_path / "cityscapes/gtFine/val" / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"
    )
    Image.fromarray(np.full((8, 16), 40, np.uint8)).save(lab_path)  # 40 is not a labelId
    with pytest.raises(ValueError, match=rf"{stem}_gtFine_labelIds\.png.*\[40\]"):
        get_dataset("cityscapes27", tmp_path, "val")[0]
    lab_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{stem}_gtFine_labelIds.png"):
        get_dataset("cityscapes27", tmp_path, "val")


# ----------------------------------------------------------------------------- potsdam


def test_potsdam_reads_mat_tiles_and_maps_six_to_three(tmp_path, caplog):
    ref = write_potsdam(tmp_path, missing_gt=("1_1_3",), unmapped_value=7)
    lut = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: -1, 7: -1}
    for split in ("train", "val"):
        ds = get_dataset("potsdam3", tmp_path, split)
        assert ds.ids == ref[split]["ids"] and ds.n_classes == 3
        for i in range(len(ds)):
            with caplog.at_level(logging.WARNING, logger="stego_probe.data.potsdam"):
                s = ds[i]
            assert np.array_equal(np.asarray(s.image), ref[split]["images"][i])  # IR dropped
            gt = ref[split]["gt"][i]
            if gt is None:
                assert (s.label == -1).all() and s.label.shape == (10, 12)
            else:
                assert np.array_equal(s.label, np.vectorize(lut.get)(gt))
    s = get_dataset("potsdam3", tmp_path, "train")[0]
    assert s.label[0, :4].tolist() == [0, 1, 2, -1] and s.label[1, 0] == -1
    assert "1 pixels have values outside" in caplog.text
    zero = get_dataset("potsdam3", tmp_path, "train", potsdam_unmapped="zero")[0]
    assert zero.label[1, 0] == 0 and zero.label[0, 3] == -1
    assert len(get_dataset("potsdam3", tmp_path, "all")) == 5


def test_potsdam_refuses_crops_and_reports_bad_files(tmp_path):
    write_potsdam(tmp_path)
    for kw in ({"cropped": True}, {"crop": "five"}, {"crop_ratio": 0.5}):
        with pytest.raises(ValueError, match="without cropping"):
            get_dataset("potsdam3", tmp_path, "train", **kw)
    with pytest.raises(ValueError, match="potsdam_unmapped"):
        get_dataset("potsdam3", tmp_path, "train", potsdam_unmapped="keep")
    from scipy.io import savemat

    savemat(tmp_path / "potsdam/imgs/0_0_0.mat", {"image": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"0_0_0\.mat.*'img'"):
        get_dataset("potsdam3", tmp_path, "train")[0]
    savemat(tmp_path / "potsdam/imgs/0_0_0.mat", {"img": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"gt/0_0_0\.mat.*\(10, 12\).*imgs/0_0_0\.mat"):
        get_dataset("potsdam3", tmp_path, "train")[0]
    (tmp_path / "potsdam/labelled_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labelled_test.txt"):
        get_dataset("potsdam3", tmp_path, "val")


# ----------------------------------------------------------------------------- folder


def test_folder_pairs_by_stem(tmp_path):
    # files are written in a shuffled stem order; the label of stem number j (in writing order)
    # carries j at [0, 0], so a pairing that is not by stem would show up here
    stems = ("zeta", "alpha", "mid", "beta")
    ref = write_folder(tmp_path, stems=stems, n_classes=4, image_ext=".jpg")
    ds = get_dataset("folder", tmp_path, "train", n_classes=4)
    assert ds.ids == ["alpha", "beta", "mid", "zeta"]
    for i, stem in enumerate(ds.ids):
        s = ds[i]
        assert s.id == stem
        assert np.array_equal(np.asarray(s.image), ref["images"][stem])
        assert s.label[0, 0] == stems.index(stem) and s.label[0, 1] == -1  # 255 -> ignore
        want = ref["labels"][stem].copy()
        want[want == 255] = -1
        assert np.array_equal(s.label, want)


def test_folder_mismatch_and_label_errors(tmp_path):
    write_folder(tmp_path, n_classes=3)
    (tmp_path / "labels/train/mid.png").rename(tmp_path / "labels/train/middle.png")
    with pytest.raises(
        ValueError, match=r"without a label.*mid\.png.*without an image.*middle\.png"
    ):
        get_dataset("folder", tmp_path, "train", n_classes=3)
    (tmp_path / "labels/train/middle.png").rename(tmp_path / "labels/train/mid.png")
    with pytest.raises(ValueError, match="n_classes"):
        get_dataset("folder", tmp_path, "train")
    ds = get_dataset("folder", tmp_path, "train", n_classes=2)  # labels hold 0..2
    with pytest.raises(ValueError, match=r"labels/train/.*\.png.*\[2\]"):
        [ds[i] for i in range(len(ds))]
    Image.fromarray(np.zeros((9, 13, 3), np.uint8)).save(tmp_path / "imgs/train/mid.jpg")
    with pytest.raises(ValueError, match="share the stem 'mid'"):
        get_dataset("folder", tmp_path, "train", n_classes=3)
    with pytest.raises(FileNotFoundError, match=r"imgs/val"):
        get_dataset("folder", tmp_path, "val", n_classes=3)


def test_folder_unlabelled_mode_and_custom_ignore(tmp_path):
    write_folder(tmp_path, split="val", labels=False)
    ds = get_dataset("folder", tmp_path, "val")
    assert ds.n_classes == 0 and all(ds[i].label is None for i in range(len(ds)))
    with pytest.raises(FileNotFoundError, match="labels/val"):
        get_dataset("folder", tmp_path, "val", n_classes=3, labels=True)
    write_folder(tmp_path / "b", n_classes=3, ignore_value=9)
    ds = get_dataset("folder", tmp_path / "b", "train", n_classes=3, ignore_value=9)
    assert all(ds[i].label[0, 1] == -1 for i in range(len(ds)))
    unl = get_dataset("folder", tmp_path / "b", "train", n_classes=3, labels=False)
    assert unl[0].label is None


def test_dataset_from_provenance_restores_every_option(tmp_path):
    """A folder store extracted with ignore_value=9 and class names is rebuilt with them, by
    the one function that evaluate (CRF images) and verify (repair) use."""
    from stego_probe.backbones import get_backbone
    from stego_probe.data import dataset_args_from_provenance, dataset_from_provenance
    from stego_probe.evaluate import dataset_for_store
    from stego_probe.extract import extract

    write_folder(tmp_path / "d", n_classes=3, ignore_value=9, size=(16, 16))
    names = ["sky", "road", "car"]
    ds = get_dataset("folder", tmp_path / "d", "train", n_classes=3, ignore_value=9,
                     class_names=names)  # fmt: skip
    store = extract(ds, get_backbone("descriptor"), tmp_path / "s", res=16, progress=False)
    prov = dict(store.provenance)
    for rebuilt in (
        dataset_from_provenance(prov, check=True),
        dataset_for_store(store),
    ):
        assert rebuilt.ignore_values == (9,) and rebuilt.class_names == names
        assert rebuilt.ids == ds.ids and rebuilt[0].label[0, 1] == -1  # 9 read as ignore
    # older provenance: dataset_args absent -> the dataset's own record of its options
    old = {k: v for k, v in prov.items() if k != "dataset_args"}
    assert dataset_args_from_provenance(old)["ignore_value"] == [9]
    assert dataset_from_provenance(old, check=True).ignore_values == (9,)
    # the oldest: only descriptive dataset_info; the factory's keywords are taken from it
    oldest = {**old, "dataset_info": {k: v for k, v in prov["dataset_info"].items() if k != "args"}}
    assert dataset_args_from_provenance(oldest) is None
    assert dataset_from_provenance(oldest).n_classes == 3
    # overrides replace options; the data moved: root=; check=True names what differs
    assert dataset_from_provenance(prov, ignore_value=255).ignore_values == (255,)
    (tmp_path / "d").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError):
        dataset_from_provenance(prov)
    assert dataset_from_provenance(prov, tmp_path / "moved").ids == ds.ids
    with pytest.raises(ValueError, match="differs from the recorded one in root"):
        dataset_from_provenance(prov, tmp_path / "moved", check=True)
    with pytest.raises(ValueError, match="no dataset name and split"):
        dataset_from_provenance({"split": "train"})
    with pytest.raises(ValueError, match="'nope', which is not registered"):
        dataset_from_provenance({"dataset": "nope", "split": "train"})


# ----------------------------------------------------------------------------- five-crop


def test_cropped_reference_layout_is_read_with_label_minus_one(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(10)]
    labs = [rng.integers(-1, 27, (4, 6)) for _ in range(10)]
    write_cropped(tmp_path, "cocostuff27", "train", imgs, labs, ext=".jpg")
    ds = get_dataset("cocostuff27", tmp_path, "train", cropped=True)
    assert len(ds) == 10 and ds.ids[3] == "3" and ds.n_classes == 27
    for j in (0, 7):
        assert np.array_equal(ds[j].label, labs[j])
    # Cityscapes folders are named "cityscapes_five_crop_0.5" as in the reference
    write_cropped(tmp_path, "cityscapes", "val", imgs[:5], labs[:5])
    ds = get_dataset("cityscapes27", tmp_path, "val", cropped=True)
    assert np.array_equal(np.asarray(ds[4].image), imgs[4])
    (tmp_path / "cropped/cityscapes_five_crop_0.5/label/val/2.png").unlink()
    with pytest.raises(ValueError, match=r"missing labels \[2\]"):
        get_dataset("cityscapes27", tmp_path, "val", cropped=True)
    with pytest.raises(FileNotFoundError, match="prepare-crops"):
        get_dataset("cityscapes27", tmp_path, "train", cropped=True)


def test_prepare_crops_round_trip_matches_five_crop_sample(tmp_path):
    write_cityscapes(tmp_path, size=(9, 14))
    src = get_dataset("cityscapes27", tmp_path, "val")
    out = prepare_crops(src, tmp_path, progress=False)
    assert out == tmp_path / "cropped/cityscapes_five_crop_0.5"
    ds = get_dataset("cityscapes27", tmp_path, "val", cropped=True)
    assert len(ds) == 5 * len(src)
    assert ds.provenance["crop_storage"] == "png"
    for i in range(len(src)):
        crops = five_crop_sample(src[i])
        for k, c in enumerate(crops):
            got = ds[5 * i + k]
            assert got.id == c.id == f"{src.ids[i]}_c{k}"
            assert np.array_equal(got.label, c.label)
            assert np.array_equal(np.asarray(got.image), np.asarray(c.image))  # lossless
    raw = np.asarray(Image.open(out / "label/val/0.png"))
    assert raw.dtype == np.uint8 and np.array_equal(raw.astype(np.int64) - 1, ds[0].label)


def test_prepare_crops_resumes_and_refuses_to_mix(tmp_path):
    write_cityscapes(tmp_path, size=(8, 12))
    src = get_dataset("cityscapes27", tmp_path, "train")
    base = tmp_path / "cropped/cityscapes_five_crop_0.5"
    (base / "img/train").mkdir(parents=True)
    (base / "label/train").mkdir(parents=True)
    (base / "img/train/.3.png.partial").write_bytes(b"\x89PNG half")  # killed run
    (base / "img/train/6.png").write_bytes(b"\x89PNG truncated")  # corrupt final file
    prepare_crops(src, tmp_path, progress=False)
    assert not list(base.rglob("*.partial"))
    ds = get_dataset("cityscapes27", tmp_path, "train", cropped=True)
    want = five_crop_sample(src[1])[1]
    assert np.array_equal(np.asarray(ds[6].image), np.asarray(want.image))
    # a second run leaves valid files untouched and restores a deleted one
    mtime = (base / "img/train/0.png").stat().st_mtime_ns
    (base / "label/train/12.png").unlink()
    prepare_crops(src, tmp_path, progress=False)
    assert (base / "img/train/0.png").stat().st_mtime_ns == mtime
    assert np.array_equal(
        get_dataset("cityscapes27", tmp_path, "train", cropped=True)[12].label,
        five_crop_sample(src[2])[2].label,
    )
    with pytest.raises(ValueError, match="storage"):
        prepare_crops(src, tmp_path, storage="jpeg75", progress=False)
    with pytest.raises(ValueError, match="already a five-crop dataset"):
        prepare_crops(ds, tmp_path, progress=False)
    fewer = get_dataset("cityscapes27", tmp_path, "train")
    fewer.ids = fewer.ids[:2]  # a different source must not be mixed into the same folder
    with pytest.raises(ValueError, match="refusing to mix.*n_images"):
        prepare_crops(fewer, tmp_path, progress=False)


def test_prepare_crops_of_unlabelled_folder_writes_ignore_labels(tmp_path):
    write_folder(tmp_path / "f", split="val", labels=False, size=(6, 8))
    src = get_dataset("folder", tmp_path / "f", "val")
    out = prepare_crops(src, tmp_path, progress=False)
    assert out == tmp_path / "cropped/folder_five_crop_0.5"
    labels = sorted((out / "label/val").iterdir())
    assert len(labels) == 20
    assert all(np.asarray(Image.open(p)).shape == (3, 4) for p in labels)
    assert all((np.asarray(Image.open(p)) == 0).all() for p in labels)


def test_prepare_crops_jpeg75_parity_storage(tmp_path):
    write_cocostuff(tmp_path, n_train=1, n_val=1, size=(16, 20))
    src = get_dataset("cocostuff27", tmp_path, "val")
    out = prepare_crops(src, tmp_path, storage="jpeg75", progress=False)
    assert out.name == "cocostuff27_five_crop_0.5"
    assert sorted(p.name for p in (out / "img/val").iterdir()) == [f"{j}.jpg" for j in range(5)]
    ds = get_dataset("cocostuff27", tmp_path, "val", cropped=True)
    c = five_crop_sample(src[0])[4]
    assert np.array_equal(ds[4].label, c.label)  # labels stay lossless
    diff = np.abs(np.asarray(ds[4].image, np.int64) - np.asarray(c.image, np.int64))
    assert diff.shape == (8, 10, 3) and diff.mean() < 40


def test_cli_datasets_and_prepare_crops(tmp_path, capsys):
    assert cli_main(["datasets"]) == 0
    assert "potsdam3" in capsys.readouterr().out
    write_cityscapes(tmp_path, n_per_city=1)
    argv = ["prepare-crops", "--dataset", "cityscapes27", "--data-root", str(tmp_path)]
    assert cli_main([*argv, "--split", "val", "--no-progress"]) == 0
    assert "wrote 10 crops" in capsys.readouterr().out
    assert len(get_dataset("cityscapes27", tmp_path, "val", cropped=True)) == 10
    assert cli_main(["prepare-crops", "--dataset", "nope", "--data-root", str(tmp_path)]) == 1
    assert "unknown dataset" in capsys.readouterr().err


def test_cli_prepare_crops_of_a_folder_dataset(tmp_path, capsys):
    write_folder(tmp_path, split="train", size=(12, 16))
    argv = ["prepare-crops", "--dataset", "folder", "--data-root", str(tmp_path), "--no-progress"]
    # the folder dataset needs n_classes: the error says so, and nothing is written
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_classes=K" in err
    assert not (tmp_path / "cropped").exists()
    assert cli_main(argv + ["--dataset-arg", "n_classes=4"]) == 0
    assert "wrote 20 crops of folder/train" in capsys.readouterr().out
    assert len(list((tmp_path / "cropped" / "folder_five_crop_0.5" / "img" / "train").iterdir()))
    # an option the dataset does not take is named, with the ones it does
    assert cli_main(argv + ["--dataset-arg", "n_class=4"]) == 1
    err = capsys.readouterr().err.strip()
    assert "dataset 'folder': unknown option(s) n_class" in err and "n_classes" in err
    with pytest.raises(ValueError, match=r"unknown option\(s\) colour; its options are: n_images"):
        get_dataset("synthetic", split="val", colour="red")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seed_dependent():
    a = get_dataset("synthetic", split="train", n_images=4, seed=3)
    b = get_dataset("synthetic", split="train", n_images=4, seed=3)
    c = get_dataset("synthetic", split="train", n_images=4, seed=4)
    v = get_dataset("synthetic", split="val", n_images=4, seed=3)
    for i in range(4):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert np.array_equal(a[i].label, b[i].label)
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(v[0].image))
    assert np.array_equal(np.asarray(a[2].image), np.asarray(a[2].image))
    s = a[1]
    assert s.image.size == (128, 96) and s.label.shape == (96, 128) and s.label.dtype == np.int64
    assert s.id == "train_00001"


def test_synthetic_classes_all_appear_and_options_apply():
    ds = get_dataset("synthetic", split="train", n_images=12)
    counts = np.bincount(np.concatenate([ds[i].label.ravel() for i in range(12)]), minlength=6)
    assert ds.n_classes == 6 and len(counts) == 6 and (counts > 0).all()
    assert ds.class_names[:2] == ["sky", "water"]
    small = get_dataset("synthetic", split="val", n_images=3, size=(20, 30), n_classes=8)
    assert small[0].label.shape == (20, 30) and small[0].label.max() < 8
    with pytest.raises(ValueError, match="n_classes"):
        get_dataset("synthetic", n_classes=9)
    with pytest.raises(ValueError, match="n_images"):
        get_dataset("synthetic", n_images=0)


def test_synthetic_needs_texture_beyond_colour():
    """A linear classifier on local colour is clearly worse than on colour + texture."""
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
            sd = np.sqrt(np.maximum(uniform_filter(lum * lum, 7) - m * m, 0))
            gx = uniform_filter(np.abs(np.diff(lum, axis=1, append=lum[:, -1:])), 7)
            gy = uniform_filter(np.abs(np.diff(lum, axis=0, append=lum[-1:])), 7)
            cols.append(col.reshape(-1, 3)[::3])
            both.append(np.concatenate([col, np.stack([sd, gx, gy], -1)], -1).reshape(-1, 6)[::3])
            ys.append(s.label.ravel()[::3])
        return np.concatenate(cols), np.concatenate(both), np.concatenate(ys)

    ct, bt, yt = feats(get_dataset("synthetic", split="train", n_images=10))
    cv, bv, yv = feats(get_dataset("synthetic", split="val", n_images=4))
    acc_c = (LinearDiscriminantAnalysis().fit(ct, yt).predict(cv) == yv).mean()
    acc_b = (LinearDiscriminantAnalysis().fit(bt, yt).predict(bv) == yv).mean()
    assert acc_c < 0.85 and acc_b > acc_c + 0.1


# ----------------------------------------------------------------------------- image decoding


def _sixteen_bit(path, values: np.ndarray) -> None:
    im = Image.fromarray(values.astype(np.uint16))
    assert im.mode == "I;16"
    im.save(path)


def test_16bit_grayscale_is_scaled_by_its_range_not_clipped(tmp_path):
    from stego_probe.data.io import read_image

    # the full 16-bit range: convert("RGB") clipped ~99.6 % of such pixels to 255
    values = np.linspace(0, 65535, 16 * 16).round().reshape(16, 16).astype(np.uint16)
    values[0, :4] = [0, 257, 32768, 65535]
    _sixteen_bit(tmp_path / "a.png", values)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "I;16"  # what a 16-bit PNG decodes to
    got = np.asarray(read_image(tmp_path / "a.png"))
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
    want = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    assert got[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert (got == 255).mean() < 0.01
    # a 12-bit camera in a 16-bit container (values <= 4095) stays dark, in proportion
    _sixteen_bit(tmp_path / "b.png", np.full((4, 4), 4095))
    assert np.asarray(read_image(tmp_path / "b.png")).max() == 16
    # through a folder dataset
    (tmp_path / "d/imgs/train").mkdir(parents=True)
    _sixteen_bit(tmp_path / "d/imgs/train/x.png", values)
    ds = get_dataset("folder", tmp_path / "d", "train")
    np.testing.assert_array_equal(np.asarray(ds[0].image)[..., 0], want)


def test_32bit_int_and_float_images_scaled_or_refused_naming_the_file(tmp_path):
    from stego_probe.data.io import read_image

    ints = np.array([[0, 257, 32768, 65535]], dtype=np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tif")
    assert np.asarray(read_image(tmp_path / "i.tif"))[0, :, 1].tolist() == [0, 1, 128, 255]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif.*mode 'I'.*\[0, 65535\].*\[0, 70000\]"):
        read_image(tmp_path / "big.tif")
    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert np.asarray(read_image(tmp_path / "f.tif"))[0, :, 2].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32)).save(tmp_path / "f3.tif")
    with pytest.raises(ValueError, match=r"f3\.tif.*mode 'F'.*\[0, 1\]"):
        read_image(tmp_path / "f3.tif")
    # 8-bit modes are unchanged: RGBA drops alpha, L is repeated
    Image.fromarray(np.full((2, 2, 4), 7, np.uint8)).save(tmp_path / "rgba.png")
    assert np.asarray(read_image(tmp_path / "rgba.png")).tolist() == [[[7] * 3] * 2] * 2


def test_folder_pairs_uppercase_and_mixed_case_extensions(tmp_path):
    stems = ("alpha", "beta", "gamma")
    ref = write_folder(tmp_path / "a", stems=stems, n_classes=4, label_ext=".PNG")
    ds = get_dataset("folder", tmp_path / "a", "train", n_classes=4)
    for i, stem in enumerate(ds.ids):
        want = ref["labels"][stem].copy()
        want[want == 255] = -1
        np.testing.assert_array_equal(ds[i].label, want)
    assert "labels/train/alpha.PNG" in ds.file_list()[0]
    # mixed: images .PNG / .Png, labels .pNg, one per stem
    root = tmp_path / "b"
    for j, (iext, lext) in enumerate([(".PNG", ".pNg"), (".Png", ".png"), (".png", ".PNG")]):
        r = write_folder(root, stems=(f"s{j}",), n_classes=4, image_ext=iext, label_ext=lext,
                         seed=j)  # fmt: skip
        ref["labels"][f"s{j}"] = r["labels"][f"s{j}"]
    ds = get_dataset("folder", root, "train", n_classes=4)
    assert ds.ids == ["s0", "s1", "s2"]
    for i, stem in enumerate(ds.ids):
        want = ref["labels"][stem].copy()
        want[want == 255] = -1
        np.testing.assert_array_equal(ds[i].label, want)


def test_decompression_bomb_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    import PIL.Image

    from stego_probe.data.io import read_image, read_label_png

    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "warn.png")  # 144 px
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "error.png")  # 256 px
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "label.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # PIL: warn > 100, error > 200
    for name in ("warn.png", "error.png"):
        with pytest.raises(ValueError) as e:
            read_image(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "decompression bomb" in msg, msg
        assert "MAX_IMAGE_PIXELS" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"label\.png: label image refused.*decompression bomb"):
        read_label_png(tmp_path / "label.png")
    # through the extract CLI: one line naming the file
    (tmp_path / "d/imgs/train").mkdir(parents=True)
    (tmp_path / "error.png").rename(tmp_path / "d/imgs/train/error.png")
    argv = ["extract", "--dataset", "folder", "--data-root", str(tmp_path / "d"), "--split",
            "train", "--backbone", "descriptor", "--res", "16", "--device", "cpu",
            "--no-progress", "--store", str(tmp_path / "store")]  # fmt: skip
    capsys.readouterr()
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "d/imgs/train/error.png") in err, err
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(tmp_path / "warn.png").size == (12, 12)


# ----------------------------------------------------------------------------- provenance


def test_provenance_records_args_root_and_a_file_list_fingerprint(tmp_path, monkeypatch):
    write_cocostuff(tmp_path)
    write_cityscapes(tmp_path)
    write_potsdam(tmp_path)
    write_folder(tmp_path / "f", n_classes=4)
    crops = [np.zeros((6, 8, 3), np.uint8)] * 5
    write_cropped(tmp_path, "cocostuff27", "train", crops, [np.zeros((6, 8), np.int64)] * 5)
    cases = [
        ("synthetic", None, "val", {"n_images": 3, "seed": 2}),
        ("folder", tmp_path / "f", "train", {"n_classes": 4, "ignore_value": 9}),
        ("cocostuff27", tmp_path, "train", {}),
        ("cocostuff27", tmp_path, "train", {"cropped": True}),
        ("cityscapes27", tmp_path, "val", {}),
        ("potsdam3", tmp_path, "train", {"potsdam_unmapped": "zero"}),
    ]
    for name, root, split, kw in cases:
        ds = get_dataset(name, root=root, split=split, **kw)
        prov = ds.provenance
        assert prov["root"] == (None if root is None else str(root.resolve())), name
        assert len(prov["files_sha256"]) == 64
        for k, v in kw.items():  # the options given are recorded (normalised)
            assert prov["args"][k] == ([v] if k == "ignore_value" else v), (name, k)
        # the recorded options rebuild the same split
        again = get_dataset(name, root=root, split=split, **prov["args"])
        assert again.provenance == prov and again.ids == ds.ids, name
    # the fingerprint follows the file names, not their contents; and it is cheap
    f = get_dataset("folder", tmp_path / "f", "train", n_classes=4)
    fp = f.files_sha256
    Image.fromarray(np.zeros((9, 13, 3), np.uint8)).save(tmp_path / "f/imgs/train/mid.png")
    assert get_dataset("folder", tmp_path / "f", "train", n_classes=4).files_sha256 == fp
    for d in ("imgs", "labels"):
        (tmp_path / f"f/{d}/train/mid.png").rename(tmp_path / f"f/{d}/train/mide.png")
    assert get_dataset("folder", tmp_path / "f", "train", n_classes=4).files_sha256 != fp
    # a relative root is recorded as the same absolute path
    monkeypatch.chdir(tmp_path)
    rel = get_dataset("folder", "f", "train", n_classes=4)
    assert rel.provenance["root"] == str(tmp_path.resolve() / "f")
    assert (
        rel.files_sha256 == get_dataset("folder", tmp_path / "f", "train", n_classes=4).files_sha256
    )


def test_prepare_crops_resumes_folders_whose_manifest_predates_args(tmp_path):
    import json

    src = get_dataset("synthetic", split="train", n_images=2, size=(16, 16))
    base = prepare_crops(src, tmp_path, progress=False)
    manifest = base / "manifest_train.json"
    meta = json.loads(manifest.read_text())
    assert meta["source"]["args"]["seed"] == 0 and len(meta["source"]["files_sha256"]) == 64
    for k in ("args", "files_sha256"):  # as written by stego_probe 0.2.0
        del meta["source"][k]
    manifest.write_text(json.dumps(meta))
    prepare_crops(src, tmp_path, progress=False)  # resumes
    other = get_dataset("synthetic", split="train", n_images=2, size=(16, 16), seed=1)
    with pytest.raises(ValueError, match="refusing to mix.*args: .*seed.* 0.*1"):
        prepare_crops(other, tmp_path, progress=False)
