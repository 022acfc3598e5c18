"""Speech (keyword spotting): the leaf pieces of the speech modality.

- ``audio``: WAV clips read to float32 mono of a fixed length (soundfile), resampled when their
  rate differs; a folder of class sub-folders or a ``path,label`` manifest listed without decoding;
- ``frontend``: ``LogMel``, a log-mel front end that exports to ONNX inside the model (a strided
  conv with fixed DFT kernels), and ``log_mel_numpy``, the same features in plain numpy;
- ``models``: ``ds_cnn_small`` (the student, Hello Edge's DS-CNN-S) and ``kws_cnn_large`` (the
  teacher), both taking raw waveforms;
- ``augment``: time shift, gain and background noise on batches of waveforms, seeded;
- ``noise``: white, pink, brown noise and mains hum, generated;
- ``example``: an offline keyword data set spoken by espeak-ng.

soundfile comes with the ``speech`` extra (``pip install 'kdexport[speech]'``) and is imported
inside functions only. See docs/speech.md.
"""

from kdexport.modalities.speech.modality import SPEECH  # noqa: E402 (the docstring first)

__all__ = ["SPEECH"]
