r"""Caption metrics from decoded captions: the COCO scores and, for synthetic scenes, attribute recall.

Both functions take one hypothesis string per image (e.g. ``task.decode(ids)``: words joined by
spaces) and tokenize every string with :func:`rnn_jax.data.captions.tokenize` (lowercase,
punctuation dropped), so references and hypotheses are compared word by word, whatever their
spacing or case.

:func:`coco_scores` runs the coco-caption scorers of ``pycocoevalcap`` (the ``caption`` extra:
``pip install 'rnn_jax[caption]'``) on the words re-joined by single spaces; Java is not needed,
since the PTB tokenizer (Java) is replaced by ``tokenize`` and METEOR/SPICE (Java) are not computed.

* ``bleu_1`` … ``bleu_4``: corpus BLEU (clipped n-gram counts and hypothesis lengths summed over the
  images, brevity penalty from each image's reference length closest to its hypothesis', ties to the
  shorter), in [0, 1].
* ``cider_d``: ``pycocoevalcap.cider.Cider``, the coco-caption CIDEr, which is CIDEr-D (hypothesis
  n-gram counts clipped by the reference's, Gaussian length penalty σ = 6) on the papers' scale, i.e.
  ×10: a perfect caption scores up to about 10 rather than 1. Its n-gram IDF comes from the
  references of the images scored together, so the value depends on the whole set (one image alone
  always scores 0); score a split at once.
* ``rouge_l``: ROUGE-L F-measure (β = 1.2) against the best-matching reference, averaged over images,
  in [0, 1].

An empty hypothesis (e.g. EOS first) needs no placeholder: it scores 0 against non-empty references
(it adds nothing to BLEU's matches or lengths). A reference that tokenizes to nothing is kept as
``""``; ROUGE-L then scores an empty hypothesis 1 against it.

:func:`attribute_recall` checks, for generated scenes whose objects have ``"color"`` and ``"digit"``
words, how many objects a caption mentions (module function docstring for the exact counts).
"""

from __future__ import annotations

import collections
import contextlib
import io
from typing import Sequence

from rnn_jax.data.captions import tokenize
from rnn_jax.errors import InputError

COCO_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l")
ATTRIBUTE_KEYS = ("attribute_recall", "color_recall", "digit_recall")

__all__ = ["ATTRIBUTE_KEYS", "COCO_KEYS", "attribute_recall", "coco_scores"]


def _check_lengths(what: str, items, hypotheses) -> None:
    if isinstance(hypotheses, str):
        raise InputError("hypotheses must be a list of strings (one per image), not one string")
    if len(items) != len(hypotheses):
        raise InputError(f"{len(items)} {what} but {len(hypotheses)} hypotheses: give one hypothesis per image")


def _join(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"captions must be strings; got {type(text).__name__} {text!r}")
    return " ".join(tokenize(text))


def require_pycocoevalcap() -> None:
    """``ImportError`` with the install line unless pycocoevalcap can be imported."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise ImportError("captioning metrics need pycocoevalcap: pip install 'rnn_jax[caption]'") from e


def coco_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """``bleu_1`` … ``bleu_4``, ``cider_d`` (×10 scale) and ``rouge_l`` of ``hypotheses[i]`` against
    ``references[i]`` (at least one string each), over all the images (module docstring)."""
    _check_lengths("images of references", references, hypotheses)
    if not hypotheses:
        raise InputError("coco_scores: no images to score")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as e:
        raise ImportError("coco_scores needs pycocoevalcap: pip install 'rnn_jax[caption]'") from e
    gts, res = {}, {}
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        if isinstance(refs, str) or not len(refs):
            raise InputError(f"references[{i}] must be a non-empty list of strings; got {refs!r}")
        gts[i] = [_join(r) for r in refs]
        res[i] = [_join(hyp)]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        except TypeError:                          # versions without the verbose argument
            bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(bleu[n]) for n in range(4)}
    out["cider_d"] = float(cider)
    out["rouge_l"] = float(rouge)
    return out


def _count(words: list[str], phrase: tuple) -> int:
    """Occurrences of the word sequence ``phrase`` in ``words`` (overlapping)."""
    n = len(phrase)
    if n == 0:
        return 0
    return sum(tuple(words[k:k + n]) == phrase for k in range(len(words) - n + 1))


def attribute_recall(objects: Sequence[Sequence[dict]], hypotheses: Sequence[str]) -> dict[str, float]:
    """How many of each image's objects its hypothesis names, as fractions of all objects.

    ``objects[i]`` is image ``i``'s list of objects, each a dict with at least ``"color"`` and
    ``"digit"`` (words; other keys are ignored). With ``h`` the hypothesis' words, per image::

        color_recall     += Σ_c min(#objects of colour c, #occurrences of c in h)
        digit_recall     += Σ_d min(#objects of digit d,  #occurrences of d in h)
        attribute_recall += Σ_(c,d) min(#objects with colour c and digit d, #occurrences of "c d" in h)

    each divided by the number of objects over all images (0 when there is none). Attribute values
    are tokenized like the hypotheses; a value of several words counts as that word sequence."""
    _check_lengths("images of objects", objects, hypotheses)
    sums = {"attribute_recall": 0, "color_recall": 0, "digit_recall": 0}
    total = 0
    for i, (objs, hyp) in enumerate(zip(objects, hypotheses)):
        words = tokenize(_join(hyp))
        colors, digits, pairs = collections.Counter(), collections.Counter(), collections.Counter()
        for j, obj in enumerate(objs):
            if not isinstance(obj, dict) or "color" not in obj or "digit" not in obj:
                raise InputError(f"objects[{i}][{j}] must be a dict with 'color' and 'digit'; got {obj!r}")
            color, digit = tuple(tokenize(str(obj["color"]))), tuple(tokenize(str(obj["digit"])))
            colors[color] += 1
            digits[digit] += 1
            pairs[color + digit if color and digit else ()] += 1
            total += 1
        sums["color_recall"] += sum(min(n, _count(words, c)) for c, n in colors.items())
        sums["digit_recall"] += sum(min(n, _count(words, d)) for d, n in digits.items())
        sums["attribute_recall"] += sum(min(n, _count(words, p)) for p, n in pairs.items())
    return {k: (v / total if total else 0.0) for k, v in sums.items()}
