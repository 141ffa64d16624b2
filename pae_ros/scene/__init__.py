"""The built-in scenes rendered with pybullet's TinyRenderer (``pae scene render``): the demo
``courtyard`` (default; ``assets.py``, ``walks.py``) and the generalization scene ``plaza``
(``plaza.py``, ``plaza_walks.py``). Heavy modules (pybullet, OpenCV) load on first use.

Public API: :func:`render_scene` (render a 7Scenes / Cambridge dataset, cached),
:class:`SceneRenderer` (render single poses), :func:`intrinsics_for`, :func:`make_walks`,
:func:`build_assets`.
"""
from __future__ import annotations

__all__ = ["render_scene", "SceneRenderer", "intrinsics_for", "make_walks", "build_assets", "read_manifest"]


def __getattr__(name: str):
    if name in ("render_scene", "SceneRenderer", "intrinsics_for", "read_manifest"):
        from . import render

        return getattr(render, name)
    if name == "make_walks":
        from .walks import make_walks

        return make_walks
    if name == "build_assets":
        from .assets import build_assets

        return build_assets
    raise AttributeError(name)
