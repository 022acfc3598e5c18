"""Edge bundles: the device runner (``runner.py``, shipped as ``run.py``), the archive format,
and fleets of devices' results."""
