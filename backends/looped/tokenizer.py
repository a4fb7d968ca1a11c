"""A byte-level tokenizer for small looped models (no download, any text).

Every UTF-8 byte is one token (GPT-2's byte-to-unicode alphabet, no merges), plus
a few special tokens; it loads with ``AutoTokenizer`` like any fast tokenizer.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>")

# Messages -> text, for checkpoints that ship no chat template of their own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer(
    extra_tokens: list[str] | tuple[str, ...] = (), chat_template: str = DEFAULT_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """A fast tokenizer with 256 byte tokens, then :data:`SPECIAL_TOKENS`, then
    ``extra_tokens``: whole strings that become one token wherever they occur (a
    small model can then read a fact such as ``"q=a"`` at one position).

    Example::

        tok = byte_tokenizer()
        tok("héllo")["input_ids"]   # 6 ids: one per UTF-8 byte
        tok.save_pretrained("ckpt/")
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=_byte_of))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    if extra_tokens:
        from tokenizers import AddedToken

        core.add_tokens([AddedToken(t, normalized=False) for t in extra_tokens])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", eos_token="<|eos|>", padding_side="left")
    tok.chat_template = chat_template
    return tok


def _byte_of(ch: str) -> int:
    """Position of a byte-level character: token id == byte value."""
    return _BYTE_TABLE[ch]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (what ByteLevel uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_TABLE = {ch: b for b, ch in _bytes_to_unicode().items()}
