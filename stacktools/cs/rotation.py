"""Particle orientations: CryoSPARC rotation vectors and RELION Euler angles.

CryoSPARC stores a 3D pose as a rotation vector (axis × angle, radians);
RELION as ZYZ Euler angles (rot, tilt, psi) in degrees. The conversion follows
pyem's ``csparc2star``, the tool the community uses for it: the rotation vector
is turned into a matrix with the transposed Rodrigues formula and that matrix is
decomposed with RELION's own Euler convention. Everything is vectorised over
rows: arrays of shape ``(n, 3)`` and ``(n, 3, 3)``.
"""

from __future__ import annotations

import numpy as np

_EPS = np.finfo(np.float64).eps


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices, ``(n, 3, 3)``, of CryoSPARC rotation vectors ``(n, 3)``.

    The matrix is the transpose of the usual Rodrigues rotation, as pyem builds
    it, so that it is the RELION matrix of the same orientation.
    """
    e = np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)
    theta = np.linalg.norm(e, axis=1)
    safe = np.where(theta < 1e-16, 1.0, theta)
    w = e / safe[:, None]
    k = np.zeros((len(e), 3, 3))
    k[:, 0, 1], k[:, 0, 2] = w[:, 2], -w[:, 1]
    k[:, 1, 0], k[:, 1, 2] = -w[:, 2], w[:, 0]
    k[:, 2, 0], k[:, 2, 1] = w[:, 1], -w[:, 0]
    s = np.sin(theta)[:, None, None]
    c = (1 - np.cos(theta))[:, None, None]
    r = np.eye(3) + s * k + c * (k @ k)
    r[theta < 1e-16] = np.eye(3)
    return r


def matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_matrix`: rotation vectors ``(n, 3)``, angle ≤ π."""
    r = np.asarray(r, dtype=np.float64).reshape(-1, 3, 3)
    # r is the transposed (passive) matrix; work with the usual active one.
    m = np.transpose(r, (0, 2, 1))
    q = _matrix_to_quaternion(m)
    q = np.where(q[:, :1] < 0, -q, q)
    v = q[:, 1:]
    n = np.linalg.norm(v, axis=1)
    angle = 2 * np.arctan2(n, q[:, 0])
    scale = np.where(n > 1e-12, angle / np.where(n > 1e-12, n, 1.0), 2.0 / np.maximum(q[:, 0], 1e-12))
    return v * scale[:, None]


def _matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) of active rotation matrices (Shepperd's method)."""
    tr = np.trace(m, axis1=1, axis2=2)
    d = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    best = np.argmax(d, axis=1)
    q = np.empty((len(m), 4))
    for b in range(4):
        sel = best == b
        if not sel.any():
            continue
        s = m[sel]
        if b == 0:
            t = np.sqrt(1 + tr[sel]) * 2
            q[sel] = np.stack([t / 4, (s[:, 2, 1] - s[:, 1, 2]) / t,
                               (s[:, 0, 2] - s[:, 2, 0]) / t, (s[:, 1, 0] - s[:, 0, 1]) / t], axis=1)
        elif b == 1:
            t = np.sqrt(1 + s[:, 0, 0] - s[:, 1, 1] - s[:, 2, 2]) * 2
            q[sel] = np.stack([(s[:, 2, 1] - s[:, 1, 2]) / t, t / 4,
                               (s[:, 0, 1] + s[:, 1, 0]) / t, (s[:, 0, 2] + s[:, 2, 0]) / t], axis=1)
        elif b == 2:
            t = np.sqrt(1 + s[:, 1, 1] - s[:, 0, 0] - s[:, 2, 2]) * 2
            q[sel] = np.stack([(s[:, 0, 2] - s[:, 2, 0]) / t, (s[:, 0, 1] + s[:, 1, 0]) / t,
                               t / 4, (s[:, 1, 2] + s[:, 2, 1]) / t], axis=1)
        else:
            t = np.sqrt(1 + s[:, 2, 2] - s[:, 0, 0] - s[:, 1, 1]) * 2
            q[sel] = np.stack([(s[:, 1, 0] - s[:, 0, 1]) / t, (s[:, 0, 2] + s[:, 2, 0]) / t,
                               (s[:, 1, 2] + s[:, 2, 1]) / t, t / 4], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def euler_to_matrix(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """RELION's rotation matrices ``(n, 3, 3)`` of ZYZ Euler angles in radians."""
    ca, cb, cg = np.cos(rot), np.cos(tilt), np.cos(psi)
    sa, sb, sg = np.sin(rot), np.sin(tilt), np.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    r = np.empty((np.size(rot), 3, 3))
    r[:, 0, 0], r[:, 0, 1], r[:, 0, 2] = cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb
    r[:, 1, 0], r[:, 1, 1], r[:, 1, 2] = -sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb
    r[:, 2, 0], r[:, 2, 1], r[:, 2, 2] = sc, ss, cb
    return r


def matrix_to_euler(r: np.ndarray) -> np.ndarray:
    """ZYZ Euler angles (rot, tilt, psi) in radians, ``(n, 3)``, of RELION matrices.

    RELION's decomposition: tilt in [0, π]; when tilt is 0 or π, rot is 0 and
    psi carries the whole in-plane angle.
    """
    r = np.asarray(r, dtype=np.float64).reshape(-1, 3, 3)
    abs_sb = np.hypot(r[:, 0, 2], r[:, 1, 2])
    general = abs_sb > 16 * _EPS
    rot = np.where(general, np.arctan2(r[:, 2, 1], r[:, 2, 0]), 0.0)
    psi = np.where(general, np.arctan2(r[:, 1, 2], -r[:, 0, 2]),
                   np.where(r[:, 2, 2] > 0, np.arctan2(-r[:, 1, 0], r[:, 0, 0]),
                            np.arctan2(r[:, 1, 0], -r[:, 0, 0])))
    tilt = np.where(general, np.arctan2(abs_sb, r[:, 2, 2]), np.where(r[:, 2, 2] > 0, 0.0, np.pi))
    return np.stack([rot, tilt, psi], axis=1)


def rotvec_to_euler_deg(rotvec: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) in degrees, ``(n, 3)``, of CryoSPARC rotation vectors."""
    return np.rad2deg(matrix_to_euler(rotvec_to_matrix(rotvec)))


def euler_deg_to_rotvec(angles_deg: np.ndarray) -> np.ndarray:
    """CryoSPARC rotation vectors ``(n, 3)`` of RELION (rot, tilt, psi) in degrees."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3))
    return matrix_to_rotvec(euler_to_matrix(a[:, 0], a[:, 1], a[:, 2]))
