"""redml_study: the studies behind redml_reduce, apart from the product.

The simulator of still shots (sim, synthetic) and of JUNGFRAU raw frames (detector), the
DIALS yardstick (yardstick, dials_side), the yield and fidelity studies (yield_study),
spot-finding scores (metrics, tune), the demo (demo) and the training of the shipped
models (ml). It imports redml_reduce; redml_reduce never imports it.

    redml-study yield FRAME... --space-group P41212 --unit-cell 58,58,151,90,90,90
    python -m redml_study.demo
"""
