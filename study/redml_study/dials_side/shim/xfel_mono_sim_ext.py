# Empty stand-in for cctbx's compiled module `xfel_mono_sim_ext`.
#
# Debian's cctbx (the one Debian's DIALS 3.12 runs on) does not ship this extension, but
# DIALS's stills indexing imports it at module load without calling any of its functions
# on the code path used here. Without it every still fails to index ("No suitable indexing
# solution found"). redml_study.yardstick puts this directory on PYTHONPATH for the DIALS
# subprocesses only; nothing else sees it.
