"""The README's hook reference table, generated from :mod:`ganstack.training.hookspecs`.

``python -m ganstack.training.hookdoc`` prints the table; ``--write README.md`` replaces the section between the
markers; ``--check README.md`` exits 1 when the README and the hookspecs disagree (``tests/test_plugin_api.py``
runs the check, as Datasette checks its documented hooks).
"""
from __future__ import annotations

import argparse
import inspect
import sys

from ganstack.training import hookspecs
from ganstack.training.plugin_manager import hook_kind, hook_names

BEGIN = "<!-- hook-reference: generated from training/hookspecs.py by `python -m ganstack.training.hookdoc --write " \
        "README.md`; do not edit by hand -->"
END = "<!-- end of hook-reference -->"


def _signature(name: str) -> tuple[str, str]:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params})", str(sig.return_annotation)


def reference_table() -> str:
    """One row per hook: kind, signature, return type, when it is called, a one-line example."""
    rows = ["| hook | kind | signature | returns | called | example |", "|---|---|---|---|---|---|"]
    for name in hook_names():
        spec = getattr(hookspecs, name)
        sig, ret = _signature(name)
        rows.append(f"| `{name}` | {hook_kind(name)} | `{sig}` | `{ret}` | {getattr(spec, hookspecs.WHEN_ATTR)} "
                    f"| `{getattr(spec, hookspecs.EXAMPLE_ATTR)}` |")
    return "\n".join(rows)


def section() -> str:
    return f"{BEGIN}\n{reference_table()}\n{END}"


def extract(text: str) -> str:
    """The generated section of a README (markers included); '' when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return ""
    return text[start:end + len(END)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", metavar="README", help="replace the generated section of this file")
    ap.add_argument("--check", metavar="README", help="exit 1 if this file's section differs from the hookspecs")
    args = ap.parse_args(argv)
    if args.write or args.check:
        path = args.write or args.check
        with open(path) as f:
            text = f.read()
        old = extract(text)
        if not old:
            print(f"{path}: the markers of the hook reference are missing", file=sys.stderr)
            return 1
        if args.check:
            if old != section():
                print(f"{path}: the hook reference differs from training/hookspecs.py; run "
                      f"python -m ganstack.training.hookdoc --write {path}", file=sys.stderr)
                return 1
            return 0
        with open(path, "w") as f:
            f.write(text.replace(old, section()))
        return 0
    print(section())
    return 0


if __name__ == "__main__":
    sys.exit(main())
