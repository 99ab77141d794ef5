"""Table 2: the released STEGO checkpoints and the DINO-only baseline, with and without CRF.

For each dataset (CocoStuff-27 ViT-B/8 D=90, Cityscapes-27 ViT-B/8 D=100, Potsdam-3 ViT-S/8 D=70)
this evaluates, in the reference's final "eval" mode (320-px centre crops, flip-averaged codes,
PROTOCOL §4.4), with and without the dense CRF (§5):

* ``stego_released``: the released checkpoint (cocostuff27_vit_base_5.ckpt,
  cityscapes_vit_base_1.ckpt, potsdam_test.ckpt: ``stego_probe.released.released_checkpoints()``)
  applied to the stored DINO tokens, scored with the checkpoint's own cluster and linear probes,
  and with stego_probe's k-means probe fitted on the head's codes of the training store;
* ``dino``: the DINO-only baseline (§6.1): cluster, linear and k-means probes fitted on the raw
  backbone features of the training store.

Writes ``<out>/results.csv`` (tidy rows) and ``<out>/table2.csv`` (accuracy / mIoU per
dataset, method, probe and CRF, next to the published regression targets: the released
checkpoints' evaluation logs from STEGO issues #3 / #39, and the paper's Figure 4 values), and
prints the table. Re-running resumes: finished (dataset, method, seed) evaluations are skipped.
The evaluation is :func:`stego_probe.released.evaluate_released`, the comparison
:func:`stego_probe.published.compare_with_published`; this script only parses arguments, opens
the shared stores and writes the tables.

Example:
    python experiments/table2.py --data-root /data --checkpoints saved_models
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import (
    SWEEP_ROOT,
    begin,
    csv_list,
    dataset_config,
    make_parser,
    run,
    shared_store,
)

from stego_probe.published import TABLE2_METHODS as METHODS
from stego_probe.released import RELEASED_URL


def parse_args(argv=None):
    p = make_parser("table2", __doc__, figures=False)
    g = p.add_argument_group("table 2")
    g.add_argument(
        "--checkpoints",
        default="saved_models",
        help="folder holding the released .ckpt files (STEGO's saved_models/); download from "
        f"{RELEASED_URL}<name>",
    )
    g.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="a checkpoint file for one dataset (repeatable; overrides --checkpoints)",
    )
    g.add_argument(
        "--methods",
        dest="table_methods",
        type=csv_list,
        default=list(METHODS),
        help="stego_released and / or dino (default: both)",
    )
    g.add_argument(
        "--no-crf", action="store_true", help="skip the dense CRF (report no-CRF metrics only)"
    )
    g.add_argument("--crf-workers", type=int, default=0, help="CRF processes (0: serial)")
    g.add_argument(
        "--stores",
        default=SWEEP_ROOT,
        help=f"folder of the per-dataset sweep folders whose stores are shared ({SWEEP_ROOT})",
    )
    args = p.parse_args(argv)
    bad = [m for m in args.table_methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {list(METHODS)}")
    return args


def checkpoint_path(args, dataset: str) -> Path:
    """The released checkpoint of ``dataset`` (``--checkpoint`` beats ``--checkpoints``)."""
    from stego_probe.released import released_checkpoint

    explicit = None
    for entry in args.checkpoint:
        key, _, path = entry.partition("=")
        if key == dataset:
            explicit = path
    try:
        return released_checkpoint(dataset, args.checkpoints, explicit)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e} (or pass --checkpoint {dataset}=PATH, or --methods dino)"
        ) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    begin(args, "Table 2: released STEGO checkpoints and DINO, eval mode, ± CRF")
    from stego_probe.published import compare_with_published
    from stego_probe.released import evaluate_released, load_released
    from stego_probe.results import append_csv, done_keys, read_results

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    crf = not args.no_crf
    progress = not args.no_progress
    key = ["dataset", "method", "seed"]
    # an evaluation is done when its rows are there (and its CRF rows, when CRF is asked for)
    done = done_keys(results, key, where={"crf": True} if crf else None)
    for dataset in args.datasets:
        config = dataset_config(args, dataset)
        print(f"== {dataset}: backbone {config.backbone}, seeds {config.seeds}, crf {crf}")
        todo = [
            (m, s) for m in args.table_methods for s in config.seeds if (dataset, m, s) not in done
        ]
        if not todo:
            print("   already in results, skipped")
            continue
        head = None
        if any(m == "stego_released" for m, _ in todo):
            path = checkpoint_path(args, dataset)
            head = load_released(path, backbone=config.backbone, verbose=True)
        cache: dict = {}
        train = shared_store(config, args.stores, "train", cache=cache, progress=progress)
        val = shared_store(config, args.stores, "val", flipped=True, cache=cache, progress=progress)
        evaluations = evaluate_released(
            config, train, val, todo, head=head, crf=crf, crf_workers=args.crf_workers,
            progress=progress,
        )  # fmt: skip
        for method, seed, frame in evaluations:
            print(f"   {method}, seed {seed}")
            append_csv(frame.to_dict("records"), results)

    df = read_results(results)
    table = compare_with_published(df[df["dataset"].isin(args.datasets)])
    table.to_csv(out / "table2.csv", index=False)
    print("\nTable 2 (eval mode; % ; mean over seeds; target = released-checkpoint logs from")
    print("STEGO issues #3 / #39, fig4 = the paper's Figure 4, digitised):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nresults: {results}\ntable: {out / 'table2.csv'}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
