"""A tiny random LLaVA (real transformers classes) built offline, for tests and smoke runs.

The folder written by ``build_tiny_llava`` loads like a Hub checkpoint, e.g. through lmms-eval's
``llava_hf`` backend with ``pretrained=<path>,device=cpu,dtype=float32``. Everything is seeded, so
two builds write the same weights and the same tokenizer. No torchvision and no Hub are needed:
the CLIP image processor falls back to its PIL backend in transformers 5.x.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

# Small on purpose: 32 px images with 8 px patches give 16 image tokens ("default" strategy drops CLS).
IMAGE_SIZE = 32
PATCH_SIZE = 8
VOCAB_SIZE = 1000
# IKE prompts carry 25 demonstrations; keep room for them.
MAX_POSITIONS = 2048
SEED = 0

# "USER: <image>\n{text} ASSISTANT:" -- the shape of llava-hf's LLaVA-1.5 template, kept minimal.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_SENTENCES = [
    "New Fact: What is shown in the image? A red circle on a white background.",
    "Prompt: Who is the person in the picture? The person is a famous painter from Paris.",
    "The Eiffel Tower is in Paris, the capital city of France.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "Question: What color is the car? Short answer: blue.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "This building was designed by an architect who lived in London and Rome.",
    "Which country does this flag belong to? It belongs to a small island nation.",
    "The dog is sitting on the grass and looking at the camera.",
    "Where does this person live? She lives in a house by the sea.",
    "What does this person like to eat? He likes to eat apples, bread and cheese.",
    "The museum opened in the nineteenth century and holds many old paintings.",
    "How many people are in the photo? There are three people standing together.",
    "The mountain is covered with snow in winter and with flowers in summer.",
]
_WORDS = (
    "the a an of in on at to from with by for and or but is was are were be been has have had "
    "this that these those it its he she they we you his her their our what which who where when why how "
    "image picture photo person man woman child dog cat bird car tree house city country river sea "
    "red blue green yellow black white small large old new first last best famous known called named "
    "lives works likes eats plays writes paints sings built made found shown located born died "
    "question answer prompt fact new knowledge entity visual semantic user specific edit"
).split()


def _corpus() -> list[str]:
    # Fixed sentences plus deterministic word triples: enough merges for a 1,000-token vocabulary.
    triples = (" ".join(t) for t in itertools.islice(itertools.product(_WORDS[:40], _WORDS[40:80], _WORDS[80:]), 3000))
    return _SENTENCES * 20 + list(triples)


def build_tokenizer():
    """A byte-level BPE trained on a small English corpus; BOS is added, EOS is not (LLaMA style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=[IMAGE_TOKEN],
        model_input_names=["input_ids", "attention_mask"],
        padding_side="right",
        model_max_length=MAX_POSITIONS,
    )


def build_processor(tokenizer, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def build_tiny_llava(path: Path) -> Path:
    """Write a tiny random LlavaForConditionalGeneration + LlavaProcessor to ``path``; return it."""
    from transformers import LlavaForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer)
    # Seed locally so that building the fixture leaves the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_onevision():
    """A tiny random LlavaOnevisionForConditionalGeneration and its processor, in memory only.

    In transformers 5.x ``LlavaOnevisionProcessor`` requires a video processor, which requires
    torchvision. Without torchvision the processor is built with ``video_processor=None`` by
    relaxing transformers' class check for that one argument during construction; such a
    processor handles images (all the adapter needs) but cannot be saved. Returns (model, processor).
    """
    from unittest import mock

    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        ProcessorMixin,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, "<video>"]})
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints,
    )
    strict = ProcessorMixin.check_argument_for_proper_class

    def allow_no_video(self, name, argument):
        return None if (name == "video_processor" and argument is None) else strict(self, name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", allow_no_video):
        processor = LlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
            num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9", chat_template=CHAT_TEMPLATE,
        )
    vision = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
    return model, processor
