"""stego_probe: analyse what unsupervised segmentation heads (STEGO) do to self-supervised features.

The package is organised along the data flow of ``docs/design.md``::

    dataset -> backbone -> FeatureStore -> projection -> probe -> metrics / distinctness -> tables -> plots

Every stage is a plain function or a scikit-learn style estimator on numpy / torch arrays, so a
notebook user can call any of them on their own data.
"""

__version__ = "0.3.0"
