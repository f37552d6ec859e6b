"""GLEAM-X model side on the tiny offline Qwen2.5-VL: tokenizer, build/load, label masking, LoRA
trainability, a short overfit with greedy generation, adapter save/load and merging.

The tiny model is built once per module; timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from gleam.explain.model import (
    IGNORE_INDEX, IM_END, LoraSettings, TinyVLMSpec, VLMConfig, build_messages, build_tiny_vlm,
    collate, generate, load_adapter, load_trainable_state_dict, load_vlm, lora_target_regex,
    merge_and_save, resolve_model_path, save_adapter, train_tokenizer, trainable_state_dict,
    trainable_summary)

IMAGE_SIZE = 56  # 4x4 patches of 14 px, merged 2x2: 4 tokens per image
INSTRUCTION = "Is the query taken at the satellite location? 查询图像是否拍摄于卫星图像所示的位置？"
ANSWERS = [
    "Yes, same place: the river bends north. 是同一地点。",
    "No, different place: no bridge here. 不是同一地点。",
    "Yes, same place: the roundabout matches. 是，环岛一致。",
    "No, different place: the lake is missing. 否，湖泊缺失。",
    "Yes, same place: the railway crosses the road. 是，铁路穿过道路。",
    "No, different place: the forest is denser. 否，森林更密。",
]


@dataclass
class Example:
    query_image: bytes
    satellite_image: bytes
    instruction: str
    answer: str | None = None


def corpus() -> list[str]:
    """A few hundred English and Chinese sentences about scenes seen from above."""
    subjects = [("river", "河流"), ("road", "道路"), ("bridge", "桥梁"), ("lake", "湖泊"),
                ("forest", "森林"), ("railway", "铁路"), ("roundabout", "环岛"), ("tower", "塔楼"),
                ("field", "田地"), ("harbour", "港口")]
    relations = [("bends north", "向北弯曲"), ("crosses the road", "穿过道路"),
                 ("is missing", "缺失"), ("matches", "一致"), ("is denser", "更密"),
                 ("lies east of the square", "位于广场东侧")]
    sentences = []
    for english, chinese in subjects:
        for relation_en, relation_zh in relations:
            sentences.append(f"The {english} {relation_en}; this is the same place.")
            sentences.append(f"{chinese}{relation_zh}，这是同一地点。")
            sentences.append(f"No, different place: the {english} {relation_en}. 不是同一地点。")
    return sentences + ANSWERS + [INSTRUCTION]


def png(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def examples(count: int = len(ANSWERS)) -> list[Example]:
    return [Example(png(index), png(100 + index), INSTRUCTION, ANSWERS[index])
            for index in range(count)]


@pytest.fixture(scope="module")
def timings():
    found: dict[str, float] = {}
    yield found
    print("\nexplain model timings:", {key: round(value, 4) for key, value in found.items()})


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, timings):
    start = time.perf_counter()
    path = resolve_model_path(VLMConfig(cache_dir=str(tmp_path_factory.mktemp("vlm"))), corpus())
    timings["build_s"] = time.perf_counter() - start
    return path


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{key: value for key, value in batch.items() if key != "labels"}).logits


def test_tokenizer_round_trips_bilingual_text(tmp_path):
    tokenizer = train_tokenizer(corpus(), 1000, str(tmp_path))
    for text in ["The river bends north. 河流向北弯曲，道路在东侧！", "混合 mixed 文本\n  two  spaces",
                 "未见过的字：龘靐 and emoji 🛰️", "  leading and trailing  "]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer("河流向北弯曲")["input_ids"]) < len("河流向北弯曲".encode())  # merges learned
    for token in ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"]:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == "<|endoftext|>"
    rendered = tokenizer.apply_chat_template(build_messages("Same?", "Yes."), tokenize=False)
    assert rendered == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                        "<|vision_start|><|image_pad|><|vision_end|>Same?<|im_end|>\n"
                        "<|im_start|>assistant\nYes.<|im_end|>\n")


def test_build_is_idempotent_and_loads_by_path(tiny_path, tmp_path):
    weights = os.path.join(tiny_path, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    again = resolve_model_path(VLMConfig(cache_dir=os.path.dirname(tiny_path)), corpus())
    assert again == tiny_path and os.stat(weights).st_mtime_ns == stamp

    model, processor = load_vlm(tiny_path)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not any(parameter.requires_grad for parameter in model.parameters())
    summary = trainable_summary(model)
    assert 1_000_000 < summary["total"] < 2_500_000 and summary["trainable"] == 0
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for size, per_image in [(56, 4), (112, 16)]:
        batch = collate(examples(1), processor, size, 512, train=False)
        assert int((batch["input_ids"] == image_token).sum()) == 2 * per_image
        assert batch["image_grid_thw"].tolist() == [[1, size // 14, size // 14]] * 2

    bfloat16, _ = load_vlm(tiny_path, dtype="bfloat16")
    output = bfloat16(**collate(examples(1), processor, IMAGE_SIZE, 256))
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.loss)

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "config.json").write_text("{half written")
    build_tiny_vlm(str(stale), corpus()[:50], TinyVLMSpec(vocab_size=400))
    assert load_vlm(str(stale))[0].config.text_config.vocab_size == 400

    from transformers import BertConfig
    BertConfig(num_hidden_layers=1).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not an image-text-to-text"):
        load_vlm(str(tmp_path / "bert"))


def test_collate_labels_only_the_answer(tiny_path, timings):
    model, processor = load_vlm(tiny_path)
    batch = collate(examples(3), processor, IMAGE_SIZE, 256)
    tokenizer = processor.tokenizer
    for row, answer in enumerate(ANSWERS[:3]):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert tokenizer.decode(kept) == answer + IM_END
        positions = (labels != IGNORE_INDEX).nonzero().flatten()  # one contiguous span
        assert positions.tolist() == list(range(int(positions[0]), int(positions[-1]) + 1))
        assert torch.equal(kept, batch["input_ids"][row, positions])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    timings["tokens_per_sample"] = float(batch["attention_mask"].sum(1).float().mean())
    answer_tokens = (batch["labels"] != IGNORE_INDEX).sum(1).float()
    timings["answer_tokens_per_sample"] = float(answer_tokens.mean())
    assert torch.isfinite(model(**batch).loss)

    prompt_length = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])
    cut = collate(examples(1), processor, IMAGE_SIZE, prompt_length + 3)
    assert cut["input_ids"].shape[1] == prompt_length + 3
    assert (cut["labels"] != IGNORE_INDEX).sum() == 3
    with pytest.raises(ValueError, match="max_length=.* too small.*image tokens"):
        collate(examples(1), processor, IMAGE_SIZE, prompt_length - 1)

    prompts = collate(examples(2), processor, IMAGE_SIZE, 256, train=False)
    assert "labels" not in prompts and (prompts["attention_mask"][:, -1] == 1).all()  # left padded


def test_lora_trains_only_adapters_and_projector(tiny_path):
    assert lora_target_regex(LoraSettings()).startswith("(?:.*\\.)?language_model\\.")
    model, processor = load_vlm(tiny_path, LoraSettings(r=4, train_projector=True))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert not any("lora_" in name and "visual" in name for name in trainable)
    assert any("language_model" in name and "q_proj.lora_A" in name for name in trainable)
    assert any("merger.modules_to_save" in name for name in trainable)

    frozen = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
              if not parameter.requires_grad}
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
              if parameter.requires_grad}
    batch = collate(examples(2), processor, IMAGE_SIZE, 256)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    current = dict(model.named_parameters())
    assert all(torch.equal(current[name], value) for name, value in frozen.items())
    changed = {name for name, value in before.items() if not torch.equal(current[name], value)}
    assert any("lora_A" in name for name in changed) and any("lora_B" in name for name in changed)
    assert any("modules_to_save" in name for name in changed)

    # The vision tower has gate/up/down_proj too: the scope keeps LoRA on the language model.
    mlp = LoraSettings(r=4, target_modules=["q_proj", "gate_proj", "down_proj"])
    adapters_only, _ = load_vlm(tiny_path, mlp, gradient_checkpointing=True)
    adapter_names = [name for name, parameter in adapters_only.named_parameters()
                     if parameter.requires_grad]
    assert len(adapter_names) == 2 * 3 * 2  # (A, B) x 3 targets x 2 layers
    assert all("lora_" in name and "language_model" in name for name in adapter_names)
    adapters_only.train()
    adapters_only(**batch).loss.backward()  # activation checkpointing with frozen embeddings
    assert all(parameter.grad is not None for parameter in adapters_only.parameters()
               if parameter.requires_grad)
    projector_only, _ = load_vlm(tiny_path, LoraSettings(enabled=False, train_projector=True))
    names = [name for name, parameter in projector_only.named_parameters()
             if parameter.requires_grad]
    assert names and all(".merger." in name for name in names)
    everything, _ = load_vlm(tiny_path, LoraSettings(enabled=False, full_finetune=True))
    assert all(parameter.requires_grad for parameter in everything.parameters())
    with pytest.raises(ValueError, match="exclusive"):
        load_vlm(tiny_path, LoraSettings(full_finetune=True))


def test_overfit_then_generate_the_answers(tiny_path, timings):
    torch.manual_seed(0)
    model, processor = load_vlm(tiny_path, LoraSettings(r=8, alpha=16, dropout=0.0,
                                                        train_projector=True))
    batch = collate(examples(), processor, IMAGE_SIZE, 256)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-2, weight_decay=0.0)
    model.train()
    losses = []
    start = time.perf_counter()
    for _ in range(40):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    timings["train_step_s(batch 6)"] = (time.perf_counter() - start) / len(losses)
    timings["loss_first"], timings["loss_last"] = losses[0], losses[-1]
    assert losses[-1] < losses[0] / 5

    start = time.perf_counter()
    outputs = generate(model, processor, examples(), IMAGE_SIZE, max_new_tokens=40)
    timings["generate_s(batch 6, 40 new)"] = time.perf_counter() - start
    verdicts = [output.split(":")[0] == answer.split(":")[0]
                for output, answer in zip(outputs, ANSWERS)]
    assert sum(verdicts) >= 5, outputs
    assert any(output == answer for output, answer in zip(outputs, ANSWERS)), outputs
    singles = [generate(model, processor, [example], IMAGE_SIZE, max_new_tokens=40)[0]
               for example in examples()[:2]]
    assert singles == outputs[:2]  # left padding does not change the result


def test_adapter_save_load_and_merge_keep_logits(tiny_path, tmp_path, timings):
    torch.manual_seed(1)
    model, processor = load_vlm(tiny_path, LoraSettings(r=4, dropout=0.0, train_projector=True))
    with torch.no_grad():  # a non-trivial adapter without training: perturb every trainable weight
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    batch = collate(examples(2), processor, IMAGE_SIZE, 256)
    expected = logits(model, batch)
    base, _ = load_vlm(tiny_path)
    assert not torch.allclose(logits(base, batch), expected, atol=1e-3)

    state = trainable_state_dict(model)
    fresh, _ = load_vlm(tiny_path, LoraSettings(r=4, dropout=0.0, train_projector=True))
    load_trainable_state_dict(fresh, state)
    torch.testing.assert_close(logits(fresh, batch), expected)

    start = time.perf_counter()
    adapter = save_adapter(model, processor, str(tmp_path / "adapter"))
    reloaded, reloaded_processor = load_adapter(tiny_path, adapter)
    timings["adapter_save_load_s"] = time.perf_counter() - start
    assert not any(parameter.requires_grad for parameter in reloaded.parameters())
    torch.testing.assert_close(logits(reloaded, batch), expected)
    assert reloaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()

    start = time.perf_counter()
    merged_path = merge_and_save(model, processor, str(tmp_path / "merged"))
    merged, _ = load_vlm(merged_path, LoraSettings(enabled=False))
    timings["merge_save_load_s"] = time.perf_counter() - start
    assert type(merged).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-4, rtol=1e-4)
