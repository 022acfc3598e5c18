"""Text (transformer) classifiers: distilling, exporting and shipping them (issue 14).

- ``models``: ``hf:`` model specs (a local ``save_pretrained`` folder, or a model already in the
  Hugging Face cache; nothing is downloaded), the student built from the teacher's config and
  initialised from every k-th teacher layer;
- ``data``: CSV/TSV/JSONL text files, tokenised once and cached, padded per batch;
- ``tiny``: a tiny BERT teacher and a WordPiece tokenizer trained on the data, so a text recipe
  needs no download;
- ``synthetic``: a small synthetic sentiment data set, written deterministically from a seed;
- ``features``: the logits, hidden states and attentions the text losses read;
- ``export``: a classifier written as ONNX and checked against PyTorch.

transformers and tokenizers come with the ``text`` extra (``pip install 'kdexport[text]'``) and
are imported inside functions only, so ``import kdexport`` stays light. See docs/text.md and
docs/text-export.md.
"""

from kdexport.modalities.text.modality import TEXT  # noqa: E402 (the docstring first)

__all__ = ["TEXT"]
