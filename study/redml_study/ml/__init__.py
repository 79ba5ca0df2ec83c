"""Training of the shipped spot-finding models (redml_reduce.ml is their inference).

  artefacts     non-lattice features planted on simulated frames (labelled negative)
  data          simulated training / test frames with per-pixel labels (seeded)
  dials_labels  labels from DIALS on real frames (strong spots, indexed spots)
  losses        weighted cross-entropy, focal and Dice losses
  train         the recipe that reproduces the shipped weights (python -m redml_study.ml.train)
"""
