"""The simulated endpoint's offline policy: query guidelines, relevance judgements and image captions.

Pure, deterministic and cheap (it runs for every request). Lexical and attribute matching, no model: a
product's text is only ever matched term by term, so instructions written into product data have no effect
beyond the words they contain. Every judgement's reasoning starts with `SIMULATED_MARK`.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

SIMULATED_MARK = "[simulated judge]"
SIMULATED_GUIDELINE_MARK = "[simulated guideline]"
UNKNOWN_PRODUCT = "unknown product"

DEFAULT_SCALE: tuple[dict[str, Any], ...] = (
    {"grade": 0, "name": "irrelevant", "description": "The product does not match the query."},
    {"grade": 1, "name": "acceptable substitute", "description": "Partly matches; a shopper might accept it."},
    {"grade": 2, "name": "highly relevant", "description": "Matches every requirement of the query."},
)

COLOURS = (
    "black", "white", "grey", "silver", "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown",
    "gold", "beige", "navy", "turquoise", "violet", "lilac", "cyan", "transparent",
)
_COLOUR_ALIASES = {"gray": "grey", "graphite": "grey", "titanium": "grey", "violet": "purple", "lilac": "purple",
                   "navy": "blue", "cyan": "blue", "turquoise": "blue", "beige": "brown", "gold": "yellow"}
_UNITS = ("gb", "tb", "mb", "mah", "w", "v", "m", "cm", "mm", "ft", "inch", "in", "hz", "mhz", "ghz", "l", "mp")
_UNIT_SET = frozenset(_UNITS)
_CAPACITY = re.compile(r"^\d+(?:\.\d+)?(?:" + "|".join(_UNITS) + r")$")
_KNOWN_BRANDS = frozenset(
    "acer apple asus brother canon dell duracell garmin google hp huawei jvc kensington kingston krups lenovo lg "
    "logitech manhattan microsoft nespresso nikon nintendo panasonic philips samsung sandberg sony targus toshiba "
    "varta verbatim xbox".split()
)
# Near-synonyms that shoppers and catalogues use for the same product type: token -> (alternatives, strength).
_SYNONYMS: dict[str, tuple[tuple[str, ...], float]] = {
    "laptop": (("notebook", "chromebook", "netbook"), 0.95),
    "notebook": (("laptop",), 0.95),
    "battery": (("batterie",), 0.95),
    "tv": (("television",), 0.95),
    "headphone": (("headset", "earphone", "earbud", "headphones"), 0.6),
    "headset": (("headphone",), 0.8),
    "earbud": (("earphone", "headphone", "in-ear"), 0.7),
    "earphone": (("earbud", "headphone"), 0.7),
    "speaker": (("soundbar", "loudspeaker"), 0.7),
    "smartphone": (("phone", "mobile"), 0.8),
    "phone": (("smartphone", "mobile"), 0.8),
    "computer": (("pc", "desktop", "workstation", "notebook", "laptop"), 0.8),
    "desktop": (("pc", "workstation"), 0.85),
    "pc": (("desktop", "computer", "workstation"), 0.85),
    "smartwatch": (("watch",), 0.8),
    "tablet": (("ipad",), 0.8),
    "cord": (("cable",), 0.85),
    "ps4": (("playstation",), 0.9),
    "playstation": (("ps4",), 0.9),
    "stick": (("drive", "flash"), 0.8),
    "aa": (("r6", "lr6", "hr6", "mignon"), 0.9),
    "aaa": (("r03", "lr03", "hr03", "micro"), 0.9),
}
# Words that make a product an accessory *for* the product type rather than the product itself.
_ACCESSORIES = frozenset(
    "case bag sleeve cover lock stand mount holder charger adapter protector filter skin strap dock docking "
    "backpack cooler cooling pad screen replacement toner cartridge kit cable mat sticker lens lamp accessory part "
    "ribbon drum guard bulb".split()
)
_STOPWORDS = frozenset("a an and the for of with to in on by or".split())
_IMPORTANCE_WEIGHT = {"must": 3.0, "high": 2.0, "medium": 1.0, "low": 0.5}
# How much an occurrence in each product field counts, per kind of requirement.
_FIELD_STRENGTH = {
    "type": {"title": 1.0, "product_type": 1.0, "description": 0.6, "attributes": 0.25, "brand": 0.0},
    "brand": {"brand": 1.0, "title": 0.9, "description": 0.4, "attributes": 0.3, "product_type": 0.0},
    "term": {"title": 1.0, "brand": 1.0, "product_type": 0.8, "attributes": 0.6, "description": 0.6},
}
_TOKEN = re.compile(r"\d+(?:\.\d+)?[a-z]*|[a-z0-9]+")


def _stem(token: str) -> str:
    if len(token) <= 3 or token[-1] != "s" or token.endswith("ss") or token[0].isdigit():
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    return token[:-1]


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric tokens, light stemming (trailing s), numbers joined to their unit ("32 GB" -> "32gb")."""
    raw = _TOKEN.findall(text.lower())
    out: list[str] = []
    for token in raw:
        if out and token in _UNIT_SET and out[-1].replace(".", "", 1).isdigit():
            out[-1] += token
        else:
            out.append(_stem(token))
    return out


def _canonical_colour(token: str) -> str | None:
    if token in _COLOUR_ALIASES:
        return _COLOUR_ALIASES[token]
    return token if token in COLOURS else None


# ---------------------------------------------------------------------------------------------- guideline


def _scale(scale: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    grades = sorted(scale or DEFAULT_SCALE, key=lambda g: int(g["grade"]))
    if not grades:
        raise ValueError("the relevance scale has no grades")
    return grades


def make_guideline(query: str, scale: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A `QueryGuideline` dict for `query`: one requirement per query term group, one definition per grade."""
    tokens = [t for t in tokenize(query) if t not in _STOPWORDS]
    requirements: list[dict[str, str]] = []
    plain: list[str] = []
    for token in tokens:
        colour = _canonical_colour(token)
        if colour is not None:
            requirements.append({"aspect": "colour", "value": colour, "importance": "high"})
        elif _CAPACITY.match(token):
            requirements.append({"aspect": "size/capacity", "value": token, "importance": "high"})
        elif token in _KNOWN_BRANDS:
            requirements.append({"aspect": "brand", "value": token, "importance": "high"})
        else:
            plain.append(token)
    if plain:
        # A trailing model number belongs to the word before it: "iphone 7", "windows 10", "rtx 2060".
        cut = len(plain) - 2 if len(plain) > 1 and plain[-1][0].isdigit() else len(plain) - 1
        head = " ".join(plain[cut:])
        requirements.insert(0, {"aspect": "product type", "value": head, "importance": "must"})
        for token in plain[:cut]:
            importance = "medium" if token.isalpha() and len(token) > 2 else "high"
            requirements.append({"aspect": "keyword", "value": token, "importance": importance})
    elif requirements:
        requirements[0]["importance"] = "must"
    head_value = requirements[0]["value"] if requirements else query.strip()
    grades = _scale(scale)
    top = len(grades) - 1
    definitions = []
    for index, grade in enumerate(grades):
        if index == top:
            text = f"The product is a {head_value} and meets every requirement of '{query}'."
        elif index == 0:
            text = f"The product is not a {head_value}, or misses a must requirement of '{query}'."
        else:
            share = index / top
            text = (f"The product is or closely relates to a {head_value} but misses some requirements "
                    f"(about {share:.0%} of the way to a full match), e.g. an accessory or another variant.")
        definitions.append({"grade": int(grade["grade"]), "name": str(grade["name"]), "definition": text})
    return {
        "query_intent": f"{SIMULATED_GUIDELINE_MARK} The shopper is looking for: {query.strip()}.",
        "requirements": requirements,
        "grade_definitions": definitions,
    }


# ---------------------------------------------------------------------------------------------- judgement


class _ProductText:
    """Token sets of one product's fields, built once per judgement."""

    def __init__(self, product: Mapping[str, Any]) -> None:
        self.title = tokenize(str(product.get("title") or ""))
        self.title_set = frozenset(self.title)
        self.title_phrase = f" {' '.join(self.title)} "
        self.brand_set = frozenset(tokenize(str(product.get("brand") or "")))
        attributes = product.get("attributes")
        if isinstance(attributes, str):
            try:
                attributes = json.loads(attributes) if attributes.strip() else {}
            except json.JSONDecodeError:
                attributes = {"text": attributes}
        attribute_words: list[str] = []
        self.colours: set[str] = set()
        if isinstance(attributes, Mapping):
            for key, value in attributes.items():
                if value is True:
                    attribute_words.append(str(key))
                elif isinstance(value, str):
                    attribute_words.append(value)
                    if "colour" in str(key) or "color" in str(key):
                        self.colours.update(c for c in map(_canonical_colour, tokenize(value)) if c)
        self.attribute_set = frozenset(tokenize(" ".join(attribute_words)))
        product_type = attributes.get("product_type") if isinstance(attributes, Mapping) else None
        self.product_type_set = frozenset(tokenize(str(product_type or "")))
        other = [str(product.get(k) or "") for k in ("category", "description")]
        other += [v for k, v in product.items() if isinstance(v, str) and k not in _KNOWN_FIELDS]
        self.description_set = frozenset(tokenize(" ".join(other)))
        if not self.colours:
            self.colours.update(c for c in map(_canonical_colour, self.title) if c)
        self.fields = {"title": self.title_set, "brand": self.brand_set, "product_type": self.product_type_set,
                       "attributes": self.attribute_set, "description": self.description_set}


_KIND_NAMES = {"type": "product type", "brand": "brand", "colour": "colour", "term": "keyword"}
_KNOWN_FIELDS = frozenset({"title", "brand", "category", "description", "attributes", "product_id", "image_url",
                           "price_cents", "price", "currency", "locale"})


def _token_match(token: str, kind: str, product: _ProductText) -> tuple[float, str]:
    """Strength in [0, 1] of one query token's best occurrence in the product, and the field it was found in."""
    best, where = 0.0, ""
    alternatives = [(token, 1.0)]
    if token in _SYNONYMS:
        words, strength = _SYNONYMS[token]
        alternatives += [(w, strength) for w in words]
    for word, strength in alternatives:
        for field, tokens in product.fields.items():
            score = _FIELD_STRENGTH[kind][field] * strength
            if score > best and word in tokens:
                best, where = score, field if word == token else f"{field}, as '{word}'"
    return best, where


def _is_accessory(head_tokens: Sequence[str], query_tokens: frozenset[str], product: _ProductText) -> str | None:
    """The accessory word when the title sells something *for* the product type (a laptop case for 'laptop')."""
    title = product.title[:16]
    heads = set(head_tokens) | _synonym_words(tuple(head_tokens))
    for i, token in enumerate(title):
        if token not in heads:
            continue
        for j in range(max(0, i - 4), min(len(title), i + 4)):
            word = title[j]
            if word in _ACCESSORIES and word not in query_tokens and (j > i or "for" in title[j:i]):
                return word
    return None


@lru_cache(maxsize=4096)
def _synonym_words(head_tokens: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w for t in head_tokens for w in _SYNONYMS.get(t, ((), 0.0))[0])


@lru_cache(maxsize=4096)
def _parse_requirements(requirements_json: str) -> tuple[tuple[str, tuple[str, ...], float, str, str], ...]:
    """(aspect kind, tokens, weight, value, importance) per requirement; cached per guideline."""
    parsed = []
    for requirement in json.loads(requirements_json):
        aspect = str(requirement.get("aspect", "")).lower()
        value = str(requirement.get("value", ""))
        importance = str(requirement.get("importance", "medium")).lower()
        tokens = tuple(t for t in tokenize(value) if t not in _STOPWORDS)
        if not tokens:
            continue
        if "colour" in aspect or "color" in aspect:
            kind = "colour"
        elif "type" in aspect or "category" in aspect:
            kind = "type"
        elif "brand" in aspect:
            kind = "brand"
        else:
            kind = "term"
        parsed.append((kind, tokens, _IMPORTANCE_WEIGHT.get(importance, 1.0), value, importance))
    return tuple(parsed)


def _requirements(guideline: Mapping[str, Any] | None, query: str) -> tuple[tuple[str, tuple[str, ...], float, str, str], ...]:
    requirements = (guideline or {}).get("requirements") or make_guideline(query)["requirements"]
    return _parse_requirements(json.dumps(requirements, sort_keys=True))


def _colour_match(wanted: Iterable[str], product: _ProductText, image_colours: Sequence[str]) -> tuple[float, str]:
    """Text colours decide unless an image is known: an image that does not show the asked colour misses it."""
    wanted_set = {c for c in map(_canonical_colour, wanted) if c}
    image_set = {c for c in map(_canonical_colour, image_colours) if c}
    if image_set and not wanted_set & image_set:
        return 0.0, "image shows " + "/".join(image_colours[:2])
    if product.colours:
        if wanted_set & product.colours:
            return 1.0, "product colour"
        return 0.0, "product is " + "/".join(sorted(product.colours))
    if image_set:
        return 0.9, "image"
    return 0.4, "colour not stated"


def judge(
    query: str,
    guideline: Mapping[str, Any] | None,
    scale: Sequence[Mapping[str, Any]] | None,
    product: Mapping[str, Any],
    image_description: Mapping[str, Any] | None = None,
    image_colours: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A `RelevanceJudgement` dict: requirement matches weighted by importance, mapped onto the scale's grades."""
    grades = _scale(scale)
    text = _ProductText(product)
    colours_seen = list(image_colours or [])
    if image_description:
        colours_seen += [str(c).lower() for c in image_description.get("colours") or []]
        caption_type = str(image_description.get("product_type") or "")
        if caption_type and caption_type != UNKNOWN_PRODUCT:
            text.description_set = text.description_set | frozenset(tokenize(caption_type))
            text.fields["description"] = text.description_set
    query_tokens = frozenset(tokenize(query))
    met: list[str] = []
    missed: list[str] = []
    total = achieved = 0.0
    must_missed = other_missed = False
    for kind, tokens, weight, value, importance in _requirements(guideline, query):
        if kind == "colour":
            score, where = _colour_match(tokens, text, colours_seen)
        else:
            if len(tokens) > 1 and f" {' '.join(tokens)} " in text.title_phrase:
                score, where = 1.0, "title"
            else:
                scores = [_token_match(t, kind, text) for t in tokens]
                score = sum(s for s, _ in scores) / len(scores) * (0.8 if len(tokens) > 1 else 1.0)
                where = ", ".join(sorted({w for s, w in scores if s > 0})) or "not found"
            if kind == "type" and score > 0:
                accessory = _is_accessory(tokens, query_tokens, text)
                if accessory:
                    score *= 0.45
                    where += f"; but it is a {accessory} for it"
        total += weight
        achieved += weight * score
        label = f"{_KIND_NAMES[kind]} '{value}' ({where})"
        if score >= 0.5:
            met.append(label)
        else:
            missed.append(label)
            must_missed = must_missed or importance == "must"
            other_missed = other_missed or importance in ("high", "medium")
    score = achieved / total if total else 0.0
    if must_missed:
        score = min(score, 0.3)
    index = _grade_index(score, len(grades))
    if other_missed and index == len(grades) - 1 and index > 0:
        index -= 1  # the top grade means every requirement is met
    grade = grades[index]
    reasoning = (
        f"{SIMULATED_MARK} Met: {'; '.join(met) or 'none'}. Missed: {'; '.join(missed) or 'none'}. "
        f"Match score {score:.2f} of 1 gives grade {grade['grade']} ({grade['name']})."
    )
    return {"reasoning": reasoning, "grade": int(grade["grade"]), "label": str(grade["name"])}


def _grade_index(score: float, n_grades: int) -> int:
    """Equal-width bands over [0, 1] with the top band starting at 0.7 (a full match needs most requirements)."""
    if n_grades == 1:
        return 0
    top = n_grades - 1
    if score >= 0.7:
        return top
    return min(top - 1, int(score / 0.7 * top))


# ---------------------------------------------------------------------------------------------- images

# Hue bands (degrees) for saturated pixels, refined by value: dark reds/oranges read brown, dark magentas purple.
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"),
              (340, "pink"), (360, "red"))


def _pixel_colour_names(rgb: np.ndarray) -> np.ndarray:
    """Colour name per pixel from an (N, 3) uint8 array: grey levels by saturation and value, then hue bands."""
    values = rgb.astype(np.float32) / 255.0
    high = values.max(axis=1)
    chroma = high - values.min(axis=1)
    saturation = chroma / np.maximum(high, 1e-6)
    r, g, b = values[:, 0], values[:, 1], values[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    bounds = np.array([h for h, _ in _HUE_NAMES])
    hue_names = np.array([n for _, n in _HUE_NAMES], dtype=object)
    names = hue_names[np.minimum(np.searchsorted(bounds, hue, side="right"), len(bounds) - 1)]
    reddish = (hue < 45) | (hue >= 340)
    names[reddish & (high < 0.68)] = "brown"
    names[(hue >= 255) & (hue < 340) & (high < 0.7)] = "purple"
    names[((hue < 15) | (hue >= 330)) & (saturation < 0.5) & (high >= 0.8)] = "pink"
    grey = saturation < 0.2
    names[grey & (high >= 0.86)] = "white"
    names[grey & (high < 0.86)] = "grey"
    names[high < 0.18] = "black"
    return names


def describe_image(image_bytes: bytes) -> dict[str, Any]:
    """An `ImageCaption` dict from the pixels: colours by share of the product's pixels, dominant first."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        width, height = image.size
        image.draft("RGB", (64, 64))
        if image.mode in ("RGBA", "LA", "P", "PA"):
            rgba = image.convert("RGBA")
            small = Image.new("RGB", rgba.size, "white")
            small.paste(rgba, mask=rgba.getchannel("A"))
            small = small.resize((48, 48))
        else:
            small = image.convert("RGB").resize((48, 48))
    names = _pixel_colour_names(np.asarray(small).reshape(-1, 3))
    labels, counts = np.unique(names.astype(str), return_counts=True)
    shares = dict(zip(labels.tolist(), (counts / counts.sum()).tolist()))
    # Product photos sit on white: ignore the background unless the image is (almost) all white.
    if shares.get("white", 0.0) < 0.9 and len(shares) > 1:
        shares.pop("white", None)
        rest = sum(shares.values())
        shares = {k: v / rest for k, v in shares.items()}
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    colours = [ranked[0][0]] + [name for name, share in ranked[1:] if share >= 0.15]
    pattern = "solid colour" if ranked[0][1] >= 0.8 else "multicoloured"
    summary = ", ".join(f"{name} {share:.0%}" for name, share in ranked[:4])
    return {
        "product_type": UNKNOWN_PRODUCT,
        "colours": colours,
        "pattern": pattern,
        "material": "unknown",
        "visible_text": "",
        "details": f"[simulated caption] From pixel statistics of a {width}x{height} image: {summary}.",
    }


def estimate_tokens(characters: int) -> int:
    """The simulator's token count for a text of `characters` characters (about four per token)."""
    return math.ceil(characters / 4)
