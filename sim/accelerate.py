"""Compile the simulator's hot path to C with mypyc (optional; the pure-Python engine is the same).

``python -m sim.accelerate`` compiles :data:`HOT_MODULES` (the event loop, the per-instance
scheduler, the KV cache, KV-transfer links and decode-run timing) in place: each gets an
extension module next to its source (``simulator.cpython-311-...so``), which Python imports
instead of the ``.py``. The code is the same Python; mypyc turns its type annotations into
C-level types and runtime checks, so a run gives the same records bit for bit
(``tests/sim/engine/test_compiled.py`` compares both builds when the compiled one is present)
and the DistServe benchmark runs ~1.5x faster. Needs a C compiler and mypy (``pip install -e
'.[fast]'``). ``python -m sim.accelerate --clean`` removes the extensions (back to pure
Python); ``--status`` says which build is imported. Rebuild after editing a hot module: a
stale extension shadows the edited source (``--status`` reports it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The checkout (the folder holding ``sim/``)."""
HOT_MODULES = (
    "sim/engine/decode_run.py",
    "sim/engine/links.py",
    "sim/engine/simulator.py",
    "sim/instance/kv.py",
    "sim/instance/scheduler.py",
)
"""Sources compiled, relative to :data:`ROOT`."""
GROUP = "sim._hot"
"""mypyc group: its shared runtime library is ``sim/_hot__mypyc...so`` (inside the package,
so an editable install finds it from any folder)."""
_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def extensions() -> list[Path]:
    """Compiled files of this build present in the checkout (modules and shared library)."""
    out = [ROOT / p.replace(".py", _SUFFIX) for p in HOT_MODULES]
    out.append(ROOT / (GROUP.replace(".", "/") + "__mypyc" + _SUFFIX))
    return [p for p in out if p.exists()]


def status() -> dict[str, str]:
    """Per hot module: ``compiled``, ``stale`` (source newer than its extension) or ``python``."""
    out = {}
    for src in HOT_MODULES:
        ext = ROOT / src.replace(".py", _SUFFIX)
        if not ext.exists():
            out[src] = "python"
        elif (ROOT / src).stat().st_mtime > ext.stat().st_mtime:
            out[src] = "stale"
        else:
            out[src] = "compiled"
    return out


def is_compiled() -> bool:
    """Whether the imported event loop is the compiled one."""
    spec = importlib.util.find_spec("sim.engine.simulator")
    return bool(spec and spec.origin and spec.origin.endswith(_SUFFIX))


def clean() -> list[Path]:
    """Remove the compiled extensions and mypyc's build folder; returns what was removed."""
    removed = extensions()
    for p in removed:
        p.unlink()
    for d in (ROOT / "build" / "mypyc", ROOT / ".mypy_cache"):
        if d.exists():
            shutil.rmtree(d)
            removed.append(d)
    return removed


_SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="baton-hot", script_args=["build_ext", "--inplace", "--build-temp", {temp!r},
                                     "--build-lib", {lib!r}],
      ext_modules=mypycify(["--follow-imports=silent", *{paths!r}], opt_level="3",
                           group_name={group!r}, target_dir={target!r}))
"""


def build(verbose: bool = False) -> list[Path]:
    """Compile :data:`HOT_MODULES` in place; returns the extension files.

    Raises:
        RuntimeError: naming the fix when mypy (mypyc) or a C compiler is missing, or with
            mypyc's output when the sources do not type-check or compile.
    """
    if importlib.util.find_spec("mypyc") is None:
        raise RuntimeError("mypyc is not installed: pip install -e '.[fast]' (installs mypy, "
                           "which ships mypyc), then rerun python -m sim.accelerate")
    cc = sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None and shutil.which("cc") is None:
        raise RuntimeError(f"no C compiler found ({cc}): install one (e.g. gcc) to compile")
    clean()
    temp = ROOT / "build" / "mypyc"
    script = _SETUP.format(temp=str(temp / "temp"), lib=str(temp / "lib"),
                           paths=list(HOT_MODULES), group=GROUP, target=str(temp / "c"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=not verbose, text=True)
    if proc.returncode:
        out = (proc.stdout or "") + (proc.stderr or "")
        errors = [line for line in out.splitlines() if "error" in line.lower()]
        raise RuntimeError("mypyc failed:\n" + "\n".join(errors[-30:] or out.splitlines()[-30:]))
    built = extensions()
    if len(built) != len(HOT_MODULES) + 1:
        raise RuntimeError(f"mypyc built {len(built)} of {len(HOT_MODULES) + 1} extensions: "
                           f"{[p.name for p in built]}")
    return built


def main(argv: list[str] | None = None) -> None:
    """Build (default), ``--clean`` or ``--status``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled extensions")
    ap.add_argument("--status", action="store_true", help="say which build each module is")
    ap.add_argument("-v", "--verbose", action="store_true", help="show mypyc's output")
    args = ap.parse_args(argv)
    if args.status:
        for src, state in status().items():
            print(f"{state:9s} {src}")
        return
    if args.clean:
        removed = clean()
        print(f"removed {len(removed)} compiled files: the pure-Python engine is in use")
        return
    built = build(args.verbose)
    print(f"compiled {len(HOT_MODULES)} hot modules ({len(built)} extension files); "
          "python -m sim.accelerate --clean goes back to pure Python")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
