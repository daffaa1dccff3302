r"""Shape invariants of ShapesEval: complex cumulants of an object's coverage, unchanged by rotation, scale,
position and an isotropic blur.

Write a pixel's offset from the object's centroid as :math:`z = dx + i\,dy` and let the object's coverage (minus
the background level) weight it. The complex moments :math:`c_{pq} = \sum w z^p \bar z^q / m` (:math:`m = \sum
w`, the mass) turn by :math:`e^{i(p-q)\theta}` when the object turns by :math:`\theta`, so their moduli do not
depend on the rotation. Their cumulants :math:`\kappa_{n0}` and :math:`\kappa_{22}` are also unchanged by an
isotropic Gaussian blur (a Gaussian's cumulants of order three and more vanish, and so do its
:math:`\kappa_{20}`), and the mass is unchanged by any blur, so dividing by the matching power of the mass makes
them scale free without making them blur dependent:

=========  ==========================================  =========================================================
name       invariant                                   reads
=========  ==========================================  =========================================================
``a2``     :math:`|\kappa_{20}| / m`                   elongation (0 for a disc, a square or a regular polygon)
``a3``     :math:`|\kappa_{30}| / m^{3/2}`             three-fold asymmetry (large for triangles)
``a4``     :math:`|\kappa_{40}| / m^2`                 four-fold symmetry (large for squares)
``a5``     :math:`|\kappa_{50}| / m^{5/2}`             five-fold symmetry (pentagons, stars)
``a6``     :math:`|\kappa_{60}| / m^3`                 six-fold symmetry (hexagons; triangles too)
``r4``     :math:`-\kappa_{22} / m^2`                  radial compactness (1/(6 pi^2) for a disc; rings, stars
                                                       and crosses have more)
=========  ==========================================  =========================================================

The values are multiplied by 1000 (:data:`SCALE`), so that the classes' regions read as plain numbers.
"""

from __future__ import annotations

import functools

import numpy as np

SCALE = 1000.0
NAMES: tuple[str, ...] = ("a2", "a3", "a4", "a5", "a6", "r4")


def invariants(ids: np.ndarray, weight: np.ndarray, dx: np.ndarray, dy: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The invariants of ``n + 1`` objects (entry 0 unused) from their weighted pixels.

    Args:
        ids: Object id of each pixel, shape ``(P,)``, in ``0 .. n``.
        weight: Coverage minus background of each pixel, shape ``(P,)``.
        dx: Offset of each pixel from its object's weighted centroid, x, shape ``(P,)``.
        dy: The same along y (downwards), shape ``(P,)``.
        n: Number of objects.

    Returns:
        ``{name: (n + 1,)}`` for every name in :data:`NAMES`, times :data:`SCALE`.
    """
    mass = np.maximum(np.bincount(ids, weights=weight, minlength=n + 1), 1e-6)
    z = dx + 1j * dy

    def moment(p: int, q: int) -> np.ndarray:
        v = weight * z**p * np.conj(z) ** q
        re = np.bincount(ids, weights=v.real, minlength=n + 1)
        im = np.bincount(ids, weights=v.imag, minlength=n + 1)
        return (re + 1j * im) / mass

    c20, c30, c40, c50, c60 = (moment(p, 0) for p in range(2, 7))
    c11, c22 = moment(1, 1).real, moment(2, 2).real
    k40 = c40 - 3 * c20**2
    k50 = c50 - 10 * c30 * c20
    k60 = c60 - 15 * c40 * c20 - 10 * c30**2 + 30 * c20**3
    k22 = c22 - 2 * c11**2 - np.abs(c20) ** 2
    out = {
        "a2": np.abs(c20) / mass,
        "a3": np.abs(c30) / mass**1.5,
        "a4": np.abs(k40) / mass**2,
        "a5": np.abs(k50) / mass**2.5,
        "a6": np.abs(k60) / mass**3,
        "r4": -k22 / mass**2,
    }
    return {k: v * SCALE for k, v in out.items()}


# A shape's invariants, drawn exactly (a 384 px raster), are its class's *template*: one for the circle, one for the
# square, and a grid over every triangle whose angles are all at least MIN_ANGLE degrees (GRID_STEP apart). An
# object belongs to a class when some template of it is within TOLERANCE of each of its invariants: ``abs +
# rel * template``. The tolerances absorb what 8-18 px objects, a blur up to sigma 1 px and pixel noise up to std
# 0.1 move the invariants (docs/shapesworld.md has the figures).
MIN_ANGLE = 25.0
GRID_STEP = 2.5
TOLERANCE: dict[str, dict[str, tuple[float, float]]] = {  # class: {name: (abs, rel)}, from the calibration
    "circle": {
        "a2": (25.3, 0.0),
        "a3": (2.9, 0.0),
        "a4": (1.6, 0.0),
        "a5": (0.9, 0.0),
        "a6": (0.8, 0.0),
        "r4": (1.7, 0.0),
    },
    "square": {
        "a2": (26.1, 0.0),
        "a3": (4.7, 0.0),
        "a4": (4.8, 0.0),
        "a5": (1.2, 0.0),
        "a6": (3.9, 0.0),
        "r4": (1.5, 0.0),
    },
    "triangle": {
        "a2": (15.9, 0.1),
        "a3": (9.5, 0.1),
        "a4": (2.7, 0.1),
        "a5": (5.2, 0.1),
        "a6": (8.8, 0.1),
        "r4": (3.8, 0.05),
    },
}
CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
_RASTER = 384


def _raster_invariants(inside: np.ndarray) -> np.ndarray:
    """The invariants ``(6,)`` of a boolean shape drawn on a fine raster (its pixels' centres weigh 1)."""
    yy, xx = np.nonzero(inside)
    x, y = xx + 0.5, yy + 0.5
    ids = np.ones(len(x), dtype=np.int64)
    f = invariants(ids, np.ones(len(x)), x - x.mean(), y - y.mean(), 1)
    return np.array([f[name][1] for name in NAMES])


def _triangle(angles: tuple[float, float], grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A boolean raster of the triangle with two of its angles ``angles`` (degrees), scaled to fit."""
    a, b = np.radians(angles)
    # vertices (0, 0), (1, 0) and the apex where the sides at angles a and b meet
    apex_x = np.tan(b) / (np.tan(a) + np.tan(b))
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [apex_x, apex_x * np.tan(a)]])
    pts = (pts - pts.mean(0)) / np.abs(pts - pts.mean(0)).max() * (_RASTER * 0.45) + _RASTER / 2
    x, y = grid
    inside = np.ones(x.shape, dtype=bool)
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
    return inside


@functools.cache
def templates() -> dict[str, np.ndarray]:
    """``{class: (K, 6)}``: the invariants of the exact shapes of each class, in :data:`NAMES` order."""
    c = np.arange(_RASTER) + 0.5
    x, y = np.meshgrid(c, c)
    r = _RASTER * 0.45
    dx, dy = x - _RASTER / 2, y - _RASTER / 2
    triangles = []
    for a in np.arange(MIN_ANGLE, 180 - 2 * MIN_ANGLE + 1e-9, GRID_STEP):
        for b in np.arange(MIN_ANGLE, a + 1e-9, GRID_STEP):
            if 180 - a - b >= MIN_ANGLE - 1e-9 and 180 - a - b <= b + 1e-9:  # a >= b >= the third angle
                triangles.append(_raster_invariants(_triangle((a, b), (x, y))))
    return {
        "circle": _raster_invariants(dx**2 + dy**2 <= r**2)[None],
        "square": _raster_invariants((np.abs(dx) <= r / 2**0.5) & (np.abs(dy) <= r / 2**0.5))[None],
        "triangle": np.stack(triangles),
    }


def classify(f: dict[str, np.ndarray]) -> np.ndarray:
    """Index into ``("circle", "square", "triangle", "unknown")`` of each object: the class with a template
    within :data:`TOLERANCE` of all its invariants (the nearest such class if several), else unknown (3).

    Args:
        f: ``{name: (M,)}`` for every name in :data:`NAMES`.
    """
    values = np.stack([f[name] for name in NAMES], axis=-1)  # (M, 6)
    best = np.full(values.shape[0], np.inf)
    shape = np.full(values.shape[0], len(CLASSES))
    for index, name in enumerate(CLASSES):
        abs_tol = np.array([TOLERANCE[name][n][0] for n in NAMES])
        rel_tol = np.array([TOLERANCE[name][n][1] for n in NAMES])
        t = templates()[name]  # (K, 6)
        gap = np.abs(values[:, None, :] - t[None]) / (abs_tol + rel_tol * np.abs(t))[None]  # (M, K, 6)
        dist = gap.max(-1).min(-1)  # the nearest template, by its worst invariant
        win = (dist <= 1.0) & (dist < best)
        shape, best = np.where(win, index, shape), np.where(win, dist, best)
    return shape
