"""Generate docs/api.md from the package's docstrings.

Usage::

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is out of date (used by the tests)

Lists, module by module, every public function and class (names not starting with ``_``
that are defined in the module or listed in its ``__all__``) with its signature and docstring.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "stego_probe.labels",
    "stego_probe.provenance",
    "stego_probe.registry",
    "stego_probe.fileio",
    "stego_probe.params",
    "stego_probe.persist",
    "stego_probe.device",
    "stego_probe.data",
    "stego_probe.data.transforms",
    "stego_probe.data.crops",
    "stego_probe.backbones",
    "stego_probe.store",
    "stego_probe.extract",
    "stego_probe.verify",
    "stego_probe.metrics",
    "stego_probe.codes",
    "stego_probe.probes",
    "stego_probe.probes.kmeans",
    "stego_probe.probes.cluster_lookup",
    "stego_probe.probes.linear",
    "stego_probe.probes.crf",
    "stego_probe.scoring",
    "stego_probe.evaluate",
    "stego_probe.export",
    "stego_probe.projections",
    "stego_probe.projections.pca",
    "stego_probe.projections.random",
    "stego_probe.projections.stego",
    "stego_probe.distinctness",
    "stego_probe.sweep",
    "stego_probe.compare",
    "stego_probe.transfer",
    "stego_probe.threads",
    "stego_probe.results",
    "stego_probe.plots",
    "stego_probe.plots.tables",
    "stego_probe.plots.labels",
    "stego_probe.plots.style",
    "stego_probe.plots.dims",
    "stego_probe.plots.spectrum",
    "stego_probe.plots.maps",
    "stego_probe.embedding",
    "stego_probe.published",
    "stego_probe.released",
    "stego_probe.summaries",
    "stego_probe.claims",
    "stego_probe.colors",
    "stego_probe.demo",
]

OUT = Path(__file__).resolve().parent / "api.md"


def _public(module) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    items = []
    for name in names if names is not None else sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if names is None and getattr(obj, "__module__", None) != module.__name__:
            continue
        items.append((name, obj))
    return sorted(items, key=lambda t: t[0].lower())


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "",
    ]
    for mod_name in MODULES:
        module = importlib.import_module(mod_name)
        lines += [f"## `{mod_name}`", ""]
        doc = inspect.getdoc(module)
        if doc:
            lines += [doc.split("\n\n")[0], ""]
        for name, obj in _public(module):
            kind = "class" if inspect.isclass(obj) else "def"
            lines += [f"### `{kind} {name}{_signature(obj)}`", ""]
            doc = inspect.getdoc(obj) or "(no docstring)"
            lines += ["```text", doc, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run `python docs/gen_api.py`")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
