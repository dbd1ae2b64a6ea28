r"""Image captioning (``model.kind = "caption"``): a CNN reads the image, any registered cell writes the
caption, conditioned on the image vector (``attention=none``) or attending to its regions
(``attention=soft``, Show, Attend and Tell); rnn_jax.models.captioner.

    python -m experiments.train --config=experiments/configs/caption.py --workdir=runs/scenes_soft
    python -m experiments.train --config=experiments/configs/caption.py:attention=none --workdir=runs/scenes_none
    python -m experiments.caption_figures --run=runs/scenes_soft     # attention per emitted word (PNG)
    python -m experiments.train --workdir=runs/flickr8k \
        --config=experiments/configs/caption.py:task=karpathy,json=/data/dataset_flickr8k.json,image_dir=/data/images

Tasks: ``digit_scenes`` (1..``objects`` coloured handwritten digits on a ``height`` x ``width``
canvas, captions such as "a red three left of a blue seven"; test digits are handwriting never
trained on) and ``karpathy`` (Flickr8k/30k/COCO in the Karpathy-split JSON layout, with an image
folder ``image_dir`` or precomputed CNN features ``features``: a .npz or a folder of .npy files).
Metrics, from beam-search captions (``beam``): BLEU-1..4, CIDEr-D and ROUGE-L (pycocoevalcap), plus
attribute recall and (soft attention) the attention mass on the named digit for digit scenes. The
best checkpoint is the one with the best validation BLEU-4.

Arg string: ``task=digit_scenes,attention=soft,condition=both,penalty=0,gate=True,beam=3,objects=3,
colors=6,height=16,width=40,json=,image_dir=,features=,image_size=64,max_len=20,min_count=1,max_images=0,
cell=lstm,hidden=128,embed=32,layers=1,optimizer=adam,dropout=0,select_by=,steps=4000,batch=64,lr=0.002,max_norm=5,eval_every=500,data_seed=0,seed=0,runlocal``.
``penalty`` is λ of the doubly stochastic attention penalty (Xu et al. used 1; on digit scenes, with
far more locations than words, it spreads the attention: see the README).
"""

from experiments.configs import common
from rnn_jax.configs import check_choice

TASKS = ("digit_scenes", "karpathy")
DEFAULTS = dict(common.EXAMPLE_DEFAULTS, task="digit_scenes", attention="soft", condition="both", penalty=0.0,
                gate=True, beam=3, objects=3, colors=6, height=16, width=40, json="", image_dir="", features="",
                image_size=64, max_len=20, min_count=1, max_images=0, steps=4000, lr=2e-3, eval_every=500)
RUNLOCAL = dict(common.EXAMPLE_RUNLOCAL, objects=2, width=24, beam=2)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("task", a.task, TASKS)
    check_choice("attention", a.attention, ("soft", "none"))
    check_choice("condition", a.condition, ("both", "input", "init"))
    common.check_number(a, "penalty")
    common.check_int(a, "beam")
    if a.task == "digit_scenes":
        for name in ("objects", "colors", "height", "width"):
            common.check_int(a, name)
        options = {"max_objects": a.objects, "num_colors": a.colors, "height": a.height, "width": a.width}
        if a.runlocal:
            options.update(valid_size=16, test_size=16)
    else:
        common.check_int(a, "image_size")
        common.check_int(a, "max_len", minimum=2)
        common.check_int(a, "min_count")
        common.check_int(a, "max_images", minimum=0)
        options = {"json_path": a.json, "image_dir": a.image_dir, "features": a.features,
                   "image_size": a.image_size, "max_len": a.max_len, "min_count": a.min_count,
                   "max_images": a.max_images}
    model = {"attention": a.attention, "condition": a.condition, "penalty": float(a.penalty), "gate": bool(a.gate),
             "beam_size": a.beam, "beam_alpha": 0.0, "cnn_channels": (32, 64), "cnn_strides": (2, 2), "coords": True}
    c = common.example_config(a, a.task, options, "caption", model)
    c.train.eval_batch_size = 100 if not a.runlocal else 16
    return c


def sweep(add):
    for attention in ("soft", "none"):
        for cell in ("lstm", "gru"):
            add(cell=cell, attention=attention)
