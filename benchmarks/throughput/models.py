"""The models and data a benchmark run uses (``--model tiny|world|compute``), built offline."""

from __future__ import annotations

from pathlib import Path

from throughput import SEED

# --model compute: a random LLaVA big enough for compute, not Python overhead, to dominate on CPU.
COMPUTE_TEXT = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 12, "num_attention_heads": 8}
COMPUTE_VISION = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "image_size": 112, "patch_size": 14}  # 64 image tokens


def build_compute_llava(path: Path) -> Path:
    """A random LlavaForConditionalGeneration of COMPUTE_TEXT / COMPUTE_VISION size, written to
    ``path`` with the tiny model's tokenizer and (resized) processor; seeded, offline."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from mmke_eval.testing import tiny_llava as T

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = T.build_tokenizer()
    processor = T.build_processor(tokenizer, image_size=COMPUTE_VISION["image_size"], patch_size=COMPUTE_VISION["patch_size"])
    vision = CLIPVisionConfig(projection_dim=COMPUTE_VISION["hidden_size"], **COMPUTE_VISION)
    text = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=COMPUTE_TEXT["num_attention_heads"],
        max_position_embeddings=T.MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **COMPUTE_TEXT,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(T.IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaForConditionalGeneration(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def prepare_model_and_data(model: str, tmp: Path, n_cases: int) -> tuple[Path, Path]:
    """(model folder, MMKE-style data root) for ``--model``."""
    from mmke_tasks.mmke.fixture import write_mmke_fixture

    if model == "world":
        from mmke_eval.mini import WORLD_MODEL_DIR
        from mmke_eval.mini.generate import generate

        return WORLD_MODEL_DIR, generate(tmp / "mmke_mini", seed=0)
    if model == "compute":
        model_dir = build_compute_llava(tmp / "compute_llava")
    else:
        from mmke_eval.testing.tiny_llava import build_tiny_llava

        model_dir = build_tiny_llava(tmp / "tiny_llava")
    return model_dir, write_mmke_fixture(tmp / "data", n_cases=n_cases)
