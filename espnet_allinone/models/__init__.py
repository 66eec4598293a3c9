"""The ESPnet model classes this package registers: ``model: allinone`` (training
every subsystem in one step, :mod:`.allinone`) and ``model: packed`` (an extracted
model whose output layers are bit-packed, :mod:`.packed`)."""
