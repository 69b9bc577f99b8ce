"""Baton's simulation floor: catalogs, performance model, workloads, cluster simulator."""


def _warn_if_stale() -> None:
    """Warn when a compiled hot module (``python -m sim.accelerate``) is older than its source.

    Python imports the extension instead of the edited ``.py``, so an edit would silently not
    run. Costs a directory listing at import.
    """
    import os
    import warnings

    here = os.path.dirname(__file__)
    for sub in ("engine", "instance"):
        folder = os.path.join(here, sub)
        for name in os.listdir(folder):
            if not name.endswith(".so"):
                continue
            src = os.path.join(folder, name.split(".", 1)[0] + ".py")
            if os.path.exists(src) and (os.path.getmtime(src)
                                        > os.path.getmtime(os.path.join(folder, name))):
                warnings.warn(f"sim/{sub}/{os.path.basename(src)} is newer than its compiled "
                              "extension, which Python imports instead: rebuild with python -m "
                              "sim.accelerate (or --clean for pure Python)", stacklevel=2)


_warn_if_stale()
