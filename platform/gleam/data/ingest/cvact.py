"""CVACT (Liu & Li, CVPR 2019): Canberra street panoramas and aerial tiles.

Layout::

    <root>/ACT_data.mat                  panoIds, utm, trainSet.trainInd, valSet.valInd (1-based)
    <root>/ANU_data_small/streetview/<id>_grdView.jpg
    <root>/ANU_data_small/satview_polish/<id>_satView_polish.jpg

``ACT_data.mat`` (MATLAB v5, read with scipy) holds the panorama ids, their UTM coordinates
(zone 55 south) and the 1-based indices of the training and validation sets; some copies name
the evaluation set ``valSetAll``.  The validation set (CVACT_val) is written to split ``test`` by
default, as papers evaluate on it.  UTM is converted to WGS84 latitude/longitude with the
Krüger series below (sub-millimetre within a zone).  Panoramas are north-aligned (heading 0) and
2:1 (1664x832; another aspect is warned about in the report, ``aspect_ratio``).

Evaluation protocol (recorded in the manifest): the evaluation set's panoramas against its tiles
(CVACT_val: 8,884 pairs on the full release), R@top1% with k = floor(G / 100), as Sample4Geo.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gleam import storage
from gleam.data.benchmark import EvaluationProtocol
from gleam.data.ingest.common import (BAD_COORDINATES, BAD_VALUE, MISSING_FILE, FileTree, IngestPlan, LayoutError,
                                      PairRecord, Skip, coordinate_problem, make_key, require_file)

NAME = "cvact"
SOURCE = "cvact"
PANORAMA_ASPECT = 2.0  # the release's 1664x832 street panoramas

EXPECTED = """
<root>/
  ACT_data.mat                                     (panoIds, utm, trainSet.trainInd, valSet.valInd)
  ANU_data_small/streetview/<id>_grdView.jpg
  ANU_data_small/satview_polish/<id>_satView_polish.jpg
"""
MAT_HINT = ("ACT_data.mat comes with the CVACT release by Liu & Li (CVPR 2019, 'Lending Orientation to Neural "
            "Networks for Cross-view Geo-localization'); copy it to <root>/ACT_data.mat or set "
            "cvact.mat_file=<path or URL>.")


@dataclass
class CvactOptions:
    """Options of the CVACT converter (``cvact.*`` in the ingest config)."""

    mat_file: str = "ACT_data.mat"  # relative to root, absolute, or s3://
    images: str = "ANU_data_small"  # folder holding streetview/ and satview_polish/
    eval_set: Literal["auto", "valSet", "valSetAll"] = "auto"  # auto: valSet, else valSetAll
    val_split: Literal["val", "test"] = "test"
    utm_zone: int = 55
    southern: bool = True


# --------------------------------------------------------------------------- UTM <-> WGS84

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
UTM_K0 = 0.9996
UTM_FALSE_EASTING = 500_000.0
UTM_FALSE_NORTHING_SOUTH = 10_000_000.0
_N = WGS84_F / (2 - WGS84_F)
_RECTIFYING_RADIUS = WGS84_A / (1 + _N) * (1 + _N ** 2 / 4 + _N ** 4 / 64)
_ALPHA = (_N / 2 - 2 * _N ** 2 / 3 + 5 * _N ** 3 / 16, 13 * _N ** 2 / 48 - 3 * _N ** 3 / 5, 61 * _N ** 3 / 240)
_BETA = (_N / 2 - 2 * _N ** 2 / 3 + 37 * _N ** 3 / 96, _N ** 2 / 48 + _N ** 3 / 15, 17 * _N ** 3 / 480)
_DELTA = (2 * _N - 2 * _N ** 2 / 3 - 2 * _N ** 3, 7 * _N ** 2 / 3 - 8 * _N ** 3 / 5, 56 * _N ** 3 / 15)


def central_meridian(zone: int) -> float:
    return zone * 6.0 - 183.0


def utm_to_latlon(easting: Any, northing: Any, zone: int, southern: bool) -> tuple[np.ndarray, np.ndarray]:
    """UTM (metres) -> WGS84 latitude, longitude (degrees); works on scalars and arrays."""
    easting, northing = np.asarray(easting, dtype=np.float64), np.asarray(northing, dtype=np.float64)
    scale = UTM_K0 * _RECTIFYING_RADIUS
    xi = (northing - (UTM_FALSE_NORTHING_SOUTH if southern else 0.0)) / scale
    eta = (easting - UTM_FALSE_EASTING) / scale
    xi_prime, eta_prime = xi.copy(), eta.copy()
    for j, beta in enumerate(_BETA, 1):
        xi_prime -= beta * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_prime -= beta * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_prime) / np.cosh(eta_prime))
    latitude = chi.copy()
    for j, delta in enumerate(_DELTA, 1):
        latitude += delta * np.sin(2 * j * chi)
    longitude = np.radians(central_meridian(zone)) + np.arctan2(np.sinh(eta_prime), np.cos(xi_prime))
    return np.degrees(latitude), np.degrees(longitude)


def latlon_to_utm(latitude: Any, longitude: Any, zone: int) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 latitude, longitude (degrees) -> UTM easting, northing (metres; southern false northing
    when the latitude is negative)."""
    phi = np.radians(np.asarray(latitude, dtype=np.float64))
    delta_lambda = np.radians(np.asarray(longitude, dtype=np.float64) - central_meridian(zone))
    factor = 2 * math.sqrt(_N) / (1 + _N)
    t = np.sinh(np.arctanh(np.sin(phi)) - factor * np.arctanh(factor * np.sin(phi)))
    xi_prime = np.arctan2(t, np.cos(delta_lambda))
    eta_prime = np.arctanh(np.sin(delta_lambda) / np.sqrt(1 + t ** 2))
    easting, northing = eta_prime.copy(), xi_prime.copy()
    for j, alpha in enumerate(_ALPHA, 1):
        easting += alpha * np.cos(2 * j * xi_prime) * np.sinh(2 * j * eta_prime)
        northing += alpha * np.sin(2 * j * xi_prime) * np.cosh(2 * j * eta_prime)
    scale = UTM_K0 * _RECTIFYING_RADIUS
    northing = scale * northing + np.where(phi < 0, UTM_FALSE_NORTHING_SOUTH, 0.0)
    return UTM_FALSE_EASTING + scale * easting, northing


# --------------------------------------------------------------------------- ACT_data.mat


def load_mat(url: str) -> dict[str, Any]:
    """A MATLAB v5 file as nested Python data (structs -> dicts)."""
    try:
        import scipy.io
    except ImportError:
        raise ValueError(f"{url}: reading CVACT's .mat file needs scipy (pip install scipy)") from None
    data = storage.read_bytes(url)
    try:
        return scipy.io.loadmat(io.BytesIO(data), simplify_cells=True)
    except NotImplementedError:
        raise ValueError(f"{url}: a MATLAB v7.3 (HDF5) file; re-save it as v7 in MATLAB/Octave "
                         "(save('ACT_data.mat', '-struct', 's', '-v7'))") from None
    except Exception as error:  # scipy raises ValueError/TypeError/struct.error on broken files
        raise ValueError(f"{url}: not a readable MATLAB .mat file ({type(error).__name__}: {error})") from None


def _strings(value: Any) -> list[str]:
    """panoIds as a list of str, whether saved as a char matrix or a cell array."""
    if isinstance(value, str):
        return [value.strip()]
    return [str(v if not isinstance(v, np.ndarray) else "".join(np.asarray(v).ravel().tolist())).strip()
            for v in np.asarray(value, dtype=object).ravel()]


def _indices(mat: dict[str, Any], set_name: str, url: str) -> np.ndarray:
    entry = mat[set_name]
    if isinstance(entry, dict):
        wanted = [k for k in entry if k.lower().endswith("ind")]
        if not wanted:
            raise LayoutError(NAME, f"an index field (e.g. {set_name}.trainInd/valInd) in '{set_name}'", url,
                              EXPECTED, MAT_HINT)
        preferred = [k for k in wanted if k in ("trainInd", "valInd")] or wanted
        entry = entry[preferred[0]]
    values = np.asarray(entry, dtype=np.float64).ravel()
    return values


def _eval_set_name(mat: dict[str, Any], options: CvactOptions, url: str) -> str:
    names = ["valSet", "valSetAll"] if options.eval_set == "auto" else [options.eval_set]
    for name in names:
        if name in mat:
            return name
    raise LayoutError(NAME, f"key {' or '.join(names)} in the .mat file", url, EXPECTED, MAT_HINT)


def _utm_columns(utm: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(easting, northing, order): UTM eastings lie in (100 km, 900 km), northings do not."""
    first, second = utm[:, 0], utm[:, 1]
    first_is_easting = np.nanmedian(np.abs(first - UTM_FALSE_EASTING)) <= np.nanmedian(np.abs(second - UTM_FALSE_EASTING))
    if first_is_easting:
        return first, second, "easting,northing"
    return second, first, "northing,easting"


def _utm_rows(raw: Any, count: int, url: str) -> tuple[np.ndarray, bool]:
    """``utm`` as [count, 2] rows and whether the file stored it transposed ([2, count], as a
    MATLAB array saved the other way round is). Anything else is refused: flattening it into pairs
    would silently pair one point's easting with another's."""
    utm = np.asarray(raw, dtype=np.float64)
    if utm.size == 0:
        utm = np.zeros((0, 2))
    if utm.ndim == 2 and utm.shape == (count, 2):
        return utm, False
    if utm.ndim == 2 and utm.shape == (2, count):
        return utm.T.copy(), True
    raise ValueError(f"cvact: {url}: utm has shape {list(utm.shape)}, but panoIds has {count} entries: expected "
                     f"[{count}, 2] (one easting, northing row per panorama) or its transpose [2, {count}]; "
                     "the file is damaged or from another release")


def plan_cvact(root: str, options: CvactOptions) -> IngestPlan:
    """Validate the layout under ``root`` and plan every sample (see the module docstring)."""
    url = require_file(NAME, root, options.mat_file, EXPECTED, MAT_HINT)
    mat = load_mat(url)
    for key in ("panoIds", "utm", "trainSet"):
        if key not in mat:
            raise LayoutError(NAME, f"key '{key}' in the .mat file", url, EXPECTED, MAT_HINT)
    ids = _strings(mat["panoIds"])
    utm, transposed = _utm_rows(mat["utm"], len(ids), url)
    easting, northing, order = _utm_columns(utm)
    latitudes, longitudes = utm_to_latlon(easting, northing, options.utm_zone, options.southern)
    street, satellite = f"{options.images}/streetview", f"{options.images}/satview_polish"
    tree = FileTree.scan(root, [street, satellite])
    tree.require_dir(NAME, street, EXPECTED)
    tree.require_dir(NAME, satellite, EXPECTED)
    plan = IngestPlan(dataset=NAME, source=SOURCE, root=root, records=[])
    eval_set = _eval_set_name(mat, options, url)
    for set_name, split in (("trainSet", "train"), (eval_set, options.val_split)):
        for position, value in enumerate(_indices(mat, set_name, url)):
            where = f"{options.mat_file}:{set_name}[{position}]"
            if not float(value).is_integer() or not 1 <= value <= len(ids):
                plan.skipped.append(Skip(BAD_VALUE, where, f"index {value} outside 1..{len(ids)}"))
                continue
            index = int(value) - 1
            pano_id = ids[index]
            latitude, longitude = float(latitudes[index]), float(longitudes[index])
            problem = coordinate_problem(latitude, longitude) if math.isfinite(latitude + longitude) else "not finite"
            if problem:
                plan.skipped.append(Skip(BAD_COORDINATES, where, f"{pano_id}: utm {utm[index].tolist()}: {problem}"))
                continue
            query, tile = f"{street}/{pano_id}_grdView.jpg", f"{satellite}/{pano_id}_satView_polish.jpg"
            missing = [p for p in (query, tile) if not tree.has_file(p)]
            if missing:
                plan.skipped.extend(Skip(MISSING_FILE, p, f"{pano_id} is in {set_name}") for p in missing)
                continue
            plan.records.append(PairRecord(
                key=make_key(split, pano_id), location_id=make_key(NAME, pano_id), split=split,
                modality="panorama", satellite=tree.url(tile), query=tree.url(query),
                latitude=latitude, longitude=longitude, heading=0.0, query_aspect=PANORAMA_ASPECT,
                metadata={"id": pano_id, "index": index + 1, "set": set_name,
                          "utm": [float(easting[index]), float(northing[index])], "query_file": query,
                          "satellite_file": tile}))
    plan.evaluation[options.val_split] = EvaluationProtocol(
        benchmark="cvact", split=options.val_split, query_splits=[options.val_split],
        gallery_splits=[options.val_split], reverse_gallery_splits=[options.val_split],
        reverse_queries="query_locations", top1_percent_rule="floor",
        official={"panorama->satellite": {"queries": 8884, "gallery": 8884}} if eval_set == "valSet" else {},
        note=f"{eval_set}: each panorama against the tiles of the whole set").to_json()
    plan.flags["eval_set"] = {"value": eval_set, "note": f"{eval_set} written to split '{options.val_split}'"}
    plan.flags["utm"] = {"value": f"zone {options.utm_zone}{'S' if options.southern else 'N'}", "columns": order,
                         "transposed": transposed,
                         "note": "UTM converted to WGS84 latitude/longitude"
                         + (" (utm stored as [2, N]: read column-wise)" if transposed else "")}
    return plan
