"""Learned spot finding (needs the [ml] extra: pip install 'redml_reduce[ml]').

One small module per job:
  artefacts     non-lattice features planted on simulated frames (labelled negative)
  data          simulated training / test frames with per-pixel labels (seeded)
  dials_labels  labels from DIALS on real frames (strong spots, indexed spots)
  features      background removal (radial, or per block without a geometry)
  models        input transforms, local patch models (logistic, CNN), the global U-Net
  losses        weighted cross-entropy, focal and Dice losses
  train         the recipe that reproduces the shipped weights (python -m redml_reduce.ml.train)
  infer         shipped weights -> probability maps, spots, the encoder's ROI, frame outputs

The package imports nothing heavy itself: `import redml_reduce` works without torch, and
asking for roi="ml" without torch raises an ImportError saying what to install.
"""
