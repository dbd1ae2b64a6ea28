"""A tiny text dataset prepared on disk with tensorflow-datasets, for the ``tfds:`` source tests.

Needs ``tensorflow-datasets`` and ``array_record`` but not TensorFlow, and nothing is downloaded:
the examples come from ``DOCS`` below and are written as array_record files under ``data_dir``.
"""

DOCS = {
    "train": ["the cat sat", "on the mat", "café au lait"],
    "validation": ["a dog ran", "naïve bird"],
    "test": ["the end", "fin é"],
}
# What tfds_corpus should read back: each split's documents joined by a newline.
TEXTS = {split: "\n".join(docs) for split, docs in DOCS.items()}


def build(tfds, data_dir: str) -> None:
    """Prepare ``tiny_text`` (splits train/validation/test, feature ``text``) under ``data_dir``.

    ``tfds`` is the imported ``tensorflow_datasets`` module. The builder is not registered, so
    building twice in one process is fine, and readers find the dataset from its files alone.
    """

    class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        # No source file to look for download checksums next to (as for a class defined in a
        # notebook). Also avoids tfds 4.9.10 importing the undeclared `importlib_resources`
        # (tensorflow/datasets#11212) when the builder lives in a package module.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                disable_shuffling=True,  # keep the documents in the order of DOCS
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(docs) for split, docs in DOCS.items()}

        def _generate_examples(self, docs):
            for i, doc in enumerate(docs):
                yield i, {"text": doc}

    builder = TinyText(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
