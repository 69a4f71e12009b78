"""Procedural triangle meshes (numpy) for the shapes Mitsuba has no primitive for.

Every builder returns ``(vertices (n,3) float32, normals (n,3) float32, faces (m,3) uint32)`` in
the object's local frame: centred on the origin, +z up, sized by ``r`` (the shape's nominal
half-extent, CLEVR's "size" radius) so that the object rests on the ground when its centre sits at
``z = half_height(shape, r)``.  Smooth surfaces carry per-vertex normals; sharp rims (cylinder and
cone caps) duplicate their vertices so each side keeps its own normal.  Triangle winding is made to
agree with the normals, because Mitsuba's BSDFs are one-sided.

Shapes (all closed surfaces):

* ``cylinder``  capped cylinder, radius r, height 2r (CLEVR's cylinder).
* ``cone``      capped cone, base radius r, height 2r.
* ``capsule``   upright capsule, radius 0.55r, total height 2r.
* ``torus``     lying flat, ring radius 0.68r, tube radius 0.32r.
* ``twisted``   square prism, side 1.5r, height 2r, twisted 90 degrees from bottom to top.
* ``duck``      a duck-like composite in one mesh: ellipsoid body, spherical head, conical beak.
"""

from __future__ import annotations

import numpy as np

MESH_SHAPES = ("cylinder", "cone", "capsule", "torus", "twisted", "duck")

Mesh = tuple[np.ndarray, np.ndarray, np.ndarray]


def _revolve(profile_segments: list[np.ndarray], segments: int = 48) -> Mesh:
    """Surface of revolution about +z.  Each segment is a smooth (k, 2) polyline of
    (radius, z) points; segments meet at sharp creases, so each gets its own vertices."""
    angles = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    cos, sin = np.cos(angles), np.sin(angles)
    verts, norms, faces = [], [], []
    offset = 0
    for profile in profile_segments:
        profile = np.asarray(profile, dtype=np.float64)
        k = len(profile)
        tangent = np.gradient(profile, axis=0)
        # Outward normal in the (radius, z) plane for a profile walked bottom -> top.
        n2 = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        n2 /= np.maximum(np.linalg.norm(n2, axis=1, keepdims=True), 1e-12)
        rho, z = profile[:, 0], profile[:, 1]
        v = np.stack([rho[:, None] * cos, rho[:, None] * sin, np.repeat(z[:, None], segments, 1)], -1)
        n = np.stack([n2[:, 0:1] * cos, n2[:, 0:1] * sin, np.repeat(n2[:, 1:2], segments, 1)], -1)
        verts.append(v.reshape(-1, 3))
        norms.append(n.reshape(-1, 3))
        i = np.arange(k - 1)[:, None]
        j = np.arange(segments)[None, :]
        a = offset + i * segments + j
        b = offset + i * segments + (j + 1) % segments
        c = a + segments
        d = b + segments
        faces.append(np.stack([a, b, d], -1).reshape(-1, 3))
        faces.append(np.stack([a, d, c], -1).reshape(-1, 3))
        offset += k * segments
    return _finish(np.concatenate(verts), np.concatenate(norms), np.concatenate(faces))


def _finish(vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray) -> Mesh:
    """Drop degenerate triangles and orient the rest to agree with the vertex normals."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    keep = area2 > 1e-12 * max(1.0, float(np.abs(vertices).max()) ** 2)
    faces, cross = faces[keep], cross[keep]
    flip = np.einsum("ij,ij->i", cross, normals[faces].sum(1)) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return vertices.astype(np.float32), normals.astype(np.float32), faces.astype(np.uint32)


def _line(p0, p1, k: int = 2) -> np.ndarray:
    return np.linspace(np.asarray(p0, float), np.asarray(p1, float), k)


def _arc(radius: float, z0: float, a0: float, a1: float, k: int = 16) -> np.ndarray:
    """Quarter/half circle in the (radius, z) plane, angle measured from +z axis downwards."""
    t = np.linspace(a0, a1, k)
    return np.stack([radius * np.sin(t), z0 + radius * np.cos(t)], 1)


def cylinder(r: float) -> Mesh:
    h = r
    return _revolve([_line((0, -h), (r, -h)), _line((r, -h), (r, h), 2), _line((r, h), (0, h))])


def cone(r: float) -> Mesh:
    h = r
    return _revolve([_line((0, -h), (r, -h)), _line((r, -h), (0, h), 16)])


def capsule(r: float) -> Mesh:
    radius = 0.55 * r
    straight = r - radius
    # One smooth profile: bottom hemisphere, side, top hemisphere (walked bottom -> top).
    bottom = _arc(radius, -straight, np.pi, np.pi / 2, 12)
    top = _arc(radius, straight, np.pi / 2, 0.0, 12)
    return _revolve([np.concatenate([bottom, top])])


def ellipsoid(radii, center=(0.0, 0.0, 0.0), rings: int = 16, segments: int = 32) -> Mesh:
    """Unit sphere scaled by ``radii`` (normals transformed by the inverse scale)."""
    v, n, f = _revolve([_arc(1.0, 0.0, np.pi, 0.0, rings)], segments)
    radii = np.asarray(radii, dtype=np.float64)
    v = v * radii + np.asarray(center)
    n = n / radii
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return v.astype(np.float32), n.astype(np.float32), f


def torus(r: float, rings: int = 48, tube_segments: int = 24) -> Mesh:
    ring_radius, tube_radius = 0.68 * r, 0.32 * r
    u = np.linspace(0, 2 * np.pi, rings, endpoint=False)[:, None]
    w = np.linspace(0, 2 * np.pi, tube_segments, endpoint=False)[None, :]
    n = np.stack([np.cos(w) * np.cos(u), np.cos(w) * np.sin(u), np.sin(w) + 0 * u], -1)
    centre = np.stack([ring_radius * np.cos(u), ring_radius * np.sin(u), 0 * u], -1)
    v = centre + tube_radius * n
    i = np.arange(rings)[:, None]
    j = np.arange(tube_segments)[None, :]
    a = i * tube_segments + j
    b = i * tube_segments + (j + 1) % tube_segments
    c = ((i + 1) % rings) * tube_segments + j
    d = ((i + 1) % rings) * tube_segments + (j + 1) % tube_segments
    faces = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    return _finish(v.reshape(-1, 3), n.reshape(-1, 3), faces)


def twisted_prism(r: float, layers: int = 24, twist: float = np.pi / 2) -> Mesh:
    """Square prism twisted about +z; flat shaded (each face its own vertices)."""
    half = 0.75 * r
    corners = np.array([[half, half], [-half, half], [-half, -half], [half, -half]])
    z = np.linspace(-r, r, layers + 1)
    angle = (z + r) / (2 * r) * twist
    rings = []
    for zi, ai in zip(z, angle):
        c, s = np.cos(ai), np.sin(ai)
        xy = corners @ np.array([[c, s], [-s, c]])
        rings.append(np.column_stack([xy, np.full(4, zi)]))
    rings = np.asarray(rings)  # (layers+1, 4, 3)
    tris = []
    for k in range(layers):
        for e in range(4):
            p00, p01 = rings[k, e], rings[k, (e + 1) % 4]
            p10, p11 = rings[k + 1, e], rings[k + 1, (e + 1) % 4]
            tris += [(p00, p01, p11), (p00, p11, p10)]
    tris += [(rings[0, 0], rings[0, 2], rings[0, 1]), (rings[0, 0], rings[0, 3], rings[0, 2])]
    tris += [(rings[-1, 0], rings[-1, 1], rings[-1, 2]), (rings[-1, 0], rings[-1, 2], rings[-1, 3])]
    tris = np.asarray(tris)  # (m, 3, 3)
    face_n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    # Orient outwards: away from the prism's axis (side faces) or up/down (caps).
    centroid = tris.mean(1)
    outward = centroid.copy()
    outward[:, 2] = np.where(np.abs(centroid[:, 2]) > r - 1e-9, centroid[:, 2], 0.0)
    flip = np.einsum("ij,ij->i", face_n, outward) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    face_n[flip] *= -1
    face_n /= np.linalg.norm(face_n, axis=1, keepdims=True)
    vertices = tris.reshape(-1, 3)
    normals = np.repeat(face_n, 3, axis=0)
    faces = np.arange(len(vertices)).reshape(-1, 3)
    return vertices.astype(np.float32), normals.astype(np.float32), faces.astype(np.uint32)


def duck(r: float) -> Mesh:
    """Body along +x, head above its front, beak pointing further +x."""
    parts = [
        ellipsoid((1.0 * r, 0.7 * r, 0.55 * r), (-0.1 * r, 0.0, -0.45 * r)),
        ellipsoid((0.42 * r,) * 3, (0.45 * r, 0.0, 0.45 * r)),
    ]
    bv, bn, bf = cone(0.16 * r)
    # Cone axis +z -> +x: rotate about y by +90 degrees, then move to the head's front.
    rot = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=np.float64)
    parts.append(((bv @ rot.T + np.array([0.95 * r, 0.0, 0.42 * r])).astype(np.float32),
                  (bn @ rot.T).astype(np.float32), bf))
    verts, norms, faces, offset = [], [], [], 0
    for v, n, f in parts:
        verts.append(v)
        norms.append(n)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(norms), np.concatenate(faces).astype(np.uint32)


def build(shape: str, r: float) -> Mesh:
    builders = {"cylinder": cylinder, "cone": cone, "capsule": capsule, "torus": torus,
                "twisted": twisted_prism, "duck": duck}
    if shape not in builders:
        raise ValueError(f"no mesh builder for {shape!r}; one of {sorted(builders)}")
    return builders[shape](r)


def half_height(shape: str, r: float) -> float:
    """Distance from the object's centre down to the ground it rests on."""
    return {"torus": 0.32 * r, "duck": 1.0 * r}.get(shape, r)
