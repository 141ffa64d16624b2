"""The tracking filter: fuses per-frame pose estimates with odometry into a continuous,
outlier-resistant ``map -> odom`` correction (ROS-free, numpy only).

State: the correction ``T_mo`` (pose of odom in map) with covariance ``P``. In ``two_d_mode`` the
state is planar (x, y, yaw; 3x3 ``P``), else the full 6-dof pose (6x6 ``P``); the error
convention of :mod:`pae_ros.tracking.lie` (translation in map, rotation about the map axes), the
order of ``geometry_msgs/PoseWithCovariance``.

Measurement: an estimate of the tracked frame in map ``T_mc`` (the camera, or the base when the
caller moved it there) at stamp ``s`` and the odometry of the same frame ``T_oc(s)`` at that
stamp (interpolated from a bounded history) give ``z = T_mc * T_oc(s)^-1``, a direct measurement of
``T_mo``, with the estimate's covariance moved by the lever arm (``lie.lever_jacobian``). A
delayed estimate therefore uses the odometry of its own stamp; the drift the odometry accumulated
since then is added to its covariance. An estimate older than the history is a counted drop.

Prediction: ``T_mo`` is constant while ``P`` grows with the odometry travelled
(:mod:`pae_ros.tracking.odometry_history`). Without odometry (``use_odometry=False``: a
``map -> camera`` output or no TF chain) the tracked frame's odometry is taken as the identity, so
the state is the tracked frame's pose in map itself, modelled as a random walk whose variance grows
by ``random_walk_trans_var_per_s`` m^2 and ``random_walk_rot_var_per_s`` rad^2 per axis and second:
no motion is predicted, the gate simply widens with the time since the last accepted estimate.

Gate: squared Mahalanobis distance of the residual against ``chi2.ppf(gate_probability, dof)``;
inside it a Huber weight (threshold ``sqrt(chi2.ppf(huber_probability, dof))``) inflates the
covariance of large residuals. ``method_inflation`` scales each method's covariance.

Start and relocalisation without a human: the filter starts from ``init_count`` mutually
consistent estimates (pairwise Mahalanobis inside the gate after odometry) taken at least
``init_min_spread_m`` apart (a robot standing still waits to move, or for ``/initialpose``);
when, among the last ``reloc_window`` estimates, at least ``reloc_count`` rejected ones agree with each other and
outnumber the accepted ones, it relocalises onto them. Each rejection in a streak multiplies the
state covariance used by the gate by ``reject_inflation``, capped at ``max_inflation``, and an
accepted estimate resets it: a run of outliers can widen the gate by at most that cap, so it cannot
widen it until the outliers get in. Only estimates of ``trusted_methods`` are used; the others
are counted as ``ignored`` (with geometric fixes as the only trusted method, an APR/PAE estimate,
whose wide covariance would pass the gate even when it is metres off, never moves the track).

A track whose tracked-frame position sigma grew past ``lost_sigma_m`` (state ``lost``: long without an accepted
estimate) takes no lone estimate: like a start, it waits for ``init_count`` consistent ones and
restarts from them (a relocalisation), so a wide gate cannot let a single gross estimate in.

Output: :meth:`TrackingFilter.output` (the filtered correction and the tracked frame's pose in map
at the newest odometry, each with covariance) and :meth:`TrackingFilter.publish` (the same with the
published correction moved at most ``max_step_m`` / ``max_step_rad`` per call towards the filtered
one, except right after a start, a relocalisation or a set pose: a counted jump).
"""
from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np

from .lie import (FULL_INDEX, PLANAR_INDEX, apply_error, chi2_ppf, flatten_planar, lever_jacobian,
                  pose_error, pose_from_pq, pose_inverse, pose_to_pq)
from .odometry_history import NoiseRates, OdometryHistory

METHODS = ("apr", "refined", "geometric")
#: the filter's own counters (``counts`` also holds ``<counter>.<reason>`` breakdowns)
COUNTERS = ("accepted", "rejected", "ignored", "dropped", "initialisations", "relocalisations", "jumps",
            "odometry_dropped", "odometry_resets")


class TrackState(str, enum.Enum):
    """``initialising``: no track yet; ``tracking``: estimates are being accepted;
    ``relocalising``: ``suspect_after`` or more estimates rejected in a row; ``lost``: the
    tracked frame's position sigma exceeds ``lost_sigma_m`` (it restarts from consistent
    estimates)."""

    INITIALISING = "initialising"
    TRACKING = "tracking"
    RELOCALISING = "relocalising"
    LOST = "lost"


@dataclass
class TrackingParams:
    """Filter settings. Units: metres, radians, seconds; variances per axis."""

    #: planar state (x, y, yaw) when True, full 6-dof otherwise
    two_d_mode: bool = True
    #: False: no odometry, the random-walk model of the tracked frame's pose in map
    use_odometry: bool = True
    #: how far back (s) odometry is kept; older estimates are dropped (``older_than_history``)
    odom_history_s: float = 30.0
    #: an estimate up to this much (s) newer than the newest odometry uses the newest odometry
    odom_tolerance_s: float = 0.1
    #: odometry random walk (see :mod:`pae_ros.tracking.odometry_history`); the defaults are
    #: slightly conservative for the drift model of :mod:`pae_ros.tracking.odometry_model` at
    #: ``scale=1`` (the Monte Carlo test in test_tracking.py checks the filter's sigma on it)
    trans_var_per_m: float = 0.001
    trans_var_per_rad: float = 5e-4
    trans_var_per_s: float = 1e-5
    rot_var_per_m: float = 3e-5
    rot_var_per_rad: float = 5e-5
    rot_var_per_s: float = 1e-7
    #: odometry moving faster than this between two samples (m/s, plus 0.1 m) is a reset or a jump
    #: of the odometry frame: the history is cleared and the track restarts (turns are not checked:
    #: recorded walks turn round within a frame)
    odom_max_speed: float = 3.0
    #: random walk without odometry (m^2/s and rad^2/s per axis)
    random_walk_trans_var_per_s: float = 0.25
    random_walk_rot_var_per_s: float = 0.01
    #: chi-square probability of the Mahalanobis gate
    gate_probability: float = 0.999
    #: chi-square probability of the Huber threshold inside the gate
    huber_probability: float = 0.95
    #: variance factor per estimate method (``apr`` | ``refined`` | ``geometric``)
    method_inflation: dict = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    #: methods whose estimates the filter uses (start, update, relocalise); the others are counted
    #: as ``ignored`` (e.g. ``("geometric",)`` where APR estimates can be metres off)
    trusted_methods: tuple = METHODS
    #: mutually consistent estimates needed to start
    init_count: int = 3
    #: estimates kept as start candidates
    init_window: int = 30
    #: a start group (no track, or lost) must hold two members whose odometry positions are at least
    #: this far apart (m): fixes from one viewpoint can agree on the same wrong place (aliasing)
    init_min_spread_m: float = 1.0
    #: agreeing rejected estimates needed to relocalise
    reloc_count: int = 5
    #: recent estimates looked at for a relocalisation
    reloc_window: int = 12
    #: variance factor per rejection in a streak, and its cap
    reject_inflation: float = 1.5
    max_inflation: float = 4.0
    #: consecutive rejections that turn the state to ``relocalising``
    suspect_after: int = 3
    #: position sigma (m) above which the state is ``lost``
    lost_sigma_m: float = 3.0
    #: largest step of the published correction per publish (m, rad)
    max_step_m: float = 0.2
    max_step_rad: float = 0.05

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or f.name in ("method_inflation", "trusted_methods"):
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"tracking parameter {f.name} must be a finite number >= 0, got {v!r}")
        for name in ("gate_probability", "huber_probability"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"tracking parameter {name} must be in (0, 1), got {v}")
        for name in ("init_count", "reloc_count"):
            if int(getattr(self, name)) < 2:
                raise ValueError(f"tracking parameter {name} must be >= 2, got {getattr(self, name)}")
        if self.init_window < self.init_count:
            raise ValueError("tracking parameter init_window must be >= init_count")
        if self.reloc_window < self.reloc_count:
            raise ValueError("tracking parameter reloc_window must be >= reloc_count")
        if self.reject_inflation < 1.0 or self.max_inflation < 1.0:
            raise ValueError("tracking parameters reject_inflation and max_inflation must be >= 1")
        for name in ("odom_history_s", "odom_max_speed"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"tracking parameter {name} must be > 0")
        bad = [m for m in self.trusted_methods if m not in METHODS]
        if bad or not self.trusted_methods:
            raise ValueError(f"tracking parameter trusted_methods must name some of {', '.join(METHODS)}, "
                             f"got {list(self.trusted_methods)}")
        self.trusted_methods = tuple(self.trusted_methods)
        for k, v in self.method_inflation.items():
            if k not in METHODS:
                raise ValueError(f"tracking parameter method_inflation has unknown method {k!r} "
                                 f"(known: {', '.join(METHODS)})")
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"tracking parameter method_inflation[{k!r}] must be > 0, got {v}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrackingParams":
        """Settings from a mapping; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown tracking parameter(s): {', '.join(bad)}")
        return cls(**d)


@dataclass
class TrackOutput:
    """The filter's answer at ``stamp`` (the newest odometry stamp).

    ``map_odom_*``: the filtered correction (position m, quaternion wxyz, covariance 6x6 over
    x, y, z, rot x, rot y, rot z about the map axes; in planar mode z, roll and pitch rows are 0).
    ``published_*``: the slew-limited correction (only from :meth:`TrackingFilter.publish`).
    ``pose_*``: the tracked frame in map, ``T_mo * T_oc``, and its covariance.
    ``None`` fields: no track yet."""

    stamp: float | None
    state: TrackState
    map_odom_position: np.ndarray | None
    map_odom_quaternion: np.ndarray | None
    map_odom_covariance: np.ndarray | None
    pose_position: np.ndarray | None
    pose_quaternion: np.ndarray | None
    pose_covariance: np.ndarray | None
    published_position: np.ndarray | None = None
    published_quaternion: np.ndarray | None = None
    jumped: bool = False
    last_mahalanobis: float | None = None
    counts: dict = field(default_factory=dict)


@dataclass
class _Candidate:
    """One usable estimate as a measurement of ``T_mo``: ``z``, its covariance ``C`` (selected
    dims, without drift), the accumulated odometry noise at its stamp, and its stamp."""

    stamp: float
    z: np.ndarray
    C: np.ndarray
    q_acc: np.ndarray
    method: str | None = None
    odom_position: np.ndarray | None = None


class TrackingFilter:
    """See the module docstring. Feed :meth:`add_odometry` and :meth:`add_estimate` in any
    interleaving (odometry itself in time order); read :meth:`output` / :meth:`publish`."""

    def __init__(self, params: TrackingParams | None = None):
        self.params = params or TrackingParams()
        p = self.params
        self.idx = PLANAR_INDEX if p.two_d_mode else FULL_INDEX
        self.dof = len(self.idx)
        self.gate = chi2_ppf(p.gate_probability, self.dof)
        self.huber_k = math.sqrt(chi2_ppf(p.huber_probability, self.dof))
        if p.use_odometry:
            rates = NoiseRates(p.trans_var_per_m, p.trans_var_per_rad, p.trans_var_per_s,
                               p.rot_var_per_m, p.rot_var_per_rad, p.rot_var_per_s)
        else:
            rates = NoiseRates(trans_var_per_s=p.random_walk_trans_var_per_s,
                               rot_var_per_s=p.random_walk_rot_var_per_s)
        self.history = OdometryHistory(rates, p.odom_history_s)
        self.enabled = True
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_mahalanobis: float | None = None
        self.last_start_members: list[tuple[float, str | None]] = []
        self._published: np.ndarray | None = None
        self._reset_track()

    # ------------------------------------------------------------------ hooks

    def _reset_track(self) -> None:
        self.T: np.ndarray | None = None
        self.P: np.ndarray | None = None
        self._q_mark: np.ndarray | None = None
        self._inflation = 1.0
        self._streak = 0
        self._init: deque[_Candidate] = deque(maxlen=self.params.init_window)
        self._recent: deque[tuple[bool, _Candidate | None]] = deque(maxlen=self.params.reloc_window)
        self._jump_pending = False

    def relocalize(self) -> None:
        """Forget the track: the filter starts again from consistent estimates (odometry kept)."""
        self._reset_track()

    def set_enabled(self, enabled: bool) -> None:
        """While disabled estimates are dropped (``dropped.disabled``); the track and output stay."""
        self.enabled = bool(enabled)

    def set_pose(self, stamp: float, position, quaternion, covariance) -> str:
        """Set the track from a pose of the tracked frame in map (e.g. ``/initialpose``) at ``stamp``
        with its 6x6 covariance. Returns ``"set"`` or ``"dropped:<reason>"`` (track unchanged)."""
        cand = self._candidate(stamp, position, quaternion, covariance, None)
        if isinstance(cand, str):
            return self._drop(cand)
        self._start([cand], "set_pose")
        return "set"

    # ------------------------------------------------------------------ inputs

    def add_odometry(self, stamp: float, position, quaternion) -> bool:
        """Odometry of the tracked frame: its pose in odom (position m, quaternion wxyz) at
        ``stamp`` (s). A stamp older than the newest or a non-finite pose is a counted drop
        (``odometry_dropped.<reason>``, False)."""
        if not self.params.use_odometry:
            raise ValueError("add_odometry called on a filter built with use_odometry=False")
        try:
            T = pose_from_pq(position, quaternion)
        except ValueError:
            T = np.full((4, 4), np.nan)
        if self._odometry_jumped(stamp, T):
            # the odometry frame moved under the robot (a driver restart, a new session): every
            # sample and the correction refer to the old frame
            self.history.clear()
            self._reset_track()
            self.counts["odometry_resets"] += 1
        reason = self.history.add(stamp, T)
        if reason is not None:
            self.counts["odometry_dropped"] += 1
            self._count(f"odometry_dropped.{reason}")
            return False
        return True

    def add_estimate(self, stamp: float, position, quaternion, covariance, method: str = "apr",
                     in_scene: bool = True) -> str:
        """One estimate of the tracked frame in map (position m, quaternion wxyz camera-to-world,
        covariance 6x6) at ``stamp``. Returns ``accepted``, ``rejected``, ``candidate`` (before
        the start), ``initialised``, ``relocalised``, ``ignored`` (a method not in
        ``trusted_methods``) or ``dropped:<reason>``."""
        if not self.enabled:
            return self._drop("disabled")
        if method not in METHODS:
            return self._drop("unknown_method")
        if not in_scene:
            return self._drop("out_of_scene")
        if method not in self.params.trusted_methods:
            self.counts["ignored"] += 1
            self._count(f"ignored.{method}")
            return "ignored"
        cand = self._candidate(stamp, position, quaternion, covariance, method)
        if isinstance(cand, str):
            return self._drop(cand)
        if self.T is None or self.state == TrackState.LOST:
            # no track, or one too uncertain for a lone estimate to be trusted: wait for a group
            lost = self.T is not None
            self._init.append(cand)
            group = self._consistent_group(list(self._init), self.params.init_count)
            if group is None or self._spread(group) < self.params.init_min_spread_m:
                return "candidate"
            self._start(group, "relocalisations" if lost else "initialisations")
            return "relocalised" if lost else "initialised"
        return self._update(cand)

    def _odometry_jumped(self, stamp, T: np.ndarray) -> bool:
        """A new sample further from the newest than ``odom_max_speed`` allows in the time between
        them (plus 0.1 m)."""
        if not len(self.history) or not np.all(np.isfinite(T)):
            return False
        t_last, T_last, _ = self.history.newest()
        dt = float(stamp) - t_last
        if not math.isfinite(dt) or dt < 0.0:
            return False
        return float(np.linalg.norm(T[:3, 3] - T_last[:3, 3])) > self.params.odom_max_speed * dt + 0.1

    # ------------------------------------------------------------------ outputs

    @property
    def state(self) -> TrackState:
        if self.T is None:
            return TrackState.INITIALISING
        self._predict()
        cov = self._pose_cov(self._newest_odom())
        pos = cov[:2, :2] if self.params.two_d_mode else cov[:3, :3]
        if math.sqrt(max(float(np.max(np.linalg.eigvalsh(pos))), 0.0)) > self.params.lost_sigma_m:
            return TrackState.LOST
        if self._streak >= self.params.suspect_after:
            return TrackState.RELOCALISING
        return TrackState.TRACKING

    def output(self) -> TrackOutput:
        """The filtered correction and the tracked frame's pose in map at the newest odometry."""
        state = self.state
        stamp = self.history.newest_stamp
        if self.T is None:
            return TrackOutput(stamp, state, None, None, None, None, None, None,
                               last_mahalanobis=self.last_mahalanobis, counts=dict(self.counts))
        cov6 = self._embed_cov(self.P)
        T_oc = self._newest_odom()
        T_mc = self.T @ T_oc
        pose_cov = self._pose_cov(T_oc)
        t_mo, q_mo = pose_to_pq(self.T)
        t_mc, q_mc = pose_to_pq(T_mc)
        return TrackOutput(stamp, state, t_mo, q_mo, cov6, t_mc, q_mc, pose_cov,
                           last_mahalanobis=self.last_mahalanobis, counts=dict(self.counts))

    def publish(self) -> TrackOutput:
        """:meth:`output` plus the published correction: it moves towards the filtered one by at
        most ``max_step_m`` and ``max_step_rad``, except after a start / relocalisation / set pose
        (a jump, counted in ``jumps``)."""
        out = self.output()
        if self.T is None:
            return out
        if self._published is None or self._jump_pending:
            if self._published is not None:
                self.counts["jumps"] += 1
            self._published = self.T.copy()
            self._jump_pending = False
            out.jumped = True
        else:
            d = pose_error(self.T, self._published)
            dt, dr = d[:3], d[3:]
            nt, nr = float(np.linalg.norm(dt)), float(np.linalg.norm(dr))
            if nt > self.params.max_step_m:
                dt = dt * (self.params.max_step_m / nt)
            if nr > self.params.max_step_rad:
                dr = dr * (self.params.max_step_rad / nr)
            self._published = apply_error(self._published, np.concatenate([dt, dr]))
        out.published_position, out.published_quaternion = pose_to_pq(self._published)
        out.counts = dict(self.counts)
        return out

    # ------------------------------------------------------------------ internals

    def _newest_odom(self) -> np.ndarray:
        return self.history.newest()[1] if len(self.history) else np.eye(4)

    def _pose_cov(self, T_oc: np.ndarray) -> np.ndarray:
        """6x6 covariance of the tracked frame in map, ``T_mo * T_oc``: the correction's error moved
        by the inverse lever Jacobian (a heading error of the correction swings the frame about the
        odom origin). In planar mode z, roll and pitch rows are 0."""
        J = lever_jacobian(-(self.T[:3, :3] @ T_oc[:3, 3]))
        cov = J @ self._embed_cov(self.P) @ J.T
        return self._embed_cov(self._sel(cov)) if self.params.two_d_mode else cov

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _drop(self, reason: str) -> str:
        self.counts["dropped"] += 1
        self._count(f"dropped.{reason}")
        return f"dropped:{reason}"

    def _sel(self, M6: np.ndarray) -> np.ndarray:
        return M6[np.ix_(self.idx, self.idx)]

    def _embed_cov(self, P: np.ndarray) -> np.ndarray:
        out = np.zeros((6, 6))
        out[np.ix_(self.idx, self.idx)] = P
        return out

    def _embed(self, delta: np.ndarray) -> np.ndarray:
        out = np.zeros(6)
        out[self.idx] = delta
        return out

    def _to_map(self, Q_odom: np.ndarray, R_mo: np.ndarray) -> np.ndarray:
        """An odom-frame 6x6 noise in the map frame, selected dims."""
        A = np.zeros((6, 6))
        A[:3, :3] = A[3:, 3:] = R_mo
        return self._sel(A @ Q_odom @ A.T)

    def _residual(self, z: np.ndarray, T_hat: np.ndarray) -> np.ndarray:
        return pose_error(z, T_hat)[self.idx]

    def _candidate(self, stamp, position, quaternion, covariance, method) -> _Candidate | str:
        """The estimate as a measurement of ``T_mo``, or the reason it cannot be one."""
        try:
            stamp = float(stamp)
            position = np.asarray(position, np.float64).reshape(3)
            quaternion = np.asarray(quaternion, np.float64).reshape(4)
            C = np.asarray(covariance, np.float64).reshape(6, 6)
        except (TypeError, ValueError):
            return "bad_shape"
        if not (math.isfinite(stamp) and np.all(np.isfinite(position)) and np.all(np.isfinite(quaternion))
                and np.linalg.norm(quaternion) > 1e-9):
            return "pose_not_finite"
        if not np.all(np.isfinite(C)):
            return "covariance_not_finite"
        C = 0.5 * (C + C.T)
        if method is not None:
            C = C * float(self.params.method_inflation.get(method, 1.0))
        if self.params.use_odometry:
            got = self.history.at(stamp, self.params.odom_tolerance_s)
        else:
            # no odometry: the identity at the estimate's stamp; the random walk grows with time
            if self.history.newest_stamp is None or stamp >= self.history.newest_stamp:
                self.history.add(stamp, np.eye(4))
            got = self.history.at(stamp)
        if isinstance(got, str):
            return got
        T_oc, q_acc = got
        T_mc = pose_from_pq(position, quaternion)
        z = T_mc @ pose_inverse(T_oc)
        J = lever_jacobian(z[:3, :3] @ T_oc[:3, 3])
        Cz = self._sel(J @ C @ J.T)
        try:
            ev = np.linalg.eigvalsh(Cz)
        except np.linalg.LinAlgError:
            return "covariance_not_positive"
        if not ev[0] > 1e-12 * max(1.0, float(ev[-1])):
            return "covariance_not_positive"
        if self.params.two_d_mode:
            z = flatten_planar(z)
        return _Candidate(stamp, z, Cz, q_acc, method, T_oc[:3, 3].copy())

    def _predict(self) -> None:
        """Grow ``P`` with the odometry noise accumulated since the last prediction."""
        if self.T is None or not len(self.history):
            return
        q_now = self.history.newest()[2]
        if self._q_mark is None:
            self._q_mark = q_now
            return
        dq = q_now - self._q_mark
        if np.any(dq != 0.0):
            self.P = self.P + self._to_map(dq, self.T[:3, :3])
            self._q_mark = q_now

    def _now_cov(self, c: _Candidate, R_mo: np.ndarray) -> np.ndarray:
        """A candidate's covariance as a measurement of the correction now (its drift since added)."""
        q_now = self.history.newest()[2] if len(self.history) else c.q_acc
        return c.C + self._to_map(q_now - c.q_acc, R_mo)

    def _consistent(self, a: _Candidate, b: _Candidate) -> bool:
        drift = b.q_acc - a.q_acc if b.stamp >= a.stamp else a.q_acc - b.q_acc
        S = a.C + b.C + self._to_map(drift, a.z[:3, :3])
        r = self._residual(b.z, a.z)
        return float(r @ np.linalg.solve(S, r)) <= self.gate

    def _consistent_group(self, cands: list[_Candidate], need: int) -> list[_Candidate] | None:
        """The newest candidate and others (newest first) that agree pairwise with every member,
        when there are at least ``need`` of them."""
        if len(cands) < need:
            return None
        group = [cands[-1]]
        for c in reversed(cands[:-1]):
            if all(self._consistent(c, g) for g in group):
                group.append(c)
        return group if len(group) >= need else None

    def _spread(self, group: list[_Candidate]) -> float:
        """Largest distance (m) between the group's odometry positions (inf without odometry)."""
        if not self.params.use_odometry:
            return math.inf
        xyz = np.array([c.odom_position for c in group])
        return float(np.max(np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)))

    def _fuse(self, group: list[_Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """Information-weighted mean of candidates (Gauss-Newton on the manifold) and its covariance."""
        x = group[0].z.copy()
        infos = [np.linalg.inv(self._now_cov(c, c.z[:3, :3])) for c in group]
        H = sum(infos)
        for _ in range(5):
            g = sum(W @ self._residual(c.z, x) for W, c in zip(infos, group))
            delta = np.linalg.solve(H, g)
            x = apply_error(x, self._embed(delta))
            if np.linalg.norm(delta) < 1e-10:
                break
        if self.params.two_d_mode:
            x = flatten_planar(x)
        P = np.linalg.inv(H)
        return x, 0.5 * (P + P.T)

    def _start(self, group: list[_Candidate], counter: str) -> None:
        T, P = self._fuse(group)
        self._reset_track()
        #: (stamp, method) of the estimates the last start or relocalisation was fused from
        self.last_start_members = [(c.stamp, c.method) for c in group]
        self.T, self.P = T, P
        self._q_mark = self.history.newest()[2] if len(self.history) else None
        self._jump_pending = True
        self.counts[counter] = self.counts.get(counter, 0) + 1

    def _update(self, c: _Candidate) -> str:
        self._predict()
        p = self.params
        R = self._now_cov(c, self.T[:3, :3])
        P_eff = self.P * self._inflation
        r = self._residual(c.z, self.T)
        S = P_eff + R
        d2 = float(r @ np.linalg.solve(S, r))
        self.last_mahalanobis = math.sqrt(max(d2, 0.0))
        if d2 <= self.gate:
            d = self.last_mahalanobis
            w = 1.0 if d <= self.huber_k else self.huber_k / d
            Rw = R / w
            K = P_eff @ np.linalg.inv(P_eff + Rw)
            self.T = apply_error(self.T, self._embed(K @ r))
            if p.two_d_mode:
                self.T = flatten_planar(self.T)
            IK = np.eye(self.dof) - K
            P = IK @ P_eff @ IK.T + K @ Rw @ K.T
            self.P = 0.5 * (P + P.T)
            self._inflation = 1.0
            self._streak = 0
            self._recent.append((True, None))
            self.counts["accepted"] += 1
            return "accepted"
        self.counts["rejected"] += 1
        self._streak += 1
        self._inflation = min(self._inflation * p.reject_inflation, p.max_inflation)
        self._recent.append((False, c))
        rejected = [x for ok, x in self._recent if not ok]
        accepted = sum(1 for ok, _ in self._recent if ok)
        group = self._consistent_group(rejected, p.reloc_count)
        if group is not None and len(group) > accepted:
            self._start(group, "relocalisations")
            return "relocalised"
        return "rejected"
