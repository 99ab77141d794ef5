"""Tests of stego_probe.metrics: hand-computed cases, sklearn/scipy equality, invariances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from stego_probe.metrics import (
    ConfusionAccumulator,
    apply_mapping,
    confusion_matrix,
    hungarian_mapping,
    majority_mapping,
    map_predictions,
    metrics_to_flat,
    scores,
    segmentation_metrics,
)
from stego_probe.results import RESULT_COLUMNS, make_rows

# Hand example, rows = predicted cluster, columns = true class:
#
#            class0 class1 class2 | row sum
#   pred 0     10      2      0   |  12
#   pred 1      3      8      1   |  12
#   pred 2      0      1      5   |   6
#   col sum    13     11      6   |  30
#
# Matching is the identity (10 + 8 + 5 = 23 is the largest diagonal).
#   TP = [10, 8, 5]
#   FP = row sum - TP = [2, 4, 1]      (predicted as a, true class other)
#   FN = col sum - TP = [3, 3, 1]      (true a, predicted other)
#   IoU = TP / (TP + FP + FN) = [10/15, 8/15, 5/7]
#   precision = TP / (TP + FP) = [10/12, 8/12, 5/6]
#   recall    = TP / (TP + FN) = [10/13, 8/11, 5/6]
#   accuracy  = 23 / 30
HAND = np.array([[10, 2, 0], [3, 8, 1], [0, 1, 5]])


def _expand(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel arrays (pred, target) whose confusion matrix is M."""
    pred, target = [], []
    for p in range(M.shape[0]):
        for a in range(M.shape[1]):
            pred += [p] * int(M[p, a])
            target += [a] * int(M[p, a])
    return np.array(pred, dtype=np.int64), np.array(target, dtype=np.int64)


def test_hand_example_values():
    s = scores(HAND)
    assert s["mapping"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(s["tp"], [10, 8, 5])
    np.testing.assert_array_equal(s["fp"], [2, 4, 1])
    np.testing.assert_array_equal(s["fn"], [3, 3, 1])
    np.testing.assert_allclose(s["iou"], 100 * np.array([10 / 15, 8 / 15, 5 / 7]))
    np.testing.assert_allclose(s["precision"], 100 * np.array([10 / 12, 8 / 12, 5 / 6]))
    np.testing.assert_allclose(s["recall"], 100 * np.array([10 / 13, 8 / 11, 5 / 6]))
    assert s["accuracy"] == pytest.approx(100 * 23 / 30)
    assert s["miou"] == pytest.approx(100 * (10 / 15 + 8 / 15 + 5 / 7) / 3)
    assert s["n_pixels"] == 30
    # identity matching gives the same numbers here
    s_id = scores(HAND, match="identity")
    np.testing.assert_allclose(s_id["iou"], s["iou"])


def test_hungarian_recovers_permuted_clusters_and_scores_are_invariant():
    perm = np.array([2, 0, 1])  # cluster perm[p] holds what cluster p held
    permuted = np.zeros_like(HAND)
    permuted[perm] = HAND
    s, sp = scores(HAND), scores(permuted)
    assert sp["mapping"].tolist() == perm.tolist()
    for key in ("accuracy", "miou"):
        assert sp[key] == pytest.approx(s[key])
    for key in ("iou", "precision", "recall", "tp", "fp", "fn"):
        np.testing.assert_allclose(sp[key], s[key])


def test_random_matches_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    n_classes, n_clusters = 5, 7
    target = rng.integers(-1, n_classes + 2, size=(6, 17, 13))  # includes -1 and >= K
    pred = rng.integers(0, n_clusters, size=target.shape)
    M = confusion_matrix(pred, target, n_clusters, n_classes)
    valid = (target >= 0) & (target < n_classes)
    labels = np.arange(max(n_clusters, n_classes))
    sk = sk_confusion_matrix(target[valid], pred[valid], labels=labels)  # rows = truth
    np.testing.assert_array_equal(M, sk.T[:n_clusters, :n_classes])
    rows, cols = linear_sum_assignment(M, maximize=True)
    s = scores(M)
    assert s["tp"].sum() == M[rows, cols].sum()
    assert s["accuracy"] == pytest.approx(100 * M[rows, cols].sum() / valid.sum())
    np.testing.assert_array_equal(hungarian_mapping(M)[cols], rows)
    # brute force over all injective maps agrees on the optimum
    from itertools import permutations

    best = max(sum(M[c, a] for a, c in enumerate(p)) for p in permutations(range(7), 5))
    assert s["tp"].sum() == best


def test_ignore_labels_are_excluded():
    pred = np.array([0, 1, 1, 0, 2, 2])
    target = np.array([0, 1, -1, 255, 3, 1])  # -1, 255 and 3 (= K) ignored
    M = confusion_matrix(pred, target, n_clusters=3, n_classes=3)
    assert M.sum() == 3
    assert M[0, 0] == 1 and M[1, 1] == 1 and M[2, 1] == 1
    # predictions at ignored pixels are not range-checked either
    M2 = confusion_matrix(np.array([0, 99]), np.array([0, -1]), 3, 3)
    assert M2.sum() == 1


def test_overclustering_unmatched_clusters_count_as_fn_not_fp():
    # K = 2 classes, K' = 4 clusters; clusters 2 and 3 stay unmatched.
    M = np.array([[6, 1], [0, 5], [2, 0], [1, 3]])
    s = scores(M)
    assert s["mapping"].tolist() == [0, 1]
    assert s["cluster_to_class"].tolist() == [0, 1, -1, -1]
    np.testing.assert_array_equal(s["tp"], [6, 5])
    np.testing.assert_array_equal(s["fp"], [1, 0])  # only from matched clusters
    np.testing.assert_array_equal(s["fn"], [3, 4])  # 9 - 6, 9 - 5: unmatched pixels are FN
    assert s["n_pixels"] == 18  # unmatched pixels stay in the denominator
    assert s["accuracy"] == pytest.approx(100 * 11 / 18)
    np.testing.assert_allclose(s["iou"], [100 * 6 / 10, 100 * 5 / 9])


def test_majority_mapping_hand_case():
    # cluster 0 -> class 0, cluster 1 -> class 1, cluster 2 -> class 0 (3 > 2), cluster 3 empty
    M = np.array([[5, 1], [0, 4], [3, 2], [0, 0]])
    assert majority_mapping(M).tolist() == [0, 1, 0, -1]
    s = scores(M, match="majority")
    # TP0 = 5 + 3, FP0 = 1 + 2, FN0 = 8 - 8; TP1 = 4, FP1 = 0, FN1 = 7 - 4
    np.testing.assert_array_equal(s["tp"], [8, 4])
    np.testing.assert_array_equal(s["fp"], [3, 0])
    np.testing.assert_array_equal(s["fn"], [0, 3])
    assert s["accuracy"] == pytest.approx(100 * 12 / 15)
    assert s["miou"] == pytest.approx(100 * (8 / 11 + 4 / 7) / 2)


def test_reference_mode_reproduces_inflated_scores():
    # K = 2, K' = 3. Cluster 2 is an extra cluster with 6 pixels.
    M = np.array([[5, 1], [0, 4], [3, 3]])
    honest = scores(M)
    # honest: TP = [5, 4], FP = [1, 0], FN = [3, 4]; acc = 9/16
    assert honest["accuracy"] == pytest.approx(100 * 9 / 16)
    assert honest["miou"] == pytest.approx(100 * (5 / 9 + 4 / 8) / 2)
    ref = scores(M, match="reference")
    # reference: pixels predicted as cluster 2 are dropped -> 10 pixels;
    # IoU0 = 5/(5+0+1), IoU1 = 4/(4+1+0); the extra (K+1)-th entry is 0/0 -> skipped
    assert ref["n_dropped"] == 6 and ref["n_pixels"] == 10
    assert ref["accuracy"] == pytest.approx(90.0)
    assert ref["miou"] == pytest.approx(100 * (5 / 6 + 4 / 5) / 2)
    assert ref["accuracy"] > honest["accuracy"] and ref["miou"] > honest["miou"]
    # with E = 0 the reference and the default agree
    sq = scores(HAND, match="reference")
    assert sq["miou"] == pytest.approx(scores(HAND)["miou"])
    assert sq["accuracy"] == pytest.approx(scores(HAND)["accuracy"])


def test_reference_mode_extra_entry():
    # K = 2, K' = 3. Unique optimum uses clusters 0 and 1, so the extra row (cluster 2) is
    # empty and its 0/0 entry is skipped: hist = [[6, 0], [2, 1]],
    # IoU0 = 6 / (6 + 2 + 0), IoU1 = 1 / (1 + 0 + 2).
    M = np.array([[6, 0], [2, 1], [0, 0]])
    ref = scores(M, match="reference")
    assert ref["miou"] == pytest.approx(100 * (6 / 8 + 1 / 3) / 2)
    # Class 1 only occurs in the dropped cluster 2: the reference's (K+1)x(K+1) histogram then
    # holds cluster 1's two pixels in an entry with IoU 0 that joins the average:
    # IoU0 = 6 / 8 = 75, one entry is 0 and one is 0/0 (skipped) -> mIoU = 37.5,
    # whichever of the tied matchings scipy picks. Accuracy = 6 / 8.
    M2 = np.array([[6, 0], [2, 0], [0, 3]])
    ref2 = scores(M2, match="reference")
    assert ref2["n_dropped"] == 3
    assert ref2["miou"] == pytest.approx(37.5)
    assert ref2["accuracy"] == pytest.approx(75.0)
    honest = scores(M2)  # class 0 -> cluster 0, class 1 -> cluster 2: 9 of 11 pixels
    assert honest["accuracy"] == pytest.approx(100 * 9 / 11)
    assert honest["miou"] == pytest.approx((75 + 100) / 2)


def test_streaming_accumulation_equals_one_shot():
    rng = np.random.default_rng(1)
    target = rng.integers(-1, 4, size=(10, 8, 8))
    pred = rng.integers(0, 6, size=(10, 8, 8))
    acc = ConfusionAccumulator(6, 4)
    for i in range(0, 10, 3):
        acc.update(pred[i : i + 3], target[i : i + 3])
    acc.update(pred[:0], target[:0])  # an empty batch is a no-op
    np.testing.assert_array_equal(acc.matrix, confusion_matrix(pred, target, 6, 4))
    assert acc.n_pixels == int(((target >= 0) & (target < 4)).sum())
    other = ConfusionAccumulator(6, 4).update(pred, target)
    np.testing.assert_array_equal(acc.merge(other).matrix, 2 * other.matrix)


def test_errors():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3, 2)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        confusion_matrix(np.array([-1, 0]), np.array([0, 1]), 3, 2)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3, 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(3, float), np.zeros(3, int), 3, 2)
    with pytest.raises(ValueError, match="square"):
        scores(np.ones((3, 2), int), match="identity")
    with pytest.raises(ValueError, match="match"):
        scores(HAND, match="best")
    with pytest.raises(ValueError, match="empty"):
        scores(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="shapes"):
        ConfusionAccumulator(2, 2).merge(ConfusionAccumulator(3, 2))


def test_fewer_clusters_than_classes_leaves_classes_unmatched():
    M = np.array([[4, 1, 0], [0, 0, 5]])  # K' = 2 < K = 3
    mapping = hungarian_mapping(M)
    assert mapping.tolist() == [0, -1, 1]
    s = scores(M)
    np.testing.assert_array_equal(s["tp"], [4, 0, 5])
    assert s["iou"][1] == 0.0  # class 1 exists in the ground truth, never predicted


def test_predicted_but_absent_class_counts_absent_class_skipped():
    # class 2 absent from ground truth but predicted (cluster 2 matched to it) -> IoU 0, counts
    M = np.array([[4, 0, 0], [0, 4, 0], [1, 0, 0]])
    s = scores(M, match="identity")
    assert s["iou"][2] == 0.0
    assert s["miou"] == pytest.approx((80 + 100 + 0) / 3)
    # class 2 absent from both -> NaN and skipped
    M2 = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 0]])
    s2 = scores(M2, match="identity")
    assert np.isnan(s2["iou"][2]) and s2["miou"] == pytest.approx(100.0)


def test_apply_mapping_fixed_from_train():
    M_train = np.array([[9, 1], [1, 9], [5, 0]])
    s_train = scores(M_train, match="majority")
    M_val = np.array([[1, 8], [7, 1], [0, 4]])  # clusters swapped on val
    fixed = apply_mapping(M_val, s_train)
    # train lut [0, 1, 0]: TP0 = 1 + 0, TP1 = 1
    np.testing.assert_array_equal(fixed["tp"], [1, 1])
    assert fixed["accuracy"] == pytest.approx(100 * 2 / 21)
    # the val-fitted Hungarian matching is much better: the train mapping is really applied
    assert scores(M_val)["accuracy"] > 70
    np.testing.assert_array_equal(apply_mapping(M_val, [0, 1, 0])["tp"], fixed["tp"])
    with pytest.raises(ValueError, match="mapping"):
        apply_mapping(M_val, [0, 1])


def test_segmentation_metrics_and_flat_rows():
    pred = np.array([[1, 1, 0], [0, 0, 2]])
    target = np.array([[0, 0, 1], [1, 1, 255]])
    m = segmentation_metrics(pred, target, n_classes=2)
    assert m["accuracy"] == 100.0 and m["miou"] == 100.0
    assert m["cluster_to_class"].tolist() == [1, 0, -1]
    np.testing.assert_array_equal(
        map_predictions(pred, m["cluster_to_class"]), [[0, 0, 1], [1, 1, -1]]
    )
    flat = metrics_to_flat(m, class_names=["sky", "ground"])
    assert set(flat) == {
        "accuracy",
        "miou",
        "iou:sky",
        "iou:ground",
        "precision:sky",
        "precision:ground",
        "recall:sky",
        "recall:ground",
    }
    rows = make_rows({"dataset": "synthetic", "probe": "kmeans"}, flat)
    assert len(rows) == 8 and set(rows[0]) == set(RESULT_COLUMNS)
    with pytest.raises(ValueError, match="class_names"):
        metrics_to_flat(m, class_names=["only-one"])


def test_precision_recall_not_swapped():
    # class 0 is over-predicted: high recall, low precision (quirk Q15 swaps the names)
    M = np.array([[10, 10], [0, 5]])
    s = scores(M, match="identity")
    assert s["recall"][0] == pytest.approx(100.0)
    assert s["precision"][0] == pytest.approx(50.0)


def test_torch_inputs_accepted():
    torch = pytest.importorskip("torch")
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [1, -1]])
    M = confusion_matrix(pred, target, 2, 2)
    assert M.tolist() == [[1, 0], [0, 2]]


def test_expand_roundtrip_hand_matrix():
    pred, target = _expand(HAND)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3, 3), HAND)
