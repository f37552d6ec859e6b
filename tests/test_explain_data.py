"""GLEAM-X data: fact-grounded bilingual answers (parse back, faithful, varied), the example
builder with hard negatives, and the conversation JSON writer/importer (local and S3)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import numpy as np
import pytest

from gleam.data.schema import Sample, encode_jpeg
from gleam.explain import prompts
from gleam.explain.dataset import (ConversationError, ExplainExample, build_examples, hard_neighbours_from_embeddings,
                                   load_conversations, write_conversations)
from gleam.explain.prompts import Claim, check_claim, extract_claims, faithfulness, parse_answer


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    """Real scene facts of 24 locations of one synthetic world (rivers, lakes, sports fields...)."""
    from gleam.data.synth import WorldConfig, generate_world

    world = generate_world(WorldConfig(seed=3))
    return [world.scene_facts(location) for location in world.locations(24)]


def _jpeg(seed: int, size: int = 12) -> bytes:
    return encode_jpeg(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_samples(facts: list[dict], modalities=("uav", "ground")) -> list[Sample]:
    samples = []
    for i, f in enumerate(facts):
        location = f["location"]["location_id"]
        satellite = _jpeg(1000 + i)
        for j, modality in enumerate(modalities):
            samples.append(Sample(key=f"train-{location}-{modality}-0", location_id=location, modality=modality,
                                  query_image=_jpeg(i * 10 + j), satellite_image=satellite,
                                  latitude=f["location"]["lat"], longitude=f["location"]["lon"], split="train",
                                  source="gleam-synth", metadata={"facts": f}))
    return samples


def generated(facts, count, seed=0):
    """``count`` answer plans: alternating languages, half matches, modalities cycled."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        language, match = prompts.LANGUAGES[i % 2], (i // 2) % 2 == 0
        query = rng.choice(facts)
        sat = query if match else rng.choice([f for f in facts if f is not query])
        modality = ["uav", "streetmap", "panorama", "ground", None][i % 5]
        out.append((query, sat, prompts.build_answer(query, sat, match, language, rng, modality=modality)))
    return out


# ------------------------------------------------------------------------------ answers


def test_generated_answers_parse_back_with_their_verdict(facts):
    plans = generated(facts, 400)
    parsed = [parse_answer(plan.text) for _, _, plan in plans]
    assert sum(p.verdict == plan.match for p, (_, _, plan) in zip(parsed, plans)) == 400
    assert all(p.well_formed and p.language == plan.language for p, (_, _, plan) in zip(parsed, plans))
    zh = [plan.text for _, _, plan in plans if plan.language == "zh"]
    assert all(plan.endswith(("结论：匹配", "结论：不匹配")) for plan in zh)
    assert all(prompts.script_language(text) == "zh" for text in zh)


def test_claims_parse_back_exactly_and_are_faithful_to_their_facts(facts):
    plans = generated(facts, 400, seed=1)
    wrong_precisions = []
    rng = random.Random(5)
    for query, sat, plan in plans:
        claims = extract_claims(plan.text, plan.language)
        assert Counter(claims) == Counter(plan.claims), plan.text
        if plan.match:
            assert 2 <= len(claims) <= 4 and all(c.side == "both" for c in claims)
            result = faithfulness(plan.text, plan.language, query)
        else:
            assert len(claims) in (0, 2, 4, 6)
            assert Counter(c.side for c in claims)["query"] == len(claims) // 2
            result = faithfulness(plan.text, plan.language, query, sat)
        assert result["claims"] == len(claims)
        assert result["precision"] in (1.0, None) and result["false"] == 0
        wrong_q, wrong_s = rng.sample([f for f in facts if f is not query and f is not sat], 2)
        wrong = faithfulness(plan.text, plan.language, wrong_q, None if plan.match else wrong_s)
        if wrong["precision"] is not None:
            wrong_precisions.append(wrong["precision"])
    assert sum(len(plan.claims) for *_, plan in plans) > 1000
    assert np.mean(wrong_precisions) < 0.6  # the same answers checked against another location's facts


def test_phrasing_variety(facts):
    plans = generated(facts, 200, seed=2)
    templates = {t for *_, plan in plans for t in plan.templates}
    assert len(templates) >= 80
    assert len({plan.text for *_, plan in plans}) == 200
    for language in prompts.LANGUAGES:
        kinds = {t.split(":")[1] for t in templates if t.startswith(language)}
        assert {f"{language}_match" if language == "en" else "zh_match",
                f"{language}_mismatch" if language == "en" else "zh_mismatch"} <= kinds
        sentence_templates = {t for t in templates if t.startswith(f"{language}:{language}_m")}
        assert len(sentence_templates) >= 8  # match + mismatch sentence frames used
    first_claims = Counter(plan.claims[0].kind for *_, plan in plans if plan.claims)
    assert len(first_claims) >= 5  # shuffled claim order: every kind leads sometimes
    rng = random.Random(0)
    for language in prompts.LANGUAGES:
        phrasings = {prompts.instruction(language, "uav", rng) for _ in range(60)}
        assert len(phrasings) >= 5
    assert "drone" in prompts.instruction("en", "uav", 1) and "无人机" in prompts.instruction("zh", "uav", 1)


@pytest.mark.parametrize("text, verdict, language, well_formed", [
    ("Both images show a park to the north.\nVerdict: match", True, "en", True),
    ("Both images show a park to the north. **Verdict:** Not a match.", False, "en", True),
    ("The layouts differ a lot here. verdict - no match", False, "en", True),
    ("The layouts agree in every way. Verdict: same place", True, "en", True),
    ("The layouts agree in every way. My verdict is: match", True, "en", True),
    ("The layouts differ in every way. Verdict: different places", False, "en", True),
    ("Verdict: match", True, "en", False),  # no explanation
    ("Looks similar. Verdict: match. On reflection the roads differ. Verdict: no match", False, "en", False),
    ("Both images show a park to the north. Verdict: match. Extra words", True, "en", False),
    ("两张图中都有环岛，位置一致。\n结论：匹配", True, "zh", True),
    ("两张图中的道路布局完全不同。结论: 不匹配", False, "zh", True),
    ("两张图中的道路布局完全不同。结论是：不匹配", False, "zh", True),
    ("两张图中的道路布局完全一致。结论：是同一地点", True, "zh", True),
    ("Both images show the same park here.\n结论：匹配", True, "zh", False),  # script disagrees
    ("I am not sure what this shows.", None, "en", False),
    ("", None, None, False),
])
def test_parse_answer_variants(text, verdict, language, well_formed):
    parsed = parse_answer(text)
    assert (parsed.verdict, parsed.language, parsed.well_formed) == (verdict, language, well_formed)


def test_extract_claims_from_free_text():
    text = ("The drone image shows a roundabout to the north-east, but the satellite tile has a T-junction "
            "to the south. The tile has no water at all. Both views have densely packed buildings and the "
            "tallest building (6 floors) stands in the west. Verdict: no match")
    assert extract_claims(text, "en") == [
        Claim("junction", "roundabout", "north-east", "query"), Claim("junction", "T-junction", "south", "satellite"),
        Claim("feature", "water", None, "satellite", present=False),
        Claim("tallest", "6", "west", "both"), Claim("buildings", "dense", None, "both")]
    zh = "无人机图像中东北方有一个环岛，而卫星图中南侧有一条河流。两张图中都约有30栋建筑，植被茂密。结论：不匹配"
    assert extract_claims(zh, "zh") == [
        Claim("junction", "roundabout", "north-east", "query"), Claim("feature", "river", "south", "satellite"),
        Claim("building_count", "30", None, "both"), Claim("green", "lush", None, "both")]
    assert extract_claims("Image 1 has a car park to the east and a park in the northern part.", "en") == [
        Claim("feature", "parking", "east", "query"), Claim("feature", "park", "north", "query")]


def test_check_claim_direction_tolerance_and_kinds():
    facts = {"junctions": [{"type": "roundabout", "direction": "north-east"}],
             "features": [{"type": "water", "kind": "lake", "direction": "center"},
                          {"type": "sports_field", "kind": "tennis", "direction": "south"}],
             "buildings": {"count": 40, "tallest": {"floors": 7, "direction": "west"}},
             "green_fraction": 0.6}
    assert check_claim(Claim("junction", "roundabout", "north-east"), facts)
    assert check_claim(Claim("junction", "roundabout", "east"), facts)  # adjacent compass point
    assert check_claim(Claim("junction", "roundabout", "north"), facts)
    assert not check_claim(Claim("junction", "roundabout", "south-east"), facts)  # two points away
    assert not check_claim(Claim("junction", "crossroad", None), facts)
    assert check_claim(Claim("junction", "any", None, present=True), facts)
    assert check_claim(Claim("feature", "lake", "center"), facts) and not check_claim(Claim("feature", "lake", "north"), facts)
    assert check_claim(Claim("feature", "water", None, present=True), facts)
    assert check_claim(Claim("feature", "river", None, present=False), facts)
    assert check_claim(Claim("feature", "sports_field", "south-west"), facts)
    assert check_claim(Claim("buildings", "moderate"), facts) and not check_claim(Claim("buildings", "dense"), facts)
    assert check_claim(Claim("building_count", "45"), facts)  # within max(3, 15 %) = 6
    assert not check_claim(Claim("building_count", "47"), facts)
    assert check_claim(Claim("tallest", "7", "north-west"), facts) and not check_claim(Claim("tallest", "8", "west"), facts)
    assert check_claim(Claim("green", "lush"), facts) and not check_claim(Claim("green", "moderate"), facts)


# ------------------------------------------------------------------------------ building


def test_build_examples_positives_negatives_languages_determinism(facts):
    samples = make_samples(facts)
    samples.append(Sample(key="gallery-x", location_id="gallery-x", modality="satellite", satellite_image=_jpeg(9),
                          latitude=0.0, longitude=0.0, split="train", source="s"))
    samples.append(Sample(key="nofacts-uav", location_id="nofacts", modality="uav", query_image=_jpeg(8),
                          satellite_image=_jpeg(7), latitude=0.0, longitude=0.0, split="train", source="s"))
    ids = [f["location"]["location_id"] for f in facts]
    neighbours = {loc: [ids[(i + 1) % len(ids)], ids[(i + 2) % len(ids)]] for i, loc in enumerate(ids[:12])}
    examples = build_examples(samples, negatives_per_positive=2, hard_fraction=0.5, hard_neighbours=neighbours, seed=3)
    report = examples.report
    queries = len(facts) * 2
    assert report["positives"] == queries and report["skipped_no_facts"] == 1 and report["gallery_tiles_unused"] == 1
    negatives = [e for e in examples if not e.match]
    assert len(negatives) == 2 * queries == report["negatives_random"] + report["negatives_hard"]
    hard = [e for e in negatives if e.negative == "hard"]
    assert len(hard) == report["negatives_hard"] > 0
    assert report["negatives_hard"] + report["hard_fallback_random"] == queries  # half of the 2 * queries slots
    assert report["hard_fallback_random"] > 0  # locations 12..23 have no neighbours
    for e in hard:
        assert e.satellite_location_id in neighbours[e.location_id]
    assert all(e.satellite_location_id != e.location_id for e in negatives)
    assert all(e.satellite_location_id == e.location_id and e.negative is None for e in examples if e.match)
    per_query = Counter((e.id.split("--")[0]) for e in negatives)
    assert set(per_query.values()) == {2}
    assert len({(e.location_id, e.modality, e.satellite_location_id) for e in examples}) == len(examples)
    for language in ("en", "zh"):  # balanced per class
        assert sum(e.language == language for e in examples if e.match) == queries // 2
        assert sum(e.language == language for e in negatives) == queries
    by_location = {s.location_id: s.satellite_image for s in samples}
    for e in examples:
        assert parse_answer(e.answer).verdict == e.match and parse_answer(e.answer).language == e.language
        assert e.satellite_image == by_location[e.satellite_location_id]
        assert e.query_facts["location"]["location_id"] == e.location_id
        assert e.satellite_facts["location"]["location_id"] == e.satellite_location_id
        assert faithfulness(e.answer, e.language, e.query_facts, None if e.match else e.satellite_facts)["false"] == 0
    again = build_examples(samples, negatives_per_positive=2, hard_fraction=0.5, hard_neighbours=neighbours, seed=3)
    assert again == examples and again.report == report
    other = build_examples(samples, negatives_per_positive=2, hard_fraction=0.5, hard_neighbours=neighbours, seed=4)
    assert [e.answer for e in other] != [e.answer for e in examples]
    only_random = build_examples(samples, hard_fraction=0.0, seed=0)
    assert only_random.report["negatives_hard"] == 0 and only_random.report["hard_fallback_random"] == 0
    with pytest.raises(ValueError, match="hard_fraction"):
        build_examples(samples, hard_fraction=1.5)


def test_hard_neighbours_match_a_dense_computation():
    rng = np.random.default_rng(0)
    sat_ids = [f"L{i}" for i in range(30)]
    sat = rng.normal(size=(30, 8))
    query_ids = [f"L{i % 30}" for i in range(50)]  # several query rows for some locations
    query = sat[[i % 30 for i in range(50)]] + 0.8 * rng.normal(size=(50, 8))
    got = hard_neighbours_from_embeddings(query_ids, query, sat_ids, sat, k=4, chunk_size=7)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    sn = sat / np.linalg.norm(sat, axis=1, keepdims=True)
    dense = qn @ sn.T
    for location in set(query_ids):
        rows = [i for i, q in enumerate(query_ids) if q == location]
        best = {s: max(dense[r, j] for r in rows) for j, s in enumerate(sat_ids) if s != location}
        expected = sorted(best, key=lambda s: (-best[s], s))[:4]
        assert got[location] == expected
    assert all(loc not in got[loc] for loc in got)
    # repeated satellite ids per location: still k distinct wrong locations
    got2 = hard_neighbours_from_embeddings(query_ids, query, sat_ids + sat_ids, np.vstack([sat, sat]), k=4, chunk_size=16)
    assert got2 == got


# ------------------------------------------------------------------------------ conversations


def _small_examples(facts) -> list[ExplainExample]:
    return list(build_examples(make_samples(facts[:5]), negatives_per_positive=1, seed=1))


def test_write_load_round_trip_local(facts, tmp_path):
    examples = _small_examples(facts)
    url = write_conversations(examples, str(tmp_path / "gx"), "train")
    assert url == str(tmp_path / "gx" / "train.json")
    records = json.loads((tmp_path / "gx" / "train.json").read_text())
    assert records[0]["conversations"][0]["value"].startswith("<image>\n<image>\n")
    assert records[0]["images"] == [f"images/{examples[0].id}_q.jpg", f"images/{examples[0].id}_s.jpg"]
    assert len(os.listdir(tmp_path / "gx" / "images")) == 2 * len(examples)
    loaded = load_conversations(str(tmp_path / "gx"), split="train")
    assert list(loaded) == examples
    assert loaded.report.loaded == len(examples) and loaded.report.skipped_count == 0
    assert load_conversations(url) == examples


@pytest.mark.s3
def test_write_load_round_trip_s3(facts, s3_bucket):
    examples = _small_examples(facts)[:4]
    folder = f"{s3_bucket}/gleam-x"
    write_conversations(examples, folder, "val")
    assert load_conversations(folder, "val") == examples


def test_load_messages_style_jsonl_without_meta(facts, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "q.jpg").write_bytes(_jpeg(1))
    (tmp_path / "img" / "s.jpg").write_bytes(_jpeg(2))
    absolute = str(tmp_path / "img" / "s.jpg")
    answer_en = prompts.make_answer(facts[0], facts[1], False, "en", 0)
    answer_zh = prompts.make_answer(facts[0], facts[0], True, "zh", 0)
    records = [
        {"id": "a", "messages": [
            {"role": "system", "content": "You are a geo-localization assistant."},
            {"role": "user", "content": [{"type": "image", "image": "img/q.jpg"}, {"type": "image", "image": absolute},
                                         {"type": "text", "text": "Same place?"}]},
            {"role": "assistant", "content": answer_en}]},
        {"id": "b", "image": ["img/q.jpg", "img/s.jpg"], "messages": [
            {"role": "user", "content": "<image>\n<image>\n是否为同一地点？"},
            {"role": "assistant", "content": [{"type": "text", "text": answer_zh}]}]},
        {"conversations": [{"from": "human", "value": "<image><image>Same?"},
                           {"from": "gpt", "value": "Different roads. Verdict: no match"}],
         "images": ["img/q.jpg", "img/s.jpg"]},
    ]
    path = tmp_path / "user.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    loaded = load_conversations(str(path))
    assert [(e.id, e.match, e.language) for e in loaded] == [("a", False, "en"), ("b", True, "zh"), ("user-2", False, "en")]
    assert loaded[0].instruction == "Same place?" and loaded[1].instruction == "是否为同一地点？"
    assert loaded[0].query_image == _jpeg(1) and loaded[0].satellite_image == _jpeg(2)
    assert loaded[0].answer == answer_en and loaded[0].modality == "unknown" and loaded[0].query_facts is None
    assert loaded.report.inferred_from_answer == 3 and loaded.report.skipped_count == 0


def _write_records(tmp_path, records, name="data.json") -> str:
    (tmp_path / "q.jpg").write_bytes(_jpeg(1))
    (tmp_path / "s.jpg").write_bytes(_jpeg(2))
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def _record(rid, images=("q.jpg", "s.jpg"), human="<image>\n<image>\nSame place?", answer="Roads differ. Verdict: no match"):
    return {"id": rid, "images": list(images),
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}


def test_load_skips_and_counts_missing_or_broken_images(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    path = _write_records(tmp_path, [_record("ok"), _record("gone", ("q.jpg", "missing.jpg")),
                                     _record("bad", ("broken.jpg", "s.jpg")), _record("ok2")])
    loaded = load_conversations(path)
    assert [e.id for e in loaded] == ["ok", "ok2"]
    report = loaded.report
    assert (report.records, report.loaded, report.skipped_count) == (4, 2, 2)
    assert report.skipped[0]["index"] == 1 and report.skipped[0]["id"] == "gone"
    assert "missing image" in report.skipped[0]["reason"] and "satellite" in report.skipped[0]["reason"]
    assert "unreadable image" in report.skipped[1]["reason"] and "query" in report.skipped[1]["reason"]


def test_load_errors_name_file_record_field_and_fix(tmp_path):
    path = _write_records(tmp_path, [_record("ok"), _record("one", ("q.jpg",), human="<image>\nSame?")])
    with pytest.raises(ConversationError, match=r"data\.json: record 1 \(id 'one'\): field 'images': 1 image\(s\); "
                                                r"a GLEAM-X record needs exactly 2\. Fix:") as info:
        load_conversations(path)
    assert info.value.index == 1 and info.value.record_id == "one" and info.value.field == "images"
    path = _write_records(tmp_path, [_record("x", human="<image>\nSame?")], "placeholders.json")
    with pytest.raises(ConversationError, match=r"record 0 \(id 'x'\): field 'images': 2 image\(s\) but 1 '<image>'"):
        load_conversations(path)
    path = _write_records(tmp_path, [_record("v", answer="I cannot tell.")], "noverdict.json")
    with pytest.raises(ConversationError, match=r"field 'conversations\[1\]\.value': no verdict line.*meta\.match"):
        load_conversations(path)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"id": "a",\n   "images": [}\n]', encoding="utf-8")
    with pytest.raises(ConversationError, match=r"bad\.json: line 3: not valid JSON: .* at line 3, column 15"):
        load_conversations(str(bad))
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text(json.dumps(_record("a")) + "\n" + '{"id": "b", ' + "\n", encoding="utf-8")
    with pytest.raises(ConversationError, match=r"bad\.jsonl: line 2: not valid JSON"):
        load_conversations(str(bad_lines))
    path = _write_records(tmp_path, [{"id": "t", "images": ["q.jpg", "s.jpg"]}], "noturns.json")
    with pytest.raises(ConversationError, match=r"field 'conversations': missing"):
        load_conversations(path)
    with pytest.raises(ConversationError, match="no split was given"):
        load_conversations(str(tmp_path))
    with pytest.raises(ConversationError, match="file not found"):
        load_conversations(str(tmp_path / "nothing.json"))


def test_verdict_only_twins_round_trip_and_are_inferred_on_import(facts, tmp_path):
    samples = make_samples(facts)
    plain = build_examples(samples, seed=5)
    mixed = build_examples(samples, seed=5, verdict_only_fraction=0.5)
    twins = [e for e in mixed if e.task == "verdict"]
    # the explanation examples are untouched; about half of them get a label-only twin
    assert [e for e in mixed if e.task == "explain"] == list(plain)
    assert mixed.report["verdict_only_examples"] == len(twins) and 0.3 * len(plain) < len(twins) < 0.7 * len(plain)
    by_id = {e.id: e for e in plain}
    for twin in twins:
        source = by_id[twin.id.removesuffix("--verdict")]
        assert (twin.query_image, twin.satellite_image, twin.match, twin.language) == \
               (source.query_image, source.satellite_image, source.match, source.language)
        assert twin.answer == prompts.VERDICT_LINES[twin.language][twin.match]
        assert prompts.is_verdict_only(twin.answer) and not prompts.is_verdict_only(source.answer)
        assert twin.instruction != source.instruction and "{m}" not in twin.instruction
    assert {t.match for t in twins} == {True, False} and {t.language for t in twins} == {"en", "zh"}
    loaded = load_conversations(write_conversations(twins[:6], str(tmp_path / "gx"), "train"))
    assert list(loaded) == twins[:6]
    # user data without meta: the task is read off the answer
    path = _write_records(tmp_path, [_record("lab", answer="结论：不匹配"), _record("exp")], "noinfo.json")
    assert [(e.task, e.match, e.language) for e in load_conversations(path)] == \
           [("verdict", False, "zh"), ("explain", False, "en")]
    bad = _record("t")
    bad["meta"] = {"match": True, "task": "caption"}
    with pytest.raises(ConversationError, match=r"meta\.task.*unknown task 'caption'"):
        load_conversations(_write_records(tmp_path, [bad], "badtask.json"))
    with pytest.raises(ValueError, match="verdict_only_fraction"):
        build_examples(samples, verdict_only_fraction=2.0)
