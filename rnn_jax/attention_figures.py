r"""Pictures of soft attention over an image grid: the captioner's ``α_t`` per emitted word and the VQA
model's glimpses per question, as the lecture's slides show them.

A location's weight is spread over the pixels of its grid cell (:meth:`ImageEncoder.region`'s cells:
``s × s`` pixels, ``s`` the product of the CNN's strides) and shown as a white glow: with
``a = α / max α`` per pixel, a panel is ``image · (0.3 + 0.7 a) + 0.45 a`` (clipped to 1), so the
most attended cell is the brightest and an unattended one is dimmed, on dark and light backgrounds
alike. Only image inputs have pixels to draw on.
"""

from __future__ import annotations

import numpy as np

from rnn_jax import rundir
from rnn_jax.errors import InputError

__all__ = ["caption_examples", "caption_overlays", "upsample", "vqa_examples", "vqa_maps"]


def upsample(alpha_L, encoder) -> np.ndarray:
    """``[H, W]``: the weights ``α [L]`` of the grid cells spread over the image's pixels."""
    if encoder.inputs != "images":
        raise InputError("attention overlays need image inputs (precomputed features have no pixels)")
    (h, w), (H, W) = encoder.grid, encoder.shape[:2]
    grid = np.asarray(alpha_L, np.float32).reshape(h, w)
    rows = np.minimum(np.arange(H) // encoder.cell_size, h - 1)
    cols = np.minimum(np.arange(W) // encoder.cell_size, w - 1)
    return grid[rows][:, cols]


def _shade(image, alpha_L, encoder) -> np.ndarray:
    a = upsample(alpha_L, encoder)
    a = a / max(float(a.max()), 1e-9)
    return np.clip(np.asarray(image, np.float32) * (0.3 + 0.7 * a[..., None]) + 0.45 * a[..., None], 0.0, 1.0)


def caption_overlays(examples: list[dict], encoder, path: str, *, columns: int | None = None) -> None:
    """One row per example: the image, then one panel per emitted word with that step's attention.

    ``examples``: ``{"image": [H, W, 3], "words": [...] (EOS included if emitted), "alpha": [T, L],
    "title": str}``. Saved atomically as a PNG at ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        raise InputError("no examples to draw")
    width = columns or max(len(e["words"]) for e in examples) + 1
    H, W = encoder.shape[:2]
    panel = 1.6
    fig, axes = plt.subplots(len(examples), width, figsize=(panel * width * max(W / H, 1.0) ** 0.5,
                                                            panel * len(examples) + 0.3), squeeze=False)
    for r, e in enumerate(examples):
        axes[r, 0].imshow(e["image"], interpolation="nearest")
        axes[r, 0].set_title(e.get("title", "image"), fontsize=7, loc="left")
        for k in range(1, width):
            ax = axes[r, k]
            if k - 1 < len(e["words"]):
                ax.imshow(_shade(e["image"], e["alpha"][k - 1], encoder), interpolation="nearest")
                ax.set_title(e["words"][k - 1], fontsize=9)
            ax.axis("off")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    fig.tight_layout()
    rundir.save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def vqa_maps(examples: list[dict], encoder, path: str) -> None:
    """One row per question: the image (the question and the answers as its title), then each
    glimpse's attention. ``examples``: ``{"image", "question", "answer", "truth", "alpha": [K, L]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        raise InputError("no examples to draw")
    k = max(len(e["alpha"]) for e in examples)
    cols = 1 + k
    rows = len(examples)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols + 1.6, 2.4 * rows), squeeze=False)
    for r, e in enumerate(examples):
        axes[r, 0].imshow(e["image"], interpolation="nearest")
        mark = "" if e["answer"] == e["truth"] else f" (truth: {e['truth']})"
        axes[r, 0].set_title(f"{e['question']}\n→ {e['answer']}{mark}", fontsize=7, loc="left")
        axes[r, 0].axis("off")
        for g in range(k):
            ax = axes[r, 1 + g]
            if g < len(e["alpha"]):
                ax.imshow(_shade(e["image"], e["alpha"][g], encoder), interpolation="nearest")
                ax.set_title(f"glimpse {g + 1} (max α {float(np.max(e['alpha'][g])):.2f})", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    rundir.save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def caption_examples(problem, params, split: str, num: int) -> list[dict]:
    """The first ``num`` images of ``split`` with their greedy captions and attention."""
    from rnn_jax.models.captioner import CaptionEvaluator

    model, task = problem.model, problem.task_obj
    if model.attention != "soft":
        raise InputError("this run's captioner has no attention (model.attention = 'none'): nothing to overlay")
    evaluator = CaptionEvaluator(model, task, beam_size=1, beam_alpha=0.0, batch_size=num, test_batch_size=num)
    evaluator._batches[split] = evaluator.batches(split)[:1]
    tokens, attention = evaluator.decode(params, split, greedy=True)
    references = task.references(split)
    out = []
    for i in range(min(num, len(tokens))):
        words = task.vocab.decode(tokens[i])
        ended = int(task.vocab.eos_id) in tokens[i].tolist()
        out.append({"image": task.load_image(split, i), "words": words + (["<eos>"] if ended else []),
                    "alpha": attention[i], "title": "reference: " + references[i][0]})
    return out


def vqa_examples(problem, params, split: str, num: int) -> list[dict]:
    """The first ``num`` questions of ``split`` with the model's answers and each glimpse's attention."""
    import jax
    import jax.numpy as jnp

    model, task = problem.model, problem.task_obj
    if model.attention != "soft":
        raise InputError("this run's VQA model has no attention (model.attention = 'none'): nothing to draw")
    batch = jax.tree.map(jnp.asarray, task.eval_batches(split, num)[0])
    logits, alpha = jax.jit(lambda p, b: model.forward(p, b))(params, batch)
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    alpha = np.asarray(alpha)
    return [{"image": np.asarray(batch["images"][i]), "question": task.question_text(split, i),
             "answer": task.answers[predicted[i]], "truth": task.answer_text(split, i), "alpha": alpha[i]}
            for i in range(min(num, task.num_examples(split)))]
