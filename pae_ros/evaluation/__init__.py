"""Offline evaluation of a bundle (``pae eval``; also ``pae demo``, ``pae bag eval`` and the benches).

- :mod:`.report`: :func:`~.report.evaluate`, every row per scene with coverage strata, bootstrap
  pairs and the published pose's sections;
- :mod:`.baselines`: the row registry (one ``@row`` function per baseline);
- :mod:`.sections`: the geometric stage, calibration, out-of-scene gate and reconstruction sections;
- :mod:`.text`: the printed tables and summary lines;
- :mod:`.plots`: error CDFs, error vs coverage, the reconstruction grid, the strict JSON;
- :mod:`.ood_images`: out-of-scene images for the gating report;
- :mod:`.eval_cmd`: the ``pae eval`` command.

Imports no rclpy.
"""
