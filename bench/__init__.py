"""fused_qkv.bench: the ``fused-qkv`` command line (``demo``, ``bench``, ``build-native``)."""
