"""Learned spot finding, inference only (needs the [ml] extra: pip install 'redml_reduce[ml]').

One small module per job (the training is redml_study.ml):
  features      background removal (radial, or per block without a geometry)
  models        input transforms, local patch models (logistic, CNN), the global U-Net
  infer         shipped weights -> probability maps, spots, the encoder's ROI, frame outputs

The package imports nothing heavy itself: `import redml_reduce` works without torch, and
asking for roi="ml" without torch raises an ImportError saying what to install.
"""
