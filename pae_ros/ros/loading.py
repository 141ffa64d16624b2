"""Start-up loading of the node: the bundle and optional geometric map into a warmed-up
:class:`pae_ros.pipeline.Localizer`, with one clear :class:`StartupError` for every way it fails.

No rclpy here. The ML stack (torch, via :mod:`pae_ros.pipeline`) is imported inside
:func:`load_localizer`, so a node that fails on its parameters exits at once without importing it.
"""
from __future__ import annotations

import time
from pathlib import Path

#: exit codes of the ``localizer`` executable
EXIT_OK, EXIT_STARTUP, EXIT_PARAMS = 0, 1, 2


class StartupError(Exception):
    """The node cannot start (bundle missing / corrupt, device unavailable, k above the table)."""

    def __init__(self, text: str, code: int = EXIT_STARTUP):
        super().__init__(text)
        self.code = code


def check_k(k: int, table_size: int) -> None:
    """Parameter ``k`` (-1 = the bundle's) against the bundle's pose table of ``table_size`` poses."""
    if k != -1 and k > table_size:
        raise StartupError(f"cannot start: parameter 'k' = {k} is larger than the bundle's pose table "
                           f"({table_size} poses): use k <= {table_size} or -1 for the bundle's value", EXIT_PARAMS)


def geometric_source(params: dict) -> str:
    """Parameter ``geometric``: ``auto`` | ``off`` | an existing map file (user-expanded path)."""
    value = params["geometric"]
    if value in ("auto", "off"):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise StartupError(f"cannot start: parameter 'geometric' = {value!r}: no map file there "
                           "(build one with `pae train --stage map`, or use auto / off)")
    return str(path)


def load_localizer(params: dict):
    """(a :class:`pae_ros.pipeline.Localizer`, warm-up s per frame, load s) for the node's
    parameters. Raises :class:`StartupError`."""
    bundle = Path(params["bundle"]).expanduser()
    if not bundle.is_file():
        raise StartupError(f"cannot start: bundle not found: '{bundle}' (parameter 'bundle')")
    geometric = geometric_source(params)
    t0 = time.monotonic()
    # imported here: torch and the geometric stage load only once the parameters are good
    from pae_ros.backends import BackendError
    from pae_ros.bundle import BundleError, load_bundle
    from pae_ros.geometric.sparse_map import MapError
    from pae_ros.pipeline import Localizer

    k, steps = params["k"], params["steps"]
    try:
        loaded = load_bundle(str(bundle))
        check_k(k, len(loaded.table_positions))  # before the Localizer warns about calibration settings
        localizer = Localizer(
            loaded, device=params["device"], refine=None if params["refine"] == "auto" else params["refine"],
            k=None if k == -1 else k, steps=None if steps == -1 else steps,
            backend=params["backend"], precision=params["precision"], threads=params["threads"] or None,
            geometric=geometric)
    except StartupError:
        raise
    except MapError as e:
        raise StartupError(f"cannot start: parameter 'geometric' = {params['geometric']!r}: {e}") from None
    except BackendError as e:
        raise StartupError(f"cannot start: {e}") from None
    except BundleError as e:
        raise StartupError(f"cannot start: bad bundle: {e}") from None
    except Exception as e:  # device unavailable, bad k/steps, a bundle this code cannot build
        raise StartupError(f"cannot start with bundle '{bundle}' on device '{params['device']}': "
                           f"{type(e).__name__}: {e}") from None
    try:
        warm_s = localizer.warmup()
    except Exception as e:
        raise StartupError(f"cannot start: warm-up failed on device '{params['device']}': "
                           f"{type(e).__name__}: {e}") from None
    return localizer, warm_s, time.monotonic() - t0
