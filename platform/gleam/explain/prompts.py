"""GLEAM-X instructions and fact-grounded explanations, in English and Chinese, and their parsers.

Generation.  ``make_answer`` turns the scene facts of the query location and of the satellite
tile's location (``gleam.data.synth.facts``) into an explanation that reasons from true facts and
ends with a fixed verdict line (``Verdict: match`` / ``Verdict: no match``; ``结论：匹配`` /
``结论：不匹配``).  Every statement is first a structured ``Claim`` and then rendered by one of
several templates (picked by the ``rng``), claims are shuffled and joined by varied connectors:

- a match cites 2-4 claims true at the location (side ``"both"``): the nearest junction and its
  direction, 1-2 landmarks (park, lake, river, sports field, parking, woodland) with directions,
  the building density or approximate count, the tallest building's direction (and floors),
  the absence of water, the amount of greenery in words;
- a non-match cites 2-3 discrepancies, each a pair of claims: one true for the query location
  (side ``"query"``) and one true for the satellite location (side ``"satellite"``), where at
  least one of the two is false on the other side.

Parsing.  ``parse_answer`` finds the verdict (tolerant, last one wins); ``extract_claims`` reads
claims back with regular expressions over the same vocabulary (plus synonyms), so the claims of a
generated answer are recovered exactly; ``check_claim``/``faithfulness`` verify them against facts.

Claim extraction works clause by clause: sentences split at ``. ! ? ; 。！？；`` and newlines,
clauses at commas and contrast connectors (but, whereas, yet, while, however; 但, 而, 然而,
却 ...).  A clause's side comes from its cue words (``both``/``两张`` -> both; query/image 1/
drone/street map/panorama/ground photo/查询/图1/无人机... -> query; satellite/tile/image 2/卫星/
图2... -> satellite; query and satellite cues together -> both); a clause without a cue takes
the side of the clause before it in the same sentence, else ``"both"``.

Direction tolerance (documented choice): a claimed compass direction is true when the fact's
8-point direction is the same point or an adjacent one (north-east is fine for north);
``"center"`` only matches ``"center"``.  A claim without a direction only asserts presence.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

LANGUAGES: tuple[str, ...] = ("en", "zh")
VERDICT_LINES: dict[str, dict[bool, str]] = {
    "en": {True: "Verdict: match", False: "Verdict: no match"},
    "zh": {True: "结论：匹配", False: "结论：不匹配"},
}
COMPASS: tuple[str, ...] = ("north", "north-east", "east", "south-east",
                            "south", "south-west", "west", "north-west")
CENTER = "center"
SIDES: tuple[str, ...] = ("both", "query", "satellite")
CLAIM_KINDS: tuple[str, ...] = ("junction", "feature", "buildings", "building_count", "tallest", "green")
JUNCTION_VALUES: tuple[str, ...] = ("crossroad", "T-junction", "roundabout", "any")
FEATURE_VALUES: tuple[str, ...] = ("lake", "river", "water", "park", "parking", "football", "tennis",
                                   "running_track", "sports_field", "woodland")
BUILDING_BUCKETS: tuple[str, ...] = ("none", "few", "moderate", "dense")
GREEN_BUCKETS: tuple[str, ...] = ("bare", "sparse", "moderate", "lush")


# ------------------------------------------------------------------------------ claims


@dataclass(frozen=True)
class Claim:
    """One checkable statement about a scene.

    kind       value                                              direction
    junction   crossroad | T-junction | roundabout | any          compass point, center or None
    feature    lake | river | water (any) | park | parking | football | tennis |
               running_track | sports_field (any) | woodland      compass point, center or None
    buildings  none | few | moderate | dense  (count bucket)      None
    building_count  approximate count as a decimal string         None
    tallest    floors as a decimal string, or None                direction of the tallest building
    green      bare | sparse | moderate | lush  (green fraction)  None

    ``present=False`` negates junction/feature claims ("no water", "no tennis court").
    ``side`` says which image the claim is about: ``both`` (the location), ``query``, ``satellite``.
    """

    kind: str
    value: str | None
    direction: str | None = None
    side: str = "both"
    present: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def building_bucket(count: int) -> str:
    """none (0), few (1-19), moderate (20-44), dense (45+) visible buildings."""
    if count <= 0:
        return "none"
    return "few" if count < 20 else "moderate" if count < 45 else "dense"


def green_bucket(fraction: float) -> str:
    """bare (< 5 %), sparse (5-25 %), moderate (25-55 %), lush (>= 55 %) of the tile green."""
    return "bare" if fraction < 0.05 else "sparse" if fraction < 0.25 else "moderate" if fraction < 0.55 else "lush"


def count_tolerance(count: int) -> float:
    """An approximate building count is true within max(3, 15 %) of the true count."""
    return max(3.0, 0.15 * count)


def direction_matches(claimed: str | None, actual: str | None) -> bool:
    """Same 8-point compass direction or an adjacent one; ``center`` only matches ``center``."""
    if claimed is None:
        return True
    if actual is None:
        return False
    if claimed == actual:
        return True
    if claimed in COMPASS and actual in COMPASS:
        delta = abs(COMPASS.index(claimed) - COMPASS.index(actual)) % 8
        return min(delta, 8 - delta) == 1
    return False


def _feature_items(facts: dict, value: str) -> list[dict]:
    if value in ("crossroad", "T-junction", "roundabout", "any"):
        return [j for j in facts.get("junctions", []) if value == "any" or j["type"] == value]
    items = facts.get("features", [])
    if value in ("lake", "river"):
        return [f for f in items if f["type"] == "water" and f.get("kind") == value]
    if value == "water":
        return [f for f in items if f["type"] == "water"]
    if value in ("park", "parking"):
        return [f for f in items if f["type"] == value]
    if value in ("football", "tennis", "running_track"):
        return [f for f in items if f["type"] == "sports_field" and f.get("kind") == value]
    if value == "sports_field":
        return [f for f in items if f["type"] == "sports_field"]
    if value == "woodland":
        return [f for f in items if f["type"] == "tree_cluster" and f.get("kind") == "woodland"]
    raise ValueError(f"unknown feature value {value!r}; allowed: {', '.join(FEATURE_VALUES)}")


def check_claim(claim: Claim, facts: dict) -> bool:
    """Whether ``claim`` is true for the scene ``facts`` (the claim's side is the caller's business)."""
    if claim.kind in ("junction", "feature"):
        items = [i for i in _feature_items(facts, claim.value or "any")
                 if direction_matches(claim.direction, i.get("direction"))]
        return bool(items) == claim.present
    buildings = facts.get("buildings", {})
    count = int(buildings.get("count", 0))
    if claim.kind == "buildings":
        return building_bucket(count) == claim.value
    if claim.kind == "building_count":
        return abs(int(claim.value) - count) <= count_tolerance(count)
    if claim.kind == "tallest":
        tallest = buildings.get("tallest")
        if not tallest:
            return False
        floors_ok = claim.value is None or int(claim.value) == int(tallest["floors"])
        return floors_ok and direction_matches(claim.direction, tallest.get("direction"))
    if claim.kind == "green":
        return green_bucket(float(facts.get("green_fraction", 0.0))) == claim.value
    raise ValueError(f"unknown claim kind {claim.kind!r}; allowed: {', '.join(CLAIM_KINDS)}")


def faithfulness(text: str, language: str, facts: dict, satellite_facts: dict | None = None) -> dict[str, Any]:
    """Share of the claims in ``text`` that are true.

    With only ``facts`` every claim is checked against them (a match: the location's facts).
    With ``satellite_facts`` too, ``query`` claims are checked against ``facts``, ``satellite``
    claims against ``satellite_facts``, and ``both`` claims must hold for both.
    Returns ``{"claims", "true", "false", "precision" (None without claims), "details"}``.
    """
    claims = extract_claims(text, language)
    details = []
    for claim in claims:
        if satellite_facts is None or claim.side == "query":
            ok = check_claim(claim, facts)
        elif claim.side == "satellite":
            ok = check_claim(claim, satellite_facts)
        else:
            ok = check_claim(claim, facts) and check_claim(claim, satellite_facts)
        details.append({"claim": claim.to_json(), "true": ok})
    true = sum(d["true"] for d in details)
    return {"claims": len(claims), "true": true, "false": len(claims) - true,
            "precision": true / len(claims) if claims else None, "details": details}


# ------------------------------------------------------------------------------ vocabulary

# Names used when generating (first lists) and extra synonyms accepted when parsing.
_NAMES: dict[str, dict[str, list[str]]] = {
    "en": {
        "crossroad": ["crossroads", "four-way intersection", "four-way junction"],
        "T-junction": ["T-junction", "three-way junction", "T-intersection"],
        "roundabout": ["roundabout", "traffic circle"],
        "lake": ["lake", "small lake"],
        "river": ["river", "river channel"],
        "park": ["park", "public park"],
        "parking": ["parking lot", "car park", "parking area"],
        "football": ["football pitch", "soccer field", "football field"],
        "tennis": ["tennis court", "tennis courts"],
        "running_track": ["running track", "athletics track"],
        "woodland": ["woodland", "wooded area", "patch of woodland"],
        "water": ["water", "body of water"],
        "sports_field": ["sports field"],
        "junction": ["junction", "intersection"],
    },
    "zh": {
        "crossroad": ["十字路口", "十字交叉口"],
        "T-junction": ["丁字路口", "T形路口"],
        "roundabout": ["环岛", "环形交叉口"],
        "lake": ["湖泊", "小湖"],
        "river": ["河流", "河道"],
        "park": ["公园"],
        "parking": ["停车场"],
        "football": ["足球场"],
        "tennis": ["网球场"],
        "running_track": ["跑道", "田径场"],
        "woodland": ["树林", "林地"],
        "water": ["水体", "水面"],
        "sports_field": ["运动场"],
        "junction": ["路口", "交叉口"],
    },
}
_SYNONYMS: dict[str, dict[str, list[str]]] = {
    "en": {
        "crossroad": ["crossroad", "crossing", "four-way crossing", "4-way intersection"],
        "T-junction": ["T-junctions", "T junction", "three-way intersection", "T-shaped junction"],
        "roundabout": ["roundabouts", "traffic circles", "rotary"],
        "lake": ["lakes", "pond", "ponds"],
        "river": ["rivers", "stream", "canal"],
        "park": ["parks"],
        "parking": ["parking lots", "car parks", "parking", "parking areas", "parking space"],
        "football": ["football pitches", "soccer pitch", "soccer fields"],
        "tennis": [],
        "running_track": ["running tracks", "race track", "athletics tracks"],
        "woodland": ["woodlands", "woods", "forest", "grove of trees"],
        "water": ["waters", "bodies of water", "water body"],
        "sports_field": ["sports fields", "sports ground", "sports facility", "playing field"],
        "junction": ["junctions", "intersections", "road junction"],
    },
    "zh": {
        "crossroad": ["十字路"],
        "T-junction": ["T字路口", "三岔路口", "丁字路"],
        "roundabout": ["转盘", "环形路口"],
        "lake": ["湖", "池塘"],
        "river": ["河", "溪流"],
        "park": [],
        "parking": ["停车区"],
        "football": ["足球"],
        "tennis": [],
        "running_track": ["操场"],
        "woodland": ["小树林", "森林"],
        "water": ["水域"],
        "sports_field": ["体育场", "球场"],
        "junction": ["道路交叉口"],
    },
}
_FAMILY = {"crossroad": "junction", "T-junction": "junction", "roundabout": "junction", "junction": "junction",
           "lake": "water", "river": "water", "water": "water",
           "football": "sports", "tennis": "sports", "running_track": "sports", "sports_field": "sports",
           "park": "park", "parking": "parking", "woodland": "woodland", "tallest": "tallest"}
_GENERIC = {"junction", "water", "sports_field"}

_TALLEST = {"en": ["tallest building", "tallest structure", "highest building", "tallest tower"],
            "zh": ["最高的建筑", "最高建筑", "最高的楼"]}

_DIRECTION_ZH = {"north": "北", "north-east": "东北", "east": "东", "south-east": "东南", "south": "南",
                 "south-west": "西南", "west": "西", "north-west": "西北"}
_ZH_DIRECTION = {v: k for k, v in _DIRECTION_ZH.items()}

_MODALITY_NAMES = {
    "en": {"uav": "drone (UAV) image", "streetmap": "street map", "panorama": "street-level panorama",
           "ground": "ground-level photo"},
    "zh": {"uav": "无人机航拍图", "streetmap": "街道地图", "panorama": "街景全景", "ground": "地面照片"},
}
_QUERY_CUES = {
    "en": {"uav": ["the drone view", "the drone image"], "streetmap": ["the street map"],
           "panorama": ["the panorama"], "ground": ["the ground photo"],
           None: ["the query image", "the query view", "image 1", "the first image"]},
    "zh": {"uav": ["无人机图像"], "streetmap": ["街道地图"], "panorama": ["全景图"], "ground": ["地面照片"],
           None: ["查询图像", "图1", "第一张图"]},
}
_SAT_CUES = {"en": ["the satellite tile", "the satellite image", "image 2", "the second image"],
             "zh": ["卫星图", "卫星图像", "图2", "第二张图"]}


def _entity_regex(language: str) -> re.Pattern:
    parts = []
    for value, names in _NAMES[language].items():
        parts.extend((name, value) for name in names + _SYNONYMS[language][value])
    parts.extend((name, "tallest") for name in _TALLEST[language])
    parts.sort(key=lambda p: len(p[0]), reverse=True)
    _ENTITY_VALUES[language] = {name.lower(): value for name, value in parts}
    body = "|".join(re.escape(name) for name, _ in parts)
    if language == "en":
        return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)
    return re.compile(rf"(?:{body})", re.IGNORECASE)


_ENTITY_VALUES: dict[str, dict[str, str]] = {}
_ENTITY_RE = {language: _entity_regex(language) for language in LANGUAGES}

_DIRECTION_RE = {
    "en": re.compile(r"\b(?:(north|south)[- ]?(east|west)(?:ern)?|(north|south|east|west)(?:ern|wards?)?)\b"
                     r"|\b(?:at|in) the (?:very )?(?:cent(?:re|er)|middle)\b", re.IGNORECASE),
    "zh": re.compile(r"(东北|西北|东南|西南|北|南|东|西)|(?:中心|中央|正中)"),
}
_NEGATION_RE = {
    "en": re.compile(r"\b(?:no|not|without|lacks?|lacking|neither|nor|absent|none)\b", re.IGNORECASE),
    "zh": re.compile(r"没有|并无|未见|看不到|不见|无(?!人机)"),
}
_BOTH_RE = {
    "en": re.compile(r"\b(?:both|neither|either (?:image|view)|each (?:image|view)|two (?:images|views))\b",
                     re.IGNORECASE),
    "zh": re.compile(r"两张|两幅|两者|二者|两个视图"),
}
_QUERY_RE = {
    "en": re.compile(r"\b(?:query|image\s*(?:1|one)|first image|drone|uav|street[- ]map|panorama|"
                     r"ground[- ](?:photo|level|view)|photo)\b", re.IGNORECASE),
    "zh": re.compile(r"查询|图\s*1|第一张|第一幅|无人机|街道地图|街景|全景|地面照片|地面视角"),
}
_SAT_RE = {
    "en": re.compile(r"\b(?:satellite|tile|image\s*(?:2|two)|second image)\b", re.IGNORECASE),
    "zh": re.compile(r"卫星|图\s*2|第二张|第二幅|瓦片"),
}
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|[;；。！？\n]+|(?<=[.!?])$")
_CLAUSE_SPLIT = {
    "en": re.compile(r",|\b(?:but|whereas|yet|while|however|although)\b", re.IGNORECASE),
    "zh": re.compile(r"[,，]|但是|但|然而|而|却|可是"),
}
_BUILDING_TERM = {"en": re.compile(r"\b(?:buildings?|houses|structures|built[- ]up)\b", re.IGNORECASE),
                  "zh": re.compile(r"建筑|房屋|楼房")}
_BUILDING_COUNT = {"en": re.compile(r"\b(\d+)\s+(?:[a-z-]+\s+)?(?:buildings|houses|structures)\b", re.IGNORECASE),
                   "zh": re.compile(r"(\d+)\s*(?:栋|座|幢)(?:左右)?的?(?:建筑|房屋|楼)")}
_BUILDING_WORDS = {
    "en": [("dense", r"dense(?:ly)?|packed|many|crowded|lots of|tightly"),
           ("moderate", r"moderate(?:ly)?|fair number|medium"),
           ("few", r"few|scattered|sparse(?:ly)?|handful|isolated")],
    "zh": [("dense", r"密集|大量|稠密|密布"), ("moderate", r"适中|中等"), ("few", r"零星|稀疏|少量|几栋|寥寥")],
}
_GREEN_TERM = {"en": re.compile(r"\b(?:greenery|vegetation|vegetated|green(?:ness| cover| space)?)\b", re.IGNORECASE),
               "zh": re.compile(r"绿化|植被|绿地")}
_GREEN_WORDS = {
    "en": [("bare", r"barely any|hardly any|almost no|virtually no"),
           ("lush", r"lush|plenty|abundant|rich|lots of|heavily|dense(?:ly)?"),
           ("moderate", r"moderate(?:ly)?|some|fair amount|medium"),
           ("sparse", r"sparse(?:ly)?|little|limited|patchy|thin")],
    "zh": [("bare", r"几乎没有|极少|光秃"), ("lush", r"茂密|丰富|繁茂|大片"),
           ("moderate", r"中等|一定|适中"), ("sparse", r"稀疏|较少|不多")],
}
_FLOORS_RE = {"en": re.compile(r"(\d+)[- ]?(?:floors?|storeys?|stories|levels)\b", re.IGNORECASE),
              "zh": re.compile(r"(\d+)\s*层")}


def _words_re(language: str, table: list[tuple[str, str]]) -> list[tuple[str, re.Pattern]]:
    flags = re.IGNORECASE
    if language == "en":
        return [(bucket, re.compile(rf"\b(?:{pattern})\b", flags)) for bucket, pattern in table]
    return [(bucket, re.compile(pattern)) for bucket, pattern in table]


_BUILDING_WORD_RE = {lang: _words_re(lang, table) for lang, table in _BUILDING_WORDS.items()}
_GREEN_WORD_RE = {lang: _words_re(lang, table) for lang, table in _GREEN_WORDS.items()}

# ------------------------------------------------------------------------------ verdicts

_EN_VERDICT = re.compile(
    r"\bverdict\b[\s*_]*(?:is\b)?[\s*_]*[:：\-–—]?[\s*_\"'`]*"
    r"(?:(?P<neg>not?\s+(?:a\s+)?match\w*|mismatch\w*|not\s+(?:the\s+)?same(?:\s+(?:place|location))?|"
    r"different(?:\s+(?:places?|locations?))?|no)|(?P<pos>match\w*|(?:the\s+)?same(?:\s+(?:place|location))?|yes))\b",
    re.IGNORECASE)
_ZH_VERDICT = re.compile(
    r"结论\s*(?:是|为)?\s*[:：]?[\s*_\"'`“”]*"
    r"(?:(?P<neg>不匹配|不是同一(?:个)?(?:地点|位置|地方)|不同(?:的)?(?:地点|位置|地方)|否)|"
    r"(?P<pos>匹配|是同一(?:个)?(?:地点|位置|地方)|相同(?:的)?(?:地点|位置|地方)|同一(?:个)?(?:地点|位置|地方)|是))")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class ParsedAnswer:
    """``verdict``: True (match), False (no match) or None (no recognisable verdict).
    ``language``: the verdict's language, else the script's; ``well_formed``: explanation text,
    then exactly one verdict, nothing after it, and the text's script agreeing with the verdict."""

    verdict: bool | None
    language: str | None
    well_formed: bool


def script_language(text: str) -> str | None:
    """``zh`` when at least half the letters are CJK, ``en`` when at most 10 % are, else None."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk + latin == 0:
        return None
    ratio = cjk / (cjk + latin)
    return "zh" if ratio >= 0.5 else "en" if ratio <= 0.1 else None


def _verdicts(text: str) -> list[tuple[int, int, bool, str]]:
    """(start, end, verdict, language) of every verdict phrase, in reading order."""
    found = []
    for language, pattern in (("en", _EN_VERDICT), ("zh", _ZH_VERDICT)):
        for match in pattern.finditer(text):
            found.append((match.start(), match.end(), match.group("pos") is not None, language))
    return sorted(found)


def parse_answer(text: str) -> ParsedAnswer:
    """Tolerant verdict parsing (both languages, minor variations; the last verdict wins)."""
    if not isinstance(text, str):
        return ParsedAnswer(None, None, False)
    found = _verdicts(text)
    if not found:
        return ParsedAnswer(None, script_language(text), False)
    start, end, verdict, language = found[-1]
    explanation = text[:start]
    tail = text[end:]
    has_text = len(_CJK.findall(explanation)) >= 4 or len(re.findall(r"[A-Za-z]+", explanation)) >= 3
    well_formed = (len(found) == 1 and has_text and not re.search(r"[\w\u4e00-\u9fff]", tail)
                   and script_language(explanation) == language)
    return ParsedAnswer(verdict, language, well_formed)


def with_verdict(text: str, verdict: bool, language: str | None = None) -> str:
    """``text`` ending in the verdict line of ``verdict`` (``VERDICT_LINES``) and stating no other:
    every verdict phrase it held is removed.  ``language``: the line's language; default the
    text's own verdict language, else its script's, else English.  Used when GLEAM-X's match
    head, not the language model, decides the verdict (``explain.model.generate``)."""
    found = _verdicts(text)
    language = language or (found[-1][3] if found else None) or script_language(text) or "en"
    if language not in VERDICT_LINES:
        raise ValueError(f"language {language!r}: one of {sorted(VERDICT_LINES)}")
    for start, end, _, _ in reversed(found):
        text = text[:start] + text[end:]
    body = "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())
    return (body + "\n" if body else "") + VERDICT_LINES[language][bool(verdict)]


def strip_verdicts(text: str) -> str:
    """``text`` without its verdict phrases (claims are never read from them)."""
    for start, end, _, _ in reversed(_verdicts(text)):
        text = text[:start] + " " + text[end:]
    return text


# ------------------------------------------------------------------------------ extraction


def _clauses(text: str, language: str) -> list[tuple[str, str]]:
    """(clause, side) in reading order."""
    out = []
    for sentence in _SENTENCE_SPLIT.split(text):
        side = None
        for clause in _CLAUSE_SPLIT[language].split(sentence):
            if not clause or not clause.strip():
                continue
            has_both = bool(_BOTH_RE[language].search(clause))
            has_query = bool(_QUERY_RE[language].search(clause))
            has_sat = bool(_SAT_RE[language].search(clause))
            if has_both or (has_query and has_sat):
                side = "both"
            elif has_query:
                side = "query"
            elif has_sat:
                side = "satellite"
            out.append((clause, side or "both"))
    return out


def _directions(clause: str, language: str) -> list[tuple[int, int, str]]:
    found = []
    for match in _DIRECTION_RE[language].finditer(clause):
        if language == "en":
            if match.group(1):
                name = f"{match.group(1).lower()}-{match.group(2).lower()}"
            elif match.group(3):
                name = match.group(3).lower()
            else:
                name = CENTER
        else:
            name = _ZH_DIRECTION[match.group(1)] if match.group(1) else CENTER
        found.append((match.start(), match.end(), name))
    return found


def _clause_claims(clause: str, side: str, language: str) -> list[Claim]:
    mentions = []
    for match in _ENTITY_RE[language].finditer(clause):
        mentions.append([match.start(), match.end(), _ENTITY_VALUES[language][match.group(0).lower()]])
    families = {_FAMILY[v] for _, _, v in mentions if v not in _GENERIC and v != "tallest"}
    negation = _NEGATION_RE[language]
    kept = []
    previous_end = 0
    for start, end, value in mentions:
        negated = bool(negation.search(clause, previous_end, start))
        if value in _GENERIC and _FAMILY[value] in families and not negated:
            continue  # "the nearest junction is a roundabout": the specific mention carries it
        kept.append((start, end, value, negated, previous_end))
        previous_end = end
    directions = _directions(clause, language)
    used: set[int] = set()
    claims: list[Claim] = []
    tallest_spans = []
    for index, (start, end, value, negated, before_start) in enumerate(kept):
        after_end = kept[index + 1][0] if index + 1 < len(kept) else len(clause)
        after = [i for i, d in enumerate(directions) if d[0] >= end and d[1] <= after_end and i not in used]
        before = [i for i, d in enumerate(directions) if d[0] >= before_start and d[1] <= start and i not in used]
        order = (before[-1:] + after[:1]) if language == "zh" else (after[:1] + before[-1:])
        chosen = order[0] if order and not negated else None
        if chosen is not None:
            used.add(chosen)
        direction = directions[chosen][2] if chosen is not None else None
        if value == "tallest":
            tallest_spans.append((start, end))
            floors = _FLOORS_RE[language].search(clause)
            claims.append(Claim("tallest", floors.group(1) if floors else None, direction, side))
        elif _FAMILY[value] == "junction":
            claims.append(Claim("junction", "any" if value == "junction" else value, direction, side, not negated))
        else:
            claims.append(Claim("feature", "sports_field" if value == "sports_field" else value,
                                direction, side, not negated))
    rest = clause
    for start, end in tallest_spans:
        rest = rest[:start] + " " * (end - start) + rest[end:]
    claims.extend(_building_claims(rest, side, language))
    claims.extend(_green_claims(rest, side, language))
    return claims


def _nearest_word(text: str, position: int, table: list[tuple[str, re.Pattern]]) -> str | None:
    best = None
    for bucket, pattern in table:
        for match in pattern.finditer(text):
            distance = abs(match.start() - position)
            if best is None or distance < best[0]:
                best = (distance, bucket)
    return best[1] if best else None


def _building_claims(clause: str, side: str, language: str) -> list[Claim]:
    count = _BUILDING_COUNT[language].search(clause)
    if count:
        return [Claim("building_count", str(int(count.group(1))), None, side)]
    term = _BUILDING_TERM[language].search(clause)
    if not term:
        return []
    if _NEGATION_RE[language].search(clause, 0, term.start()):
        return [Claim("buildings", "none", None, side)]
    bucket = _nearest_word(clause, term.start(), _BUILDING_WORD_RE[language])
    return [Claim("buildings", bucket, None, side)] if bucket else []


def _green_claims(clause: str, side: str, language: str) -> list[Claim]:
    term = _GREEN_TERM[language].search(clause)
    if not term:
        return []
    bucket = _nearest_word(clause, term.start(), _GREEN_WORD_RE[language])
    return [Claim("green", bucket, None, side)] if bucket else []


def unparsed_mentions(text: str, language: str | None = None) -> int:
    """Clauses that name a fact the checker knows (a landmark, junction, buildings, greenery) but
    from which no checkable claim can be read (e.g. "buildings" with no amount): counted, so a
    vague answer does not look precise by saying nothing checkable."""
    language = language or script_language(text) or "en"
    count = 0
    for clause, side in _clauses(strip_verdicts(text), language):
        mentions = (_ENTITY_RE[language].search(clause) or _BUILDING_TERM[language].search(clause)
                    or _GREEN_TERM[language].search(clause))
        if mentions and not _clause_claims(clause, side, language):
            count += 1
    return count


def claims_agree(stated: Claim, reference: Claim) -> bool:
    """Whether ``stated`` says what ``reference`` says: same kind, value, side and polarity, and a
    direction that ``direction_matches`` (a reference without direction accepts any)."""
    if (stated.kind, stated.side, stated.present) != (reference.kind, reference.side, reference.present):
        return False
    if stated.kind == "building_count":
        return abs(int(stated.value) - int(reference.value)) <= count_tolerance(int(reference.value))
    if stated.value != reference.value and not (stated.kind == "tallest" and reference.value is None):
        return False
    return reference.direction is None or direction_matches(stated.direction, reference.direction)


def extract_claims(text: str, language: str | None = None) -> list[Claim]:
    """Every claim stated in ``text`` (verdict phrases ignored), in reading order."""
    language = language or script_language(text) or "en"
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} unknown; use one of {LANGUAGES}")
    text = strip_verdicts(text)
    claims = []
    for clause, side in _clauses(text, language):
        claims.extend(_clause_claims(clause, side, language))
    return claims


# ------------------------------------------------------------------------------ generation


def _as_random(rng: Any) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(2**62)))
    return random.Random(rng)


_INSTRUCTIONS = {
    "en": [
        "Image 1 is a {m} and image 2 is a satellite tile. Do they show the same place? "
        "Explain your reasoning, then end with a verdict line: 'Verdict: match' or 'Verdict: no match'.",
        "The first image is a {m}; the second is a satellite image. Compare landmarks, road layout, "
        "buildings, vegetation and water, decide whether both depict the same location, and finish "
        "with 'Verdict: match' or 'Verdict: no match'.",
        "You are given a {m} (image 1) and a satellite tile (image 2). Is the satellite tile the place "
        "seen in the {m}? Reason step by step about what you see and close with the verdict "
        "('Verdict: match' / 'Verdict: no match').",
        "Look at the {m} in image 1 and the satellite tile in image 2. Explain whether they show the "
        "same place, citing concrete evidence, and put your verdict on the last line as "
        "'Verdict: match' or 'Verdict: no match'.",
        "Cross-view check: image 1 shows a location as a {m}, image 2 is an overhead satellite tile. "
        "Do both images show the same place? Give an explanation and end with 'Verdict: match' or "
        "'Verdict: no match'.",
    ],
    "zh": [
        "图1是一张{m}，图2是卫星图。它们是否拍摄的是同一个地点？请说明理由，并以“结论：匹配”或“结论：不匹配”结尾。",
        "第一张图是{m}，第二张图是卫星影像。请比较地标、道路布局、建筑、植被和水体，判断两者是否为同一地点，最后给出“结论：匹配”或“结论：不匹配”。",
        "给定一张{m}（图1）和一张卫星瓦片（图2）。卫星图显示的是否就是{m}中的地点？请逐步分析，并在最后一行写出结论（“结论：匹配”/“结论：不匹配”）。",
        "请观察图1中的{m}和图2中的卫星图，解释它们是否为同一个地方，给出具体依据，最后一行写“结论：匹配”或“结论：不匹配”。",
        "跨视角核验：图1以{m}的形式展示一个地点，图2是俯视的卫星图。两张图是否显示同一地点？请给出解释，并以“结论：匹配”或“结论：不匹配”结束。",
    ],
}


def modality_name(modality: str, language: str) -> str:
    return _MODALITY_NAMES[language].get(modality, modality.replace("_", " "))


# Label-only supervision (the paper's "label-only" variant): the same pair, answered with the
# verdict line alone.
TASKS: tuple[str, ...] = ("explain", "verdict")
_VERDICT_INSTRUCTIONS = {
    "en": [
        "Image 1 is a {m} and image 2 is a satellite tile. Same place? Answer with the verdict line only: "
        "'Verdict: match' or 'Verdict: no match'.",
        "Is the satellite tile (image 2) the place shown in the {m} (image 1)? Reply only with "
        "'Verdict: match' or 'Verdict: no match'.",
        "Verify the pair: a {m} first, then a satellite image. Give just the verdict ('Verdict: match' / "
        "'Verdict: no match'), no explanation.",
    ],
    "zh": [
        "图1是一张{m}，图2是卫星图。是否为同一地点？只回答结论：“结论：匹配”或“结论：不匹配”。",
        "图2的卫星图是否就是图1（{m}）中的地点？只需回复“结论：匹配”或“结论：不匹配”。",
        "核验这对图像：先是{m}，后是卫星图。无需解释，直接给出结论（“结论：匹配”/“结论：不匹配”）。",
    ],
}


def verdict_instruction(language: str, modality: str, rng: Any = None) -> str:
    """One of several phrasings asking for the verdict line only (label-only supervision)."""
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} unknown; use one of {LANGUAGES}")
    return _as_random(rng).choice(_VERDICT_INSTRUCTIONS[language]).format(m=modality_name(modality, language))


def is_verdict_only(answer: str) -> bool:
    """True when ``answer`` is a verdict and nothing else (a label-only answer)."""
    return parse_answer(answer).verdict is not None and not strip_verdicts(answer).strip(" \n\t.。")


def instruction(language: str, modality: str, rng: Any = None) -> str:
    """One of several phrasings: image 1 is a ``modality`` view, image 2 a satellite tile; same place?"""
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} unknown; use one of {LANGUAGES}")
    return _as_random(rng).choice(_INSTRUCTIONS[language]).format(m=modality_name(modality, language))


@dataclass
class AnswerPlan:
    """A generated answer: the text, the claims it states (in order) and the template ids used."""

    text: str
    claims: list[Claim]
    templates: list[str] = field(default_factory=list)
    match: bool = True
    language: str = "en"


class _Writer:
    """Renders claims with randomly chosen templates, recording template ids."""

    def __init__(self, language: str, rng: random.Random, modality: str | None):
        self.language, self.rng, self.modality = language, rng, modality
        self.templates: list[str] = []
        self.used: set[str] = set()

    def pick(self, name: str, options: Sequence[str]) -> str:
        index = self.rng.randrange(len(options))
        self.templates.append(f"{self.language}:{name}:{index}")
        return options[index]

    # ---- cues
    def query_cue(self) -> str:
        cues = _QUERY_CUES[self.language]
        options = cues[None] + (cues.get(self.modality, []) if self.modality else [])
        return self.rng.choice(options)

    def sat_cue(self) -> str:
        return self.rng.choice(_SAT_CUES[self.language])

    def name(self, value: str) -> str:
        return self.rng.choice(_NAMES[self.language][value])

    # ---- English noun phrases
    def en_direction(self, direction: str) -> str:
        if direction == CENTER:
            return self.pick("dir_center", ["right at the centre", "at the centre", "in the middle"])
        form = self.pick("dir", ["to the {d}", "in the {d}", "on the {d} side", "toward the {d}",
                                 "in the {d}ern part"])
        return form.format(d=direction)

    def en_phrase(self, claim: Claim) -> str:
        """Noun phrase of a claim: 'a roundabout to the north-east', 'no water', 'lush greenery'."""
        if claim.kind in ("junction", "feature"):
            if not claim.present:
                noun = self.name("junction" if claim.value == "any" else claim.value)
                form = self.pick("absent", ["no {n}", "no {n} at all", "no visible {n}"])
                return form.format(n=noun)
            noun = self.name(claim.value)
            article = "" if noun in ("crossroads", "tennis courts") else "an " if noun[0] in "aeiou" else "a "
            phrase = f"{article}{noun} {self.en_direction(claim.direction)}"
            if claim.kind == "junction":
                form = self.pick("nearest_junction", ["{p}", "{p} (the nearest junction)",
                                                      "{p} (the closest intersection)"])
                return form.format(p=phrase)
            return phrase
        if claim.kind == "buildings":
            options = {"none": ["no buildings", "no buildings at all"],
                       "few": ["only a few scattered buildings", "a handful of buildings", "few buildings"],
                       "moderate": ["a moderate number of buildings", "a fair number of buildings"],
                       "dense": ["densely packed buildings", "many buildings", "a dense cluster of buildings"]}
            return self.pick(f"buildings_{claim.value}", options[claim.value])
        if claim.kind == "building_count":
            return self.pick("count", ["about {n} buildings", "roughly {n} buildings",
                                       "around {n} buildings"]).format(n=claim.value)
        if claim.kind == "tallest":
            direction = self.en_direction(claim.direction)
            if claim.value is None:
                return self.pick("tallest", ["the tallest building {d}", "the highest building {d}"]).format(d=direction)
            return self.pick("tallest_floors", ["the tallest building ({f} floors) {d}",
                                                "the {f}-storey tallest building {d}"]).format(f=claim.value, d=direction)
        if claim.kind == "green":
            options = {"bare": ["barely any greenery", "hardly any vegetation"],
                       "sparse": ["little greenery", "sparse vegetation", "limited greenery"],
                       "moderate": ["a moderate amount of vegetation", "some greenery"],
                       "lush": ["lush greenery", "plenty of vegetation", "abundant greenery"]}
            return self.pick(f"green_{claim.value}", options[claim.value])
        raise ValueError(claim.kind)

    # ---- Chinese clause predicates
    def zh_direction(self, direction: str) -> tuple[str, str]:
        """(direction word for 'X方有', direction word for '位于X')."""
        if direction == CENTER:
            word = self.pick("zh_center", ["正中心", "中心位置", "中央"])
            return word, word
        base = _DIRECTION_ZH[direction]
        return base + self.pick("zh_dir_a", ["方", "侧", "边"]), base + self.pick("zh_dir_b", ["方", "侧", "部"])

    def zh_predicate(self, claim: Claim) -> str:
        """Clause predicate of a claim: '东北方有一个环岛', '没有水体', '植被茂密'."""
        if claim.kind in ("junction", "feature"):
            if not claim.present:
                noun = self.name("junction" if claim.value == "any" else claim.value)
                return self.pick("zh_absent", ["没有{n}", "看不到任何{n}", "并无{n}"]).format(n=noun)
            noun = self.name(claim.value)
            first, second = self.zh_direction(claim.direction)
            classifier = {"river": "条", "lake": "片", "woodland": "片", "park": "座"}.get(claim.value, "个")
            if claim.kind == "junction":
                form = self.pick("zh_junction", ["最近的路口是{a}的{n}", "{a}有一个{n}", "{n}位于{b}"])
            else:
                form = self.pick("zh_feature", ["{a}有一{c}{n}", "{n}位于{b}", "可以看到{a}的{n}"])
            return form.format(a=first, b=second, n=noun, c=classifier)
        if claim.kind == "buildings":
            options = {"none": ["没有建筑", "看不到任何建筑"],
                       "few": ["只有零星几栋建筑", "建筑稀疏", "只有少量建筑"],
                       "moderate": ["建筑数量适中", "有中等数量的建筑"],
                       "dense": ["建筑密集", "有大量建筑", "建筑密布"]}
            return self.pick(f"zh_buildings_{claim.value}", options[claim.value])
        if claim.kind == "building_count":
            return self.pick("zh_count", ["约有{n}栋建筑", "大约有{n}座建筑", "有{n}栋左右的建筑"]).format(n=claim.value)
        if claim.kind == "tallest":
            first, second = self.zh_direction(claim.direction)
            if claim.value is None:
                return self.pick("zh_tallest", ["最高的建筑位于{b}", "{a}有整片区域最高的建筑"]).format(a=first, b=second)
            return self.pick("zh_tallest_floors", ["最高的建筑（{f}层）位于{b}", "{a}有一栋{f}层高的最高建筑"]
                             ).format(a=first, b=second, f=claim.value)
        if claim.kind == "green":
            options = {"bare": ["几乎没有绿化", "绿化极少"], "sparse": ["植被稀疏", "绿化较少"],
                       "moderate": ["绿化程度中等", "有一定的植被"], "lush": ["植被茂密", "绿化丰富"]}
            return self.pick(f"zh_green_{claim.value}", options[claim.value])
        raise ValueError(claim.kind)

    # ---- sentences
    def match_sentence(self, claim: Claim) -> str:
        if self.language == "en":
            phrase = self.en_phrase(claim)
            if claim.kind in ("junction", "feature") and not claim.present:
                noun = self.name("junction" if claim.value == "any" else claim.value)
                form = self.pick("en_match_absent", ["Neither image shows any {n}.",
                                                     "There is no {n} in either image.",
                                                     "Both views lack any {n}."])
                return form.format(n=noun)
            form = self.pick("en_match", [
                "Both images show {p}.",
                "{P} is visible in both views.",
                "I can see {p} in {q} and in {s} as well.",
                "The two views agree on {p}.",
                "{P} appears in each image.",
                "In both images there is {p}.",
            ])
            return form.format(p=phrase, P=phrase[0].upper() + phrase[1:], q=self.query_cue(), s=self.sat_cue())
        predicate = self.zh_predicate(claim)
        form = self.pick("zh_match", [
            "在两张图中，{p}。",
            "两幅图像一致：{p}。",
            "{p}，这一点在两张图中都一样。",
            "从两张图都能看出，{p}。",
            "{q}与{s}均显示：{p}。",
        ])
        return form.format(p=predicate, q=self.query_cue(), s=self.sat_cue())

    def mismatch_sentence(self, query_claim: Claim, sat_claim: Claim) -> str:
        q, s = self.query_cue(), self.sat_cue()
        if self.language == "en":
            qp, sp = self.en_phrase(query_claim), self.en_phrase(sat_claim)
            form = self.pick("en_mismatch", [
                "{Q} shows {qp}, but {S} shows {sp}.",
                "In {Q} I see {qp}, whereas {S} has {sp}.",
                "{S} has {sp}, yet {Q} shows {qp}.",
                "{Q} contains {qp}; {S}, however, contains {sp}.",
                "{Q} shows {qp}, while {S} shows {sp} instead.",
                "{Q} has {qp}, which does not fit {S}, where I see {sp}.",
            ])
            text = form.format(Q=q, S=s, qp=qp, sp=sp)
            return text[0].upper() + text[1:]
        qp, sp = self.zh_predicate(query_claim), self.zh_predicate(sat_claim)
        form = self.pick("zh_mismatch", [
            "{Q}中{qp}，但{S}中{sp}。",
            "在{Q}里，{qp}；而在{S}里，{sp}。",
            "{S}上{sp}，然而{Q}中{qp}。",
            "{Q}显示{qp}，{S}却显示{sp}。",
            "与{Q}中{qp}不同，{S}中{sp}。",
        ])
        return form.format(Q=q, S=s, qp=qp, sp=sp)

    def connect(self, sentence: str, index: int) -> str:
        """Prefix a varied connector (never the same one twice in an answer) to later sentences."""
        if index == 0:
            return sentence
        options = (["", "Also, ", "Moreover, ", "In addition, ", "Furthermore, "] if self.language == "en"
                   else ["", "此外，", "另外，", "同时，"])
        connector = self.rng.choice([c for c in options if not c or c not in self.used])
        self.templates.append(f"{self.language}:connector:{options.index(connector)}")
        self.used.add(connector)
        if self.language == "en" and connector and not sentence.startswith("I "):
            sentence = sentence[0].lower() + sentence[1:]
        return connector + sentence

    def opening(self, match: bool) -> str:
        q, s = self.query_cue(), self.sat_cue()
        if self.language == "en":
            options = (["Let me compare {q} with {s}.", "Here is a point-by-point comparison of {q} and {s}.", ""]
                       if match else ["Comparing {q} with {s} reveals several differences.",
                                      "Let me check {q} against {s}.", ""])
            return self.pick(f"en_open_{match}", options).format(q=q, s=s)
        options = (["我来对比{q}和{s}。", "下面逐项比较{q}与{s}。", ""] if match
                   else ["对比{q}和{s}，可以发现多处差异。", "我来核对{q}与{s}。", ""])
        return self.pick(f"zh_open_{match}", options).format(q=q, s=s)

    def closing(self, match: bool) -> str:
        if self.language == "en":
            options = (["These shared details point to the same location.", "Everything I can check lines up.",
                        "The layout is consistent across the two views."] if match
                       else ["These discrepancies mean the two images show different places.",
                             "The layouts are clearly inconsistent.",
                             "Such differences rule out the same location."])
            return self.pick(f"en_close_{match}", options)
        options = (["这些共同特征表明是同一地点。", "可以核对的细节全部吻合。", "两个视角的布局一致。"] if match
                   else ["这些差异说明两张图显示的是不同的地方。", "两者的布局明显不一致。", "这些差别排除了同一地点的可能。"])
        return self.pick(f"zh_close_{match}", options)


# ---- claim selection


def _nearest_junction_claim(facts: dict, side: str) -> Claim:
    junction = facts.get("nearest_junction") or {"type": "none"}
    if junction.get("type", "none") == "none":
        return Claim("junction", "any", None, side, present=False)
    return Claim("junction", junction["type"], junction["direction"], side)


_LANDMARKS = ("river", "lake", "park", "football", "tennis", "running_track", "parking", "woodland")


def _landmarks(facts: dict) -> dict[str, dict]:
    """value -> the first feature of that value (facts order)."""
    found = {}
    for value in _LANDMARKS:
        items = _feature_items(facts, value)
        if items:
            found[value] = items[0]
    return found


def _approximate(count: int) -> int:
    return int(5 * round(count / 5)) if count >= 20 else count


def _buildings_claim(facts: dict, side: str, rng: random.Random) -> Claim:
    count = int(facts.get("buildings", {}).get("count", 0))
    if count > 0 and rng.random() < 0.4:
        return Claim("building_count", str(_approximate(count)), None, side)
    return Claim("buildings", building_bucket(count), None, side)


def _tallest_claim(facts: dict, side: str, rng: random.Random, floors: bool | None = None) -> Claim | None:
    tallest = facts.get("buildings", {}).get("tallest")
    if not tallest:
        return None
    with_floors = rng.random() < 0.5 if floors is None else floors
    return Claim("tallest", str(int(tallest["floors"])) if with_floors else None, tallest["direction"], side)


def _green_claim(facts: dict, side: str) -> Claim:
    return Claim("green", green_bucket(float(facts.get("green_fraction", 0.0))), None, side)


def match_claims(facts: dict, rng: random.Random) -> list[Claim]:
    """2-4 claims (side ``both``) true for the location, from different groups, shuffled."""
    groups: list[list[Claim]] = [[_nearest_junction_claim(facts, "both")]]
    landmarks = _landmarks(facts)
    for value in rng.sample(sorted(landmarks), min(2, len(landmarks))):
        groups.append([Claim("feature", value, landmarks[value]["direction"], "both")])
    groups.append([_buildings_claim(facts, "both", rng)])
    tallest = _tallest_claim(facts, "both", rng)
    if tallest:
        groups.append([tallest])
    if not facts.get("water", {}).get("present", False):
        groups.append([Claim("feature", "water", None, "both", present=False)])
    groups.append([_green_claim(facts, "both")])
    chosen = rng.sample(groups, min(len(groups), rng.randint(2, 4)))
    claims = [group[0] for group in chosen]
    rng.shuffle(claims)
    return claims


def _discrepant(query_claim: Claim, sat_claim: Claim, query_facts: dict, sat_facts: dict) -> bool:
    return not check_claim(query_claim, sat_facts) or not check_claim(sat_claim, query_facts)


def discrepancy_pairs(query_facts: dict, sat_facts: dict, rng: random.Random) -> list[list[tuple[Claim, Claim]]]:
    """Groups of (query claim, satellite claim) discrepancies; each claim true on its own side."""
    groups: list[list[tuple[Claim, Claim]]] = []

    def add(group: list[tuple[Claim, Claim]]) -> None:
        good = [pair for pair in group if pair[0] is not None and pair[1] is not None
                and _discrepant(pair[0], pair[1], query_facts, sat_facts)]
        if good:
            groups.append(good)

    add([(_nearest_junction_claim(query_facts, "query"), _nearest_junction_claim(sat_facts, "satellite"))])
    q_marks, s_marks = _landmarks(query_facts), _landmarks(sat_facts)
    for value in _LANDMARKS:
        q_item, s_item = q_marks.get(value), s_marks.get(value)
        if q_item is None and s_item is None:
            continue
        if q_item is not None and s_item is not None:
            add([(Claim("feature", value, q_item["direction"], "query"),
                  Claim("feature", value, s_item["direction"], "satellite"))])
            continue
        side_facts = sat_facts if s_item is None else query_facts
        absent_value = value
        if value in ("lake", "river") and not side_facts.get("water", {}).get("present", False) and rng.random() < 0.5:
            absent_value = "water"
        if s_item is None:
            add([(Claim("feature", value, q_item["direction"], "query"),
                  Claim("feature", absent_value, None, "satellite", present=False))])
        else:
            add([(Claim("feature", absent_value, None, "query", present=False),
                  Claim("feature", value, s_item["direction"], "satellite"))])
    q_count = int(query_facts.get("buildings", {}).get("count", 0))
    s_count = int(sat_facts.get("buildings", {}).get("count", 0))
    if rng.random() < 0.4 and q_count > 0 and s_count > 0:
        add([(Claim("building_count", str(_approximate(q_count)), None, "query"),
              Claim("building_count", str(_approximate(s_count)), None, "satellite"))])
    else:
        add([(Claim("buildings", building_bucket(q_count), None, "query"),
              Claim("buildings", building_bucket(s_count), None, "satellite"))])
    with_floors = rng.random() < 0.5
    add([(_tallest_claim(query_facts, "query", rng, with_floors), _tallest_claim(sat_facts, "satellite", rng, with_floors))])
    add([(_green_claim(query_facts, "query"), _green_claim(sat_facts, "satellite"))])
    return groups


def build_answer(query_facts: dict, sat_facts: dict, match: bool, language: str, rng: Any = None,
                 modality: str | None = None) -> AnswerPlan:
    """The answer text together with the claims it states and the templates it used."""
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} unknown; use one of {LANGUAGES}")
    if not query_facts or (not match and not sat_facts):
        raise ValueError("make_answer needs the scene facts of the query (and, for a non-match, of the satellite tile)")
    rng = _as_random(rng)
    writer = _Writer(language, rng, modality)
    claims: list[Claim] = []
    sentences = []
    if match:
        for index, claim in enumerate(match_claims(query_facts, rng)):
            sentences.append(writer.connect(writer.match_sentence(claim), index))
            claims.append(claim)
    else:
        groups = discrepancy_pairs(query_facts, sat_facts, rng)
        chosen = rng.sample(groups, min(len(groups), rng.randint(2, 3)))
        pairs = [rng.choice(group) for group in chosen]
        rng.shuffle(pairs)
        for index, (query_claim, sat_claim) in enumerate(pairs):
            sentences.append(writer.connect(writer.mismatch_sentence(query_claim, sat_claim), index))
            claims.extend([query_claim, sat_claim])
        if not pairs:  # no checkable difference: say so without claims
            sentences.append(writer.pick(f"{language}_no_detail", {
                "en": ["The layouts do not line up in their details."], "zh": ["两者的布局细节对不上。"]}[language]))
    opening, closing = writer.opening(match), writer.closing(match)
    body = [s for s in [opening, *sentences, closing] if s]
    text = (" " if language == "en" else "").join(body) + "\n" + VERDICT_LINES[language][match]
    return AnswerPlan(text, claims, writer.templates, match, language)


def make_answer(query_facts: dict, sat_facts: dict, match: bool, language: str, rng: Any = None,
                modality: str | None = None) -> str:
    """An explanation reasoning from true scene facts, ending with the verdict line (see module doc)."""
    return build_answer(query_facts, sat_facts, match, language, rng, modality).text
