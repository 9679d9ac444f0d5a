"""A small byte-level BPE tokenizer for the testbed models, built offline.

It is trained with the ``tokenizers`` library on a short fixed English text (the
trainer is deterministic), so any string encodes (256 byte symbols are always in
the vocabulary) and the same build gives the same ``tokenizer.json``. It carries
the special tokens of the Qwen-VL families, and the chat templates below render
one user message ``[image, question]`` the way the real Qwen-VL templates do.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import TokenizersBackend

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

VOCAB_SIZE = 1024

_CORPUS = """\
What is in the image? Describe the picture in one sentence.
How many people are standing near the red car on the left side of the street?
The photo shows a small brown dog sleeping on a blue sofa next to a window.
Read the text on the sign. What colour is the traffic light at the corner?
A chart with three bars: the first is tall, the second is short, the third is medium.
Where is the cat? The cat is under the wooden table, behind the green chair.
Is there a bicycle in this scene? Yes, a bicycle leans against the white wall.
Answer the question about the image with a single word or a short phrase.
The kitchen has a stove, a sink, two cups, a bowl of fruit and a clock above the door.
Which animal is bigger, the horse or the sheep? The horse is bigger than the sheep.
Count the windows of the building. There are twelve windows on four floors.
The sky is cloudy and the water of the lake is calm; a boat floats near the shore.
What time does the clock show? It shows half past three in the afternoon.
Find the number written on the jersey of the player who holds the ball.
"""

# Qwen2-VL and Qwen2.5-VL add a default system turn; Qwen3-VL does not.
_DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
_TURNS = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(with_default_system: bool) -> str:
    """Jinja chat template in the Qwen ``<|im_start|>role ... <|im_end|>`` format."""
    return (_DEFAULT_SYSTEM if with_default_system else "") + _TURNS


def build_tokenizer(words: tuple[str, ...] = ()) -> TokenizersBackend:
    """The testbed tokenizer: ``VOCAB_SIZE`` BPE tokens (fewer if the corpus runs out) + the special tokens.

    ``words`` become single tokens wherever they stand as whole words (the answer
    words of a task, so that an answer is one token and then the end token).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in words])
    return TokenizersBackend(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        padding_side="left",
    )
