#!/usr/bin/env python3
"""Writes include/distill/data/hf/unicode_tables.hpp: the Unicode data the Hugging Face tokenizers need
beyond what PCRE2 answers (general categories come from PCRE2): canonical decompositions with their
composition flag (NFD, NFC, strip_accents), canonical combining classes (canonical ordering) and the
simple lowercase mapping (BertNormalizer, Lowercase). Generated from Python's unicodedata, the same
tables the reference tokenizers are checked against.
    python3 tools/make_unicode_tables.py > include/distill/data/hf/unicode_tables.hpp
"""
import sys
import unicodedata

MAX = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


decomp = []
for cp in range(MAX):
    if is_surrogate(cp) or 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables are decomposed algorithmically
        continue
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        continue
    parts = [int(x, 16) for x in d.split()]
    assert 1 <= len(parts) <= 2, (hex(cp), d)
    first = parts[0]
    second = parts[1] if len(parts) == 2 else 0
    # a primary composite: NFC gives it back from its decomposition
    composes = len(parts) == 2 and unicodedata.normalize("NFC", unicodedata.normalize("NFD", chr(cp))) == chr(cp)
    decomp.append((cp, first, second, 1 if composes else 0))

ccc = []
for cp in range(MAX):
    if is_surrogate(cp):
        continue
    c = unicodedata.combining(chr(cp))
    if c == 0:
        continue
    if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == c:
        ccc[-1][1] = cp
    else:
        ccc.append([cp, cp, c])

# simple lowercase as runs: first, last, delta, stride (stride 1 or 2)
lower = []
for cp in range(MAX):
    if is_surrogate(cp):
        continue
    lo = chr(cp).lower()
    if len(lo) != 1 or ord(lo) == cp:
        assert len(lo) == 1 or cp == 0x130, hex(cp)
        continue
    delta = ord(lo) - cp
    if lower:
        f, l, dl, st = lower[-1]
        if dl == delta and ((st == 0 and cp - l in (1, 2)) or (st and cp - l == st)):
            lower[-1] = [f, cp, dl, cp - l]
            continue
    lower.append([cp, cp, delta, 0])
for run in lower:
    if run[3] == 0:
        run[3] = 1


def rows(items, fmt, per_line):
    out = []
    for i in range(0, len(items), per_line):
        out.append("    " + " ".join(fmt(x) for x in items[i:i + per_line]))
    return "\n".join(out)


w = sys.stdout.write
w("#pragma once\n")
w("/// @file unicode_tables.hpp\n")
w("/// Unicode data for the Hugging Face tokenizers (data/hf/unicode.hpp), generated from Python's\n")
w(f"/// unicodedata {unicodedata.unidata_version} by tools/make_unicode_tables.py; do not edit by hand.\n\n")
w("#include <cstdint>\n\nnamespace distill::data::hf::tables {\n\n")
w("/// A canonical decomposition: `cp` → `first` `second` (`second` 0 for a singleton); `composes` when\n")
w("/// NFC recombines the pair (a primary composite). Sorted by `cp`; Hangul syllables are not listed.\n")
w("struct Decomposition {\n    char32_t cp, first, second;\n    bool composes;\n};\n")
w(f"inline constexpr Decomposition decompositions[{len(decomp)}] = {{\n")
w(rows(decomp, lambda d: f"{{0x{d[0]:X}, 0x{d[1]:X}, 0x{d[2]:X}, {d[3]}}},", 5))
w("\n};\n\n")
w("/// Canonical combining classes: the code points `first..last` have class `ccc` (others 0). Sorted.\n")
w("struct CombiningClass {\n    char32_t first, last;\n    std::uint8_t ccc;\n};\n")
w(f"inline constexpr CombiningClass combining_classes[{len(ccc)}] = {{\n")
w(rows(ccc, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}, {r[2]}}},", 6))
w("\n};\n\n")
w("/// Simple lowercase: every `stride`-th code point of `first..last` maps to itself + `delta`. Sorted.\n")
w("/// U+0130 (İ), whose lowercase is two code points, is handled by the caller.\n")
w("struct LowercaseRun {\n    char32_t first, last;\n    std::int32_t delta;\n    std::uint8_t stride;\n};\n")
w(f"inline constexpr LowercaseRun lowercase_runs[{len(lower)}] = {{\n")
w(rows(lower, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}, {r[2]}, {r[3]}}},", 5))
w("\n};\n\n}  // namespace distill::data::hf::tables\n")
