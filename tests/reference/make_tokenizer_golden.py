#!/usr/bin/env python3
"""Golden data for data::HfTokenizer (tests/unit-tokenizer.cpp): trains small tokenizers of each
supported family with the `tokenizers` package on a multilingual corpus, and writes for each its
tokenizer.json (+ tokenizer_config.json) and the ids `tokenizers` gives for test strings (with and
without special tokens) and the text it decodes them to, into fixtures/tokenizers/.
Chat templates: the strings transformers' apply_chat_template renders for a few conversations.
    pip install tokenizers transformers   (transformers only for the chat templates)
    python3 tests/reference/make_tokenizer_golden.py
Deterministic: the trainers are single-threaded here (RAYON_NUM_THREADS=1) and the corpus is fixed.
"""
import json
import os
import shutil

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "tokenizers")
FUZZ_SEEDS = os.path.join(HERE, "..", "fuzz", "seeds", "tokenizer")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it's lazy, isn't it?",
    "I don't know what you're doing, but we'll see. She'd said they've gone. I'm here!",
    "Café, naïve, résumé, jalapeño, Zoë, Ångström, façade, Øresund, Łódź, Ærø, straße.",
    "Les élèves étudient à l'école; où est la bibliothèque? Ça va très bien, merci.",
    "Der Bär läuft über die Brücke. Größe, Übermut, Äpfel und Öl.",
    "El niño comió piñas en el año 2023. ¿Qué tal? ¡Olé!",
    "Привет, как дела? Москва — столица России. Ёлка, йогурт, щука.",
    "Быстрая коричневая лиса прыгает через ленивую собаку 12345 раз.",
    "你好，世界！我喜欢学习中文。北京是中国的首都。",
    "日本語のテキストです。東京タワーは高い。ひらがなとカタカナ。",
    "한국어 문장입니다. 서울은 큰 도시입니다.",
    "مرحبا بالعالم. اللغة العربية جميلة جدا.",
    "Γειά σου κόσμε! Ελληνικά γράμματα: αβγδε ΑΒΓΔΕ.",
    "שלום עולם, זה טקסט בעברית.",
    "Emoji: 😀 😃 😄 👍🏽 🇫🇷 👨‍👩‍👧‍👦 🧑‍💻 ❤️ 🏳️‍🌈 ✨🎉",
    "Numbers: 0 1 12 123 1234 12345 3.14159 2,718 1e10 007 9999999999",
    "Whitespace   runs\tand\ttabs\n\nnew lines\r\n  indented\n\t\tdouble tab    end   ",
    "MiXeD CaSe WoRdS and ALLCAPS and lowercase and CamelCaseWords HTTPServer.",
    "Punctuation!!! ... ??? (parens) [brackets] {braces} <angle> \"quotes\" 'single' `tick` ~tilde~ @at #hash $dollar %percent ^caret &amp *star",
    "E-mail: someone@example.com, URL: https://example.org/path?q=1&r=two#frag",
    "def main():\n    return [x ** 2 for x in range(10) if x % 2 == 0]\n",
    "Ünïcödé ñ ç ğ ş ı İ ő ű ā ē ī ō ū ǎ ě ǐ ǒ ǔ ǖ ǘ ǚ ǜ",
    "hello world hello world hello there world wide web",
    "lower lowest newer newest wider widest tall taller tallest",
]

# Strings to encode: the corpus, and strings it does not contain.
TEST_STRINGS = CORPUS + [
    "",
    " ",
    "a",
    "Hello, World!",
    "  leading and trailing spaces  ",
    "unseen words: xylophone quixotic zephyr jackdaw",
    "Nüchtern übersetzt: Änderungen ergeben Ölpreise.",
    "Съешь же ещё этих мягких французских булок.",
    "我们明天去上海。",
    "🤖🦄🫠 new emoji and 👩🏾‍🔬",
    "don't won't can't shouldn't y'all I'M SHOUTING DON'T",
    "digits 1234567890 and 00000 and 3.14",
    "tabs\t\t\tand\n\n\nnewlines \r\n\r\n end",
    "mixed: abc АБВ αβγ 中文 123 !!!",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ﬁ ligature",
    "e\u0301 combining acute, A\u030a ring, n\u0303",
    "zero\u200bwidth\u200dspace\ufeffbom",
    "control\x01chars\x7fhere",
    "x" * 150,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

# Random strings over a pool of troublesome characters (seeded): letters of several scripts, marks,
# Hangul, digits, whitespace of every kind, joiners, format characters, symbols, emoji, apostrophes.
POOL = ("aeiouxyzAEIOUXYZ'’-_.,;:!?()[]{}<>\"#$%&*+/=@^`|~0123456789 \t\n\r\u00a0\u2003\u3000\u180e"
        "\u200b\u200c\u200d\ufeff\u00e9\u00c9\u0301\u0308\u0327\u00df\u0130\u0131\u03a3\u03c2\u0416\u0436"
        "\u4e2d\u6587\u3042\u30a2\uac00\ud55c\u1100\u1161\u0627\u0644\u05d0\u0e01\u0e31\u0967\u0966"
        "\u00bd\u2160\u00b2\u2122\u20ac\u00a9\U0001F600\U0001F44D\U0001F3FD\u2764\ufe0f\U0001F1EB\uff21\ufb01")


def random_strings(n, seed=1234):
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


TEST_STRINGS += random_strings(40)

# Invalid UTF-8 byte strings: distill replaces each maximal invalid subpart with U+FFFD, as Python's
# bytes.decode("utf-8", "replace") does; the expected ids are those of the replaced text.
INVALID_UTF8 = [
    b"abc\xffdef",
    b"\xc3\x28 bad two-byte",
    b"\xe2\x82 truncated three-byte \xe2\x82\xac ok",
    b"\xf0\x9f\x98 truncated emoji",
    b"\xed\xa0\x80 surrogate",
    b"\xc0\xaf overlong",
    b"\x80\x80\x80 lone continuations",
    b"end \xf4\x90\x80\x80 beyond U+10FFFF",
]

SPECIAL_INLINE = [
    "{bos}Hello{eos}",
    "text with {eos} in the middle {eos}",
    "{bos}{bos} twice",
]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


def golden(tok, specials, name):
    cases = []
    strings = list(TEST_STRINGS)
    strings += [s.format(bos=specials.get("bos", ""), eos=specials.get("eos", "")) for s in SPECIAL_INLINE]
    for s in strings:
        cases.append({"text": s})
    for b in INVALID_UTF8:
        cases.append({"bytes_hex": b.hex(), "text": b.decode("utf-8", "replace")})
    for c in cases:
        with_special = tok.encode(c["text"], add_special_tokens=True).ids
        without = tok.encode(c["text"], add_special_tokens=False).ids
        c["ids"] = with_special
        c["ids_no_special"] = without
        c["decoded"] = tok.decode(with_special, skip_special_tokens=False)
        c["decoded_skip_special"] = tok.decode(with_special, skip_special_tokens=True)
    return cases


def train(tok, trainer):
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def gpt2_tokenizer(vocab_size=600):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train(tok, tr)
    return tok, {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}, {
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_tokenizer(vocab_size=1000):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train(tok, tr)
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok, {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}, {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


def qwen2_tokenizer(vocab_size=900):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train(tok, tr)
    return tok, {"bos": "<|im_start|>", "eos": "<|im_end|>"}, {
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def llama2_tokenizer(vocab_size=700):
    # SentencePiece-style BPE as Llama-2/TinyLlama/Phi-3's tokenizer.json: Prepend + Replace, no
    # pre-tokenizer, byte fallback, merges by rank, a decoder that undoes it.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                             show_progress=False, limit_alphabet=200)
    train(tok, tr)
    # byte tokens are ordinary vocabulary entries in Llama's file, not added tokens
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<0x")]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok, {"bos": "<s>", "eos": "</s>"}, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                 "pad_token": None}


def llama2_metaspace_tokenizer(vocab_size=500):
    # The older form of the same family: a Metaspace pre-tokenizer (prepend_scheme "first") and decoder.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                             show_progress=False, limit_alphabet=150)
    train(tok, tr)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<0x")]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                       special_tokens=[("<s>", 1), ("</s>", 2)])
    return tok, {"bos": "<s>", "eos": "</s>"}, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def bert_tokenizer(lowercase, vocab_size=1200):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tr = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                   show_progress=False, limit_alphabet=400)
    train(tok, tr)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return tok, {"bos": "[CLS]", "eos": "[SEP]"}, {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                                   "unk_token": "[UNK]", "mask_token": "[MASK]"}


def roberta_tokenizer(vocab_size=500):
    # RoBERTa: byte-level BPE with a prefix space and RobertaProcessing; a normalized added token with lstrip.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train(tok, tr)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", normalized=True), AddedToken("qq", single_word=True)])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=True)
    return tok, {"bos": "<s>", "eos": "</s>"}, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                 "pad_token": "<pad>", "mask_token": "<mask>"}


def digits_tokenizer(vocab_size=300):
    # Digits + Whitespace pre-tokenizers, WordLevel-free BPE with continuing-subword prefix and end-of-word suffix.
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], continuing_subword_prefix="##",
                             end_of_word_suffix="</w>", show_progress=False, limit_alphabet=120)
    train(tok, tr)
    return tok, {}, {"unk_token": "[UNK]"}


FAMILIES = {
    "gpt2": gpt2_tokenizer,
    "llama3": llama3_tokenizer,
    "qwen2": qwen2_tokenizer,
    "llama2": llama2_tokenizer,
    "llama2_metaspace": llama2_metaspace_tokenizer,
    "bert_uncased": lambda: bert_tokenizer(True),
    "bert_cased": lambda: bert_tokenizer(False),
    "roberta": roberta_tokenizer,
    "digits_bpe": digits_tokenizer,
}

# ---- chat templates, as published in the models' tokenizer_config.json (written from the official
# templates; transformers renders them here) ----
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
                 "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
                 "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
                 "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "  Hi there  "}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "Réponds en français."}, {"role": "user", "content": "Bonjour 👋"},
     {"role": "assistant", "content": "Salut !"}, {"role": "user", "content": "Ça va ?"}],
]


def chat_goldens():
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        print("transformers not installed: chat template goldens not written")
        return None
    base = Tokenizer.from_file(os.path.join(OUT, "llama3", "tokenizer.json"))
    out = []
    for name, template, bos, eos in [("chatml", CHATML_TEMPLATE, None, "<|im_end|>"),
                                     ("qwen2", QWEN2_TEMPLATE, None, "<|im_end|>"),
                                     ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
                                     ("phi3", PHI3_TEMPLATE, "<s>", "<|endoftext|>")]:
        fast = PreTrainedTokenizerFast(tokenizer_object=base, bos_token=bos, eos_token=eos)
        rendered = []
        for conv in CONVERSATIONS:
            rendered.append(fast.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=True))
        out.append({"name": name, "chat_template": template, "bos_token": bos, "eos_token": eos,
                    "expected": rendered})
    return {"conversations": CONVERSATIONS, "templates": out}


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name, make in FAMILIES.items():
        tok, specials, config = make()
        d = os.path.join(OUT, name)
        os.makedirs(d)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
        write_json(os.path.join(d, "tokenizer_config.json"), config)
        # reload from the file, as distill does
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        cases = golden(tok, specials, name)
        vocab = tok.get_vocab(with_added_tokens=True)
        write_json(os.path.join(d, "golden.json"), {
            "vocab_size": max(vocab.values()) + 1,
            "specials": {k: tok.token_to_id(v) for k, v in specials.items()},
            "cases": cases})
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(cases)} cases")
    chat = chat_goldens()
    if chat is not None:
        write_json(os.path.join(OUT, "chat_templates.json"), chat)
    # fuzz seeds: a small tokenizer of each model type (the fuzz target parses one per execution)
    os.makedirs(FUZZ_SEEDS, exist_ok=True)
    for name, make in [("bpe", lambda: gpt2_tokenizer(300)), ("sp", lambda: llama2_metaspace_tokenizer(300)),
                       ("wordpiece", lambda: bert_tokenizer(True, 200))]:
        tok = make()[0]
        with open(os.path.join(FUZZ_SEEDS, f"parse-{name}"), "wb") as f:
            f.write(b"\x00" + tok.to_str().encode())
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures: {total} bytes")


if __name__ == "__main__":
    main()
