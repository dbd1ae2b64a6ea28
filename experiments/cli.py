"""What the absl mains here share: a console that shows what a user needs.

``cli.run(main)`` is ``absl.app.run(main)``, except that the libraries' INFO chatter is hidden
unless ``--verbosity`` is given: JAX's probe for TPUs ("Unable to initialize backend 'tpu'") and
orbax's record of every checkpoint manager and save. Our own lines (the run's configuration,
progress with ETA, evaluations, where results went) are printed, not logged, so they always show.
``--verbosity=0`` brings the INFO lines back, ``--verbosity=1`` adds DEBUG.
"""

from __future__ import annotations

from absl import app, flags, logging


def run(main) -> None:
    """``app.run(main)`` with library logging at WARNING unless ``--verbosity`` was given."""

    def quiet(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return main(argv)

    app.run(quiet)
